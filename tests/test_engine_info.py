"""`mipo engine-info` reports what was compiled in: crate versions from Cargo.lock (build.rs),
the package version from Cargo.toml."""

from __future__ import annotations

import tomllib
from pathlib import Path

from mipo import engine

ROOT = Path(__file__).resolve().parents[1]


def locked_versions() -> dict[str, str]:
    lock = tomllib.loads((ROOT / "Cargo.lock").read_text())
    return {package["name"]: package["version"] for package in lock["package"]}


def test_engine_info_reports_the_locked_crate_versions() -> None:
    info = engine.engine_info()
    locked = locked_versions()
    assert info["tokenizers_crate"] == locked["tokenizers"]
    assert info["minijinja_crate"] == locked["minijinja"]
    # Exact versions, not Cargo.toml's ranges ("0.22", "3").
    assert info["tokenizers_crate"].count(".") == 2 and info["minijinja_crate"].count(".") == 2


def test_engine_version_is_the_crates() -> None:
    crate = tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]["version"]
    assert engine.engine_info()["engine_version"] == crate
