"""The README's examples run as written (pointed at the test servers instead of the default ports)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any, List

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> List[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_redis_example_runs(redis_server: Any) -> None:
    [block] = [b for b in python_blocks() if "GeventPool(" in b]
    assert 'host="127.0.0.1", port=6379' in block
    code = block.replace('host="127.0.0.1", port=6379', f'host="{redis_server.host}", port={redis_server.port}')
    [count] = re.findall(r"for i in range\((\d+)\)", block)
    assert int(count) <= 1000, "the first example must work on a slow machine: keep it small"
    assert "timeout=5" in block
    lines = run(code).split()
    assert lines[0] == str(sum(range(int(count))))
    assert f"# {lines[0]}" in block  # the printed sum is the one the example shows
    assert float(lines[1]) >= 0.0


def test_tarantool_example_runs(tarantool_server: Any) -> None:
    [block] = [b for b in python_blocks() if "TarantoolPool.from_url" in b]
    assert "@127.0.0.1:3301" in block
    code = block.replace("@127.0.0.1:3301", f"@{tarantool_server.host}:{tarantool_server.port}")
    assert run(code).strip() == "([[7, 'value 7']], [8]) 10"


def test_tarantool_mux_example_runs(tarantool_server: Any) -> None:
    [block] = [b for b in python_blocks() if "TarantoolMux(" in b]
    assert '"127.0.0.1", 3301' in block
    code = block.replace('"127.0.0.1", 3301', f'"{tarantool_server.host}", {tarantool_server.port}')
    assert run(code).strip() == "[[1, 'one']]"


def test_pool_example_runs(redis_server: Any) -> None:
    [block] = [b for b in python_blocks() if "Pool(connect" in b]
    assert '("127.0.0.1", 6379)' in block and "max_connections=4" in block
    code = block.replace('("127.0.0.1", 6379)', f'("{redis_server.host}", {redis_server.port})')
    out = run(code)
    assert out.strip() == "100 4 4" and f"# {out.strip()}" in block
