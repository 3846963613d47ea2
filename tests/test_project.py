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


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(ROOT / "setup.cfg")
    return cfg


def test_metadata_names_the_licence_the_authors_and_the_project() -> None:
    cfg = _setup_cfg()
    meta = cfg["metadata"]
    assert meta["license"] == "MIT"
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    assert meta["author"].strip() and meta["url"].startswith("https://")
    assert "Source" in meta["project_urls"]
    classifiers = meta["classifiers"]
    assert "License :: OSI Approved :: MIT License" in classifiers
    assert "Development Status ::" in classifiers
    minimum = cfg["options"]["python_requires"].strip().lstrip(">=")
    assert f"Programming Language :: Python :: {minimum}" in classifiers


def test_harness_is_installed_as_greenpool_stress_from_the_top_level_directory() -> None:
    cfg = _setup_cfg()
    packages = cfg["options"]["packages"].split()
    assert packages == ["greenpool", "greenpool.stress"], "no top-level 'stress' package may be installed"
    mapping = dict(line.split("=") for line in cfg["options"]["package_dir"].split("\n") if line.strip())
    assert {k.strip(): v.strip() for k, v in mapping.items()}["greenpool.stress"] == "stress"
    assert "tarantool_init.lua" in cfg["options.package_data"]["greenpool.stress"]
    assert (ROOT / "stress" / "tarantool_init.lua").is_file()
    assert "greenpool-stress = greenpool.stress.__main__:run" in cfg["options.entry_points"]["console_scripts"]
    assert "build" in cfg["options.extras_require"]["test"]


def test_harness_imports_its_own_modules_relatively() -> None:
    """Installed as greenpool.stress, an absolute ``stress.`` import would fail: every one is relative."""
    absolute = []
    for path in sorted((ROOT / "stress").glob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.lstrip().startswith(("from stress", "import stress")) or '"stress.' in line:
                absolute.append(f"{path.name}:{number}: {line.strip()}")
    assert not absolute, absolute


def test_sdist_manifest_ships_the_harness_tests_and_licence() -> None:
    manifest = (ROOT / "MANIFEST.in").read_text().split("\n")
    assert "graft stress" in manifest and "graft tests" in manifest
    assert any(line.startswith("include LICENSE") for line in manifest)
    assert "make package" in (ROOT / ".ci" / "run").read_text()
