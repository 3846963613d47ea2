# The two commands of the README's quick start: `make test` and `make stress`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Debian/Ubuntu packages the tests and the harness start (binary:package).
SERVERS := redis-server:redis-server tarantool:tarantool openssl:openssl

.PHONY: test test-loaded test-redis-versions stress faults lint package servers venv clean

test: venv servers
	$(BIN)/python -m gevent.monkey --module pytest $(PYTEST_ARGS)

stress: venv servers
	$(BIN)/python -m stress $(STRESS_ARGS)

# The fault suite alone, longer and with more greenlets, ending with its summary table.
faults: venv servers
	GREENPOOL_FAULTS_LONG=1 $(BIN)/python -m gevent.monkey --module pytest tests/test_faults.py tests/test_faults_connect.py tests/test_restarts.py $(PYTEST_ARGS)

# The whole suite beside two CPU-burning processes (BURNERS=n for more), as on a busy machine: no test may
# depend on the machine's speed. The burners stop with the run, however it ends.
test-loaded: venv servers
	MAKE="$(MAKE)" PYTEST_ARGS="$(PYTEST_ARGS)" sh tests/loaded.sh

# The Redis adapters' tests under every older redis-py minor greenpool supports (`make test` runs the newest).
test-redis-versions: servers
	PYTHON="$(PYTHON)" PYTEST_ARGS="$(PYTEST_ARGS)" sh tests/redis_versions.sh

lint: venv
	$(BIN)/ruff check greenpool tests stress
	$(BIN)/ruff format --check greenpool tests stress
	$(BIN)/mypy

# Build the wheel and the sdist, install each into a clean venv, import greenpool, run the harness's --help.
package: venv
	timeout 300 .ci/check-package $(BIN)/python

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

# Install the servers from the OS packages when they are missing.
servers:
	@missing=""; for pair in $(SERVERS); do \
	    command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair##*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	        echo "Installing$$missing from the OS packages"; \
	        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq$$missing; \
	    else \
	        echo "Missing:$$missing. Install with: sudo apt-get install -y$$missing" >&2; exit 1; \
	    fi; \
	fi

clean:
	rm -rf $(VENV) .venv-redis *.egg-info .pytest_cache .mypy_cache .ruff_cache build dist
