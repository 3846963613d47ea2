"""The README's metrics examples run as written (pointed at the test server and a free port), and the page
the Prometheus example serves holds the pool's figures. Depends on ``tests/test_readme.py``."""

from __future__ import annotations

from typing import Any

from stress.servers import free_port
from tests.test_readme import python_blocks, run


def test_grafana_in_five_lines_serves_the_pool(redis_server: Any) -> None:
    [block] = [b for b in python_blocks() if "PoolCollector(pool)" in b]
    assert "redis://127.0.0.1:6379/0" in block and "start_http_server(9108)" in block
    port = free_port()
    code = block.replace("127.0.0.1:6379", f"{redis_server.host}:{redis_server.port}")
    code = code.replace("start_http_server(9108)", f"start_http_server({port}, addr='127.0.0.1')")
    code += (
        "\nimport redis, urllib.request\n"
        "redis.Redis(connection_pool=pool).ping()\n"
        f"print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics', timeout=10).read().decode())\n"
    )
    page = run(code)
    assert 'greenpool_connections_max{pool="cache"} 20.0' in page
    assert 'greenpool_connections{pool="cache",state="idle"} 1.0' in page
    assert 'greenpool_connection_use_seconds_count{pool="cache"} 1.0' in page


def test_events_example_runs() -> None:
    [block] = [b for b in python_blocks() if "events.listen(pool" in b]
    code = "from greenpool import Pool\npool = Pool(object)\n" + block + "pool.release(pool.acquire())\n"
    assert run(code).startswith("waited ")
