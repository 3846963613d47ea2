#!/bin/sh
# `make test-redis-versions`: the Redis adapters' tests (GeventPool, RedisMuxPool, the vocabulary and drop-in
# checks) under every redis-py minor greenpool supports below the newest, which `make test` covers with the whole
# suite. One venv ($VENV_COMPAT), redis-py swapped in it for each version, one short run each; stops at the first
# version that fails and names it. REDIS_VERSIONS (space-separated pins) and PYTEST_ARGS may be overridden.
set -eu

venv=${VENV_COMPAT:-.venv-redis}
python=${PYTHON:-python3}
versions=${REDIS_VERSIONS:-"5.3.1 6.0.0 6.1.1 6.2.0 6.3.0 6.4.0 7.0.1 7.1.1 7.2.2 7.3.1 7.4.1 8.0.1 8.1.0"}
tests="tests/test_redis.py tests/test_redis_mux.py tests/test_vocabulary.py"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
fi
"$venv/bin/python" -m pip install -q -e '.[test]'

for version in $versions; do
    "$venv/bin/python" -m pip install -q "redis==$version"
    echo "redis-py $version:"
    # shellcheck disable=SC2086 # one word per file and argument
    if ! "$venv/bin/python" -m gevent.monkey --module pytest -q -p no:cacheprovider $tests ${PYTEST_ARGS:-}; then
        echo "test-redis-versions: the Redis adapters' tests failed under redis-py $version" >&2
        exit 1
    fi
done
