"""``python -m stress`` (a checkout), ``python -m greenpool.stress`` and ``greenpool-stress`` (installed):
monkey-patch the process, then run the harness's command line (:mod:`.cli`).

The patch comes first, before anything that opens sockets (redis-py, tarantool-python, the servers'
launchers) is imported. Depends on gevent and the harness's ``cli`` module.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402

from .cli import main  # noqa: E402


def run() -> None:
    """The ``greenpool-stress`` console script: run the harness with ``sys.argv`` and exit with its status."""
    sys.exit(main())


if __name__ == "__main__":
    run()
