"""The CLI shell: instant help, version, engine-info, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest
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


# --- one vocabulary (issue 12) ----------------------------------------------------------------

WRITING_COMMANDS = ("build-pairs", "run", "train", "eval", "synth")


class _Stop(Exception):
    """Raised by a stand-in for a stage, carrying the config the command built."""


def _capture(monkeypatch: pytest.MonkeyPatch, module: str, name: str) -> None:
    def stand_in(*args: object, **kwargs: object) -> None:
        raise _Stop(*args)

    monkeypatch.setattr(f"{module}.{name}", stand_in)


@pytest.mark.parametrize("command", [*WRITING_COMMANDS, "merge", "accelerate-config"])
def test_every_help_renders(command: str) -> None:
    # Each shown default is looked up in a config class when the help is drawn: a renamed
    # field fails here, not in front of a user.
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0, result.output
    if command in WRITING_COMMANDS:
        assert "-o, --output" in result.output
        assert "--out " not in result.output and "--out," not in result.output


def test_help_defaults_come_from_the_config_classes() -> None:
    from mipo.evaluate.config import eval_generation
    from mipo.generate import GenerationConfig
    from mipo.train import TrainConfig

    def default(cls: type, name: str) -> object:
        return cls.__dataclass_fields__[name].default

    def shown(command: str, flag: str) -> str:
        cmd = cli.commands[command]
        option = next(p for p in cmd.params if flag in p.opts)
        record = option.get_help_record(click.Context(cmd))
        assert record is not None
        return record[1].rsplit("[default: ", 1)[1].removesuffix("]")

    generation = default(GenerationConfig, "max_new_tokens")
    evaluation = eval_generation().max_new_tokens
    assert shown("build-pairs", "--max-new-tokens") == str(generation)
    assert shown("eval", "--max-new-tokens") == str(evaluation)
    assert shown("run", "--max-new-tokens").startswith(str(generation))
    assert str(evaluation) in shown("run", "--max-new-tokens")
    assert shown("build-pairs", "--batch-size") == str(default(GenerationConfig, "batch_size"))
    assert shown("run", "--generation-batch-size") == str(default(GenerationConfig, "batch_size"))
    assert shown("run", "--batch-size") == str(default(TrainConfig, "batch_size"))
    assert shown("train", "--batch-size") == str(default(TrainConfig, "batch_size"))
    assert shown("eval", "--batch-size") == str(eval_generation().batch_size)
    assert shown("run", "--eval-batch-size") == str(eval_generation().batch_size)


def test_no_options_means_the_config_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from mipo.evaluate import EvalConfig
    from mipo.pairs.build import BuildPairsConfig
    from mipo.run import RunConfig
    from mipo.train import TrainConfig

    runner = CliRunner()
    _capture(monkeypatch, "mipo.pairs.build", "build_pairs")
    result = runner.invoke(cli, ["build-pairs", "in.jsonl", "-o", "out"])
    assert isinstance(result.exception, _Stop), result.output
    assert result.exception.args[0] == BuildPairsConfig(input="in.jsonl", out_dir="out")

    _capture(monkeypatch, "mipo.evaluate", "run_eval")
    result = runner.invoke(cli, ["eval", "d.jsonl", "--model", "m", "-o", str(tmp_path)])
    assert isinstance(result.exception, _Stop), result.output
    assert result.exception.args[0] == EvalConfig(model="m", data=["d.jsonl"])

    _capture(monkeypatch, "mipo.run", "run_pipeline")
    result = runner.invoke(cli, ["run", "c.jsonl", "-o", "out"])
    assert isinstance(result.exception, _Stop), result.output
    assert result.exception.args[0] == RunConfig(corpus="c.jsonl", out_dir="out")

    _capture(monkeypatch, "mipo.train", "train")
    result = runner.invoke(cli, ["train", "pairs", "-o", str(tmp_path)])
    assert isinstance(result.exception, _Stop), result.output
    assert result.exception.args[2] == TrainConfig()


@pytest.mark.parametrize("command", ["build-pairs", "run"])
def test_out_still_works_with_a_warning(monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    module, name = {
        "build-pairs": ("mipo.pairs.build", "build_pairs"),
        "run": ("mipo.run", "run_pipeline"),
    }[command]
    _capture(monkeypatch, module, name)
    result = CliRunner().invoke(cli, [command, "c.jsonl", "--out", "old"])
    assert isinstance(result.exception, _Stop), result.output
    assert str(result.exception.args[0].out_dir) == "old"
    assert "--out is deprecated; use -o/--output" in result.stderr

    result = CliRunner().invoke(cli, [command, "c.jsonl", "--out", "old", "-o", "new"])
    assert result.exit_code == 2 and "pass -o/--output once" in result.stderr
    result = CliRunner().invoke(cli, [command, "c.jsonl"])
    assert result.exit_code == 2 and "missing -o/--output: pass it" in result.stderr


def test_accelerate_config_command() -> None:
    from mipo.train import ACCELERATE_CONFIGS

    runner = CliRunner()
    result = runner.invoke(cli, ["accelerate-config", "--help"])
    assert result.exit_code == 0
    assert ", ".join(ACCELERATE_CONFIGS) in " ".join(result.output.split())
    for name, file in ACCELERATE_CONFIGS.items():
        result = runner.invoke(cli, ["accelerate-config", name])
        assert result.exit_code == 0, result.output
        path = Path(result.stdout.strip())
        assert path.name == file and path.is_file()

    result = runner.invoke(cli, ["accelerate-config", "nope"])
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "'nope'" in lines[0]
    assert all(name in lines[0] for name in ACCELERATE_CONFIGS)

    # The old spelling, for one release: no dummy arguments needed, a warning on stderr.
    result = runner.invoke(cli, ["train", "--print-accelerate-config", "zero3"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith(ACCELERATE_CONFIGS["zero3"])
    assert "deprecated" in result.stderr and "mipo accelerate-config" in result.stderr
    assert "--print-accelerate-config" not in runner.invoke(cli, ["train", "--help"]).output
