"""`pip install` of our abi3 wheel is proven, not assumed: build it, install it into a fresh venv
(nothing from this checkout on the path), run the CLI and one engine call."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _wheel(out: Path) -> Path:
    """The wheel `make wheel` built (dist/), else build one now (a full release build)."""
    built = sorted((ROOT / "dist").glob("mipo-*.whl"), key=lambda p: p.stat().st_mtime)
    if built and built[-1].stat().st_mtime >= _newest_source_mtime():
        return built[-1]
    maturin = shutil.which("maturin", path=str(Path(sys.executable).parent)) or "maturin"
    subprocess.run(
        [maturin, "build", "--release", "-q", "-o", str(out)],
        cwd=ROOT,
        check=True,
        env={**os.environ, "PYO3_PYTHON": sys.executable},
    )
    wheels = sorted(out.glob("mipo-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _newest_source_mtime() -> float:
    files = [ROOT / "Cargo.toml", ROOT / "pyproject.toml", *(ROOT / "rust").rglob("*.rs")]
    return max(f.stat().st_mtime for f in files)


@pytest.mark.timeout(2400)
def test_wheel_installs_and_runs(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path / "dist")
    assert "abi3" in wheel.name, f"expected an abi3 wheel, got {wheel.name}"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel)], check=True)
    clean_env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}

    help_out = subprocess.run(
        [str(venv / "bin" / "mipo"), "--help"],
        capture_output=True,
        text=True,
        check=True,
        env=clean_env,
        cwd=tmp_path,
    ).stdout
    assert "build-pairs" in help_out
    # The recipes are package data: the installed wheel lists them (and loads each).
    recipes_out = subprocess.run(
        [str(venv / "bin" / "mipo"), "recipes"],
        capture_output=True,
        text=True,
        check=True,
        env=clean_env,
        cwd=tmp_path,
    ).stdout
    assert recipes_out.startswith("demo\n") and "paper-personalization" in recipes_out

    code = (
        "import mipo, polars as pl\n"
        "from mipo import engine\n"
        "assert 'site-packages' in mipo.__file__, mipo.__file__\n"
        "d = engine.dedup(pl.Series(['Hello  world', 'hello world', 'other text']))\n"
        "print(d['keep'].to_list())\n"
    )
    out = subprocess.run(
        [str(py), "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=clean_env,
        cwd=tmp_path,
    ).stdout
    assert out.strip() == "[True, False, True]"
