#!/bin/sh
# `make test-loaded`: the whole suite (`make test`) while busy-loop processes compete with it for the CPU, as on
# a loaded machine or a shared CI runner; a test that depends on the machine's speed fails here first.
#
# BURNERS (default 2) sets how many busy loops run; PYTEST_ARGS is passed on to `make test`. Exits with the
# suite's status. The burners stop with this script: on exit, on Ctrl-C, on SIGTERM or SIGHUP (the traps below),
# and even after a SIGKILL (each burner spins only while this script's process exists).
set -u

script=$$
burners=""

stop_burners() {
    if [ -n "$burners" ]; then
        # shellcheck disable=SC2086 # one word per pid
        kill $burners 2>/dev/null
        wait 2>/dev/null
        burners=""
    fi
}

trap stop_burners EXIT
trap 'stop_burners; trap - INT; kill -INT "$script"' INT
trap 'stop_burners; exit 143' TERM
trap 'stop_burners; exit 129' HUP

n=${BURNERS:-2}
case $n in
    '' | *[!0-9]*)
        echo "test-loaded: BURNERS must be a whole number, got '$n'" >&2
        exit 2
        ;;
esac
i=0
while [ "$i" -lt "$n" ]; do
    sh -c 'while kill -0 "$1" 2>/dev/null; do :; done' burner "$script" &
    burners="$burners $!"
    i=$((i + 1))
done
echo "test-loaded: $n CPU burners running beside the suite (pids$burners) on $(nproc 2>/dev/null || echo '?') cores"

started=$(date +%s)
${MAKE:-make} test PYTEST_ARGS="${PYTEST_ARGS:-}"
status=$?
stop_burners
echo "test-loaded: the suite exited with status $status after $(($(date +%s) - started)) s beside $n CPU burners"
exit "$status"
