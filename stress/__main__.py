"""``python -m stress``: monkey-patch the process, then run the harness's command line (:mod:`stress.cli`).

The patch comes first, before anything that opens sockets (redis-py, tarantool-python, the servers'
launchers) is imported. Depends on gevent and ``stress.cli``.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402

from stress.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
