"""The CLI shell: instant help, version, engine-info, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

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


def _shown(command: str, flag: str) -> str:
    cmd = cli.commands[command]
    ctx = click.Context(cmd)
    option = next(p for p in cmd.get_params(ctx) if flag in p.opts)
    record = option.get_help_record(ctx)
    assert record is not None
    return record[1].rsplit("[default: ", 1)[1].removesuffix("]")


def test_help_defaults_come_from_the_config_classes() -> None:
    from mipo.evaluate.config import eval_generation
    from mipo.generate import GenerationConfig
    from mipo.train import TrainConfig

    def default(cls: type, name: str) -> object:
        return cls.__dataclass_fields__[name].default

    generation = default(GenerationConfig, "max_new_tokens")
    evaluation = eval_generation().max_new_tokens
    assert _shown("build-pairs", "--generation-max-new-tokens") == str(generation)
    assert _shown("run", "--generation-max-new-tokens") == str(generation)
    assert _shown("eval", "--eval-max-new-tokens") == str(evaluation)
    for command in ("build-pairs", "run"):
        assert _shown(command, "--generation-batch-size") == str(
            default(GenerationConfig, "batch_size")
        )
    for command in ("train", "run"):
        assert _shown(command, "--train-batch-size") == str(default(TrainConfig, "batch_size"))
    for command in ("eval", "run"):
        assert _shown(command, "--eval-batch-size") == str(eval_generation().batch_size)
    # A None default shows what the field's docstring says None stands for.
    assert _shown("train", "--learning-rate") == "5e-7 for full fine-tuning (paper), 5e-4 with LoRA"
    assert _shown("build-pairs", "--shard") == "0/1"


# --- options derived from the configs (issue 22 item 2) ---------------------------------------

STAGE_COMMANDS = ("build-pairs", "train", "eval", "run")


def _field_options(command: str) -> list[Any]:
    from mipo.cli.fields import FieldOption

    cmd = cli.commands[command]
    return [p for p in cmd.get_params(click.Context(cmd)) if isinstance(p, FieldOption)]


@pytest.mark.parametrize("command", STAGE_COMMANDS)
def test_each_help_fits_one_screen(command: str) -> None:
    cmd = cli.commands[command]
    options = [p for p in cmd.get_params(click.Context(cmd)) if isinstance(p, click.Option)]
    assert len(options) - 1 <= 25, [o.opts for o in options]  # -h/--help not counted
    result = CliRunner().invoke(cli, [command, "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) <= 60 and max(map(len, lines)) <= 100, result.output
    for common in ("--set KEY=VALUE", "--config FILE", "--print-config"):
        assert common in result.output
    assert "--batch-size" not in result.output.replace("-batch-size", "")


def test_a_field_has_one_name_and_one_help_in_every_command() -> None:
    from mipo.configfile import field_docs

    seen: dict[tuple[str, str, str], tuple[str, str | None]] = {}
    meaning: dict[str, set[tuple[str, str, str]]] = {}
    for command in STAGE_COMMANDS:
        for option in _field_options(command):
            key = option.meaning
            named = (option.opts[0], option.help)
            assert seen.setdefault(key, named) == named, (command, key, named, seen[key])
            meaning.setdefault(option.opts[0], set()).add(key)
            # The help is the field's own docstring, not text written for the command.
            doc = field_docs(_load(key[0]))[key[2]]
            first_word = option.help.removeprefix("Turn off: ").split()[0].strip(".,")
            assert first_word.lower() in doc.replace("``", "").lower(), (option.help, doc)
    # One name, one meaning: a name used for two fields is each command's own field of that
    # name (every command's --seed is its seed), never a nested stage's.
    for name, keys in meaning.items():
        if len(keys) > 1:
            assert all(prefix == "" for _, prefix, _ in keys), (name, keys)
            assert len({field for _, _, field in keys}) == 1, (name, keys)
    # The stage says which batch: the pairs' generation, the training, the evaluation.
    assert {"--generation-batch-size", "--train-batch-size", "--eval-batch-size"} <= set(meaning)


def _load(spec: str) -> Any:
    from mipo.cli.fields import load

    return load(spec)


@pytest.mark.parametrize("command", STAGE_COMMANDS)
def test_every_field_is_settable_with_set(command: str) -> None:
    # No field needs a flag: --set reaches each one, nested configs included, read from the
    # dataclasses (a field added to a config is settable in every command that holds it).
    import dataclasses
    import json

    from mipo.configfile import DERIVED, set_items

    root = _load(cli.commands[command].config)

    def leaves(cls: Any, instance: Any, prefix: str, blocked: tuple[str, ...]) -> Any:
        for f in dataclasses.fields(cls):
            if not f.init or f.name in blocked:
                continue
            value = getattr(instance, f.name) if instance is not None else None
            if dataclasses.is_dataclass(value):
                inner = getattr(cls, DERIVED, {}).get(f.name, ())
                yield from leaves(type(value), value, f"{prefix}{f.name}.", inner)
            else:
                yield f"{prefix}{f.name}", value

    sample = {
        "build-pairs": root("in", "out") if command == "build-pairs" else None,
        "run": root("c", "out") if command == "run" else None,
        "eval": root(model="m", data=["d"]) if command == "eval" else None,
        "train": root() if command == "train" else None,
    }[command]
    keys = list(leaves(root, sample, "", ()))
    assert len(keys) >= 20
    for key, value in keys:
        if value is None:
            continue
        plain = list(value) if isinstance(value, tuple) else value
        parsed = set_items(root, [f"{key}={json.dumps(plain, default=str)}"])
        for part in key.split("."):
            parsed = parsed[part]
        assert parsed == value or list(parsed) == plain or str(parsed) == str(value), key


@pytest.mark.parametrize(
    ("command", "args", "item", "path", "value"),
    [
        ("train", ["p", "-o", "o"], "lora_r=32", ("lora_r",), 32),
        ("run", ["c.jsonl", "-o", "o"], "train.lora_dropout=0.1", ("train", "lora_dropout"), 0.1),
        (
            "build-pairs",
            ["i.jsonl", "-o", "o"],
            "generation.top-p=0.5",
            ("generation", "top_p"),
            0.5,
        ),
        (
            "eval",
            ["d.jsonl", "--model", "m"],
            "generation.device=cpu",
            ("generation", "device"),
            "cpu",
        ),
        ("build-pairs", ["i.jsonl", "-o", "o"], "columns.user=uid", ("columns", "user"), "uid"),
    ],
)
def test_set_reaches_any_field(
    command: str, args: list[str], item: str, path: tuple[str, ...], value: object
) -> None:
    import yaml

    result = CliRunner().invoke(cli, [command, *args, "--set", item, "--print-config"])
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.stdout)
    for key in path:
        printed = printed[key]
    assert printed == value


def test_flags_win_over_set_and_set_over_the_file(tmp_path: Path) -> None:
    import yaml

    config = tmp_path / "c.yaml"
    config.write_text("beta: 0.2\nlora_r: 4\n")
    args = ["train", "p", "-o", "o", "--config", str(config), "--set", "beta=0.3"]
    result = CliRunner().invoke(
        cli, [*args, "--set", "lora_r=8", "--beta", "0.4", "--print-config"]
    )
    printed = yaml.safe_load(result.stdout)
    assert (printed["beta"], printed["lora_r"]) == (0.4, 8)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (
            ["train", "p", "-o", "o", "--set", "lora_rank=8"],
            "--set lora_rank=8: unknown key 'lora_rank'",
        ),
        (
            ["run", "c", "-o", "o", "--set", "train.betta=1"],
            "unknown key 'train.betta' (TrainConfig has",
        ),
        (
            ["run", "c", "-o", "o", "--set", "rounds=two"],
            "--set rounds=two: rounds must be an integer",
        ),
        (
            ["run", "c", "-o", "o", "--set", "generation.seed=3"],
            "'generation.seed' is set from 'seed'",
        ),
        (["eval", "d", "--model", "m", "--set", "limit"], "--set limit: pass KEY=VALUE"),
        (["build-pairs", "i", "-o", "o", "--set", "seed.x=1"], "'seed' is not a nested config"),
    ],
)
def test_a_bad_set_is_one_line_and_exit_2(args: list[str], fragment: str) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines


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
def test_no_shims_in_an_unreleased_version(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "c.jsonl", "--out", "old"])
    assert result.exit_code == 2 and "No such option '--out'" in result.output
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

    # The shim of the unreleased version is gone.
    result = runner.invoke(cli, ["train", "--print-accelerate-config", "zero3"])
    assert result.exit_code == 2 and "No such option" in result.output
