"""The CLI shell: instant help, version, engine-info, one-line errors."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

import mipo
from mipo.cli import cli


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert mipo.__version__ in result.output


def test_engine_info_shows_native_module() -> None:
    result = CliRunner().invoke(cli, ["engine-info"])
    assert result.exit_code == 0, result.output
    assert "engine_version: " in result.output
    assert "threads: " in result.output


def test_help_does_not_import_heavy_modules() -> None:
    # `mipo --help` must be instant: no torch / transformers / trl / vllm / polars at import.
    code = (
        "import sys; from mipo.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'trl', 'vllm', 'datasets', 'polars')"
        " if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "HEAVY=\n" in out or out.rstrip().endswith("HEAVY="), out


def test_help_lists_stage_commands() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert "engine-info" in result.output
