"""Checks of the project's own files: the docker-compose services, packaging metadata."""

from __future__ import annotations

import configparser
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_compose_offers_redis_and_tarantool_with_an_existing_init_script() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "tarantool"} <= set(services)
    assert any(port.endswith(":6379") for port in services["redis"]["ports"])
    mounts = services["tarantool"]["volumes"]
    assert mounts, "the tarantool service must mount its init script"
    for mount in mounts:
        source, target = mount.split(":")[:2]
        assert (ROOT / source).resolve().is_file(), f"{source} is mounted but does not exist"
        assert target in services["tarantool"]["command"]


def test_package_ships_py_typed_and_extras() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert (ROOT / "greenpool" / "py.typed").exists()
    assert "py.typed" in cfg["options.package_data"]["greenpool"]
    extras = cfg["options.extras_require"]
    assert "redis" in extras["redis"] and "hiredis" in extras["redis"]
    assert "tarantool" in extras["tarantool"]
    assert cfg["options"]["install_requires"].strip().startswith("gevent")
