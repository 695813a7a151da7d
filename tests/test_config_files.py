"""Every command reads its config from a file (``--config``, YAML or JSON, in the configs' own
nested schema), lets flags override it, and writes the resolved config (``--print-config``) so
that it reads back to the same config; unknown keys and bad values are one line naming the key
and the file; docs/configuration.md is what tools/gen_config_docs.py writes (issue 22)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from mipo.cli import cli
from mipo.configfile import from_mapping, load_config_file, to_mapping
from mipo.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

# Each command with the arguments that make a complete config, and the entry point it calls.
COMMANDS: dict[str, tuple[list[str], str, str]] = {
    "build-pairs": (["in.jsonl", "-o", "out"], "mipo.pairs.build", "build_pairs"),
    "train": (["pairs.jsonl", "-o", "out"], "mipo.train", "train"),
    "eval": (["d.jsonl", "--model", "m", "-o", "out"], "mipo.evaluate", "run_eval"),
    "run": (["c.jsonl", "-o", "out"], "mipo.run", "run_pipeline"),
}
# A flag of each command that sets a nested field, and where it lands.
FLAGS: dict[str, tuple[list[str], tuple[str, ...], Any]] = {
    "build-pairs": (["--generation-temperature", "0.5"], ("generation", "temperature"), 0.5),
    "train": (["--beta", "0.25"], ("beta",), 0.25),
    "eval": (["--eval-batch-size", "3"], ("generation", "batch_size"), 3),
    "run": (["--eval-batch-size", "5"], ("eval_generation", "batch_size"), 5),
}


class _Stop(Exception):
    pass


def _capture(monkeypatch: pytest.MonkeyPatch, module: str, name: str) -> None:
    def stand_in(*args: object, **kwargs: object) -> None:
        raise _Stop(*args)

    monkeypatch.setattr(f"{module}.{name}", stand_in)


def _config_of(result: Any, command: str) -> Any:
    assert isinstance(result.exception, _Stop), (result.output, result.stderr)
    return result.exception.args[2 if command == "train" else 0]


def _printed(args: list[str]) -> dict[str, Any]:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, (result.output, result.stderr)
    loaded = yaml.safe_load(result.stdout)
    assert isinstance(loaded, dict)
    return loaded


def _dig(mapping: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        mapping = mapping[key]
    return mapping


@pytest.mark.parametrize("command", list(COMMANDS))
def test_print_config_reads_back_to_the_same_config(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args, module, name = COMMANDS[command]
    flags, path, value = FLAGS[command]
    printed = _printed([command, *args, *flags, "--print-config"])
    assert _dig(printed, path) == value
    written = tmp_path / "config.yaml"
    written.write_text(yaml.safe_dump(printed))
    # The file alone (no arguments) prints the same config again: a fixed point.
    assert _printed([command, "--config", str(written), "--print-config"]) == printed

    # And runs the command with the config the flags gave.
    _capture(monkeypatch, module, name)
    from_flags = _config_of(CliRunner().invoke(cli, [command, *args, *flags]), command)
    # What is not a config field stays an argument: train's PAIRS and OUTPUT, eval's OUTPUT.
    rest = {"train": args, "eval": args[-2:]}.get(command, [])
    from_file = CliRunner().invoke(cli, [command, "--config", str(written), *rest])
    assert _config_of(from_file, command) == from_flags
    assert to_mapping(from_flags) == printed


@pytest.mark.parametrize("command", list(COMMANDS))
def test_flags_override_the_file(command: str, tmp_path: Path) -> None:
    args, _, _ = COMMANDS[command]
    flags, path, value = FLAGS[command]
    printed = _printed([command, *args, "--print-config"])
    assert _dig(printed, path) != value
    written = tmp_path / "config.json"  # JSON works as well as YAML
    written.write_text(json.dumps(printed))
    overridden = _printed([command, "--config", str(written), *flags, "--print-config"])
    assert _dig(overridden, path) == value
    # Only that key changed.
    _dig(overridden, path[:-1])[path[-1]] = _dig(printed, path)
    assert overridden == printed


@pytest.mark.parametrize(
    ("command", "text", "expected"),
    [
        ("build-pairs", "generation:\n  max_tokens: 8\n", "unknown key 'generation.max_tokens'"),
        ("run", "train:\n  betta: 0.2\n", "unknown key 'train.betta'"),
        ("eval", "jduge: m\n", "unknown key 'jduge'"),
        ("train", "lora_rank: 8\n", "unknown key 'lora_rank'"),
        ("build-pairs", "generation:\n  top_p: high\n", "generation.top_p must be a number"),
        ("run", "rounds: two\n", "rounds must be an integer, got 'two'"),
        ("eval", "generation:\n  dtype: float16\n", "generation.dtype must be"),
        ("train", "lora: 1\n", "lora must be true or false, got 1"),
        ("run", "generation:\n  seed: 3\n", "'generation.seed' is set from 'seed'"),
        ("build-pairs", "generation: [1, 2]\n", "generation must be a mapping"),
        ("train", "- beta\n", "must hold a mapping"),
        ("eval", "k: [\n", "is not valid YAML"),
    ],
)
def test_bad_files_are_one_line_naming_the_key_and_the_file(
    command: str, text: str, expected: str, tmp_path: Path
) -> None:
    args, _, _ = COMMANDS[command]
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    result = CliRunner().invoke(cli, [command, *args, "--config", str(bad), "--print-config"])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    line = result.stderr
    assert line.count("\n") == 1 and line.startswith("error: "), line
    assert str(bad) in line and expected in line, line


def test_a_missing_file_is_one_line() -> None:
    result = CliRunner().invoke(cli, ["run", "--config", "nowhere.yaml", "--print-config"])
    assert result.exit_code == 2
    assert (
        result.stderr == "error: cannot read config file nowhere.yaml: No such file or directory\n"
    )


def test_output_records_hold_the_resolved_config(tmp_path: Path) -> None:
    """run.json (build-pairs and run), train_config.json and eval's metrics.json are read as the
    config they record."""
    from mipo.pairs.config import BuildPairsConfig
    from mipo.run import RunConfig, demo_config
    from mipo.train import TrainConfig

    build = BuildPairsConfig("in.jsonl", "out", seed=4, keep_truncated=True)
    record = tmp_path / "run.json"
    record.write_text(json.dumps({"mipo_version": "0", "stages": {}, "config": to_mapping(build)}))
    assert from_mapping(BuildPairsConfig, load_config_file(record)) == build

    run = demo_config("demo-out")
    record.write_text(json.dumps({"mipo_version": "0", "options": {}, "config": to_mapping(run)}))
    assert from_mapping(RunConfig, load_config_file(record)) == run

    train = TrainConfig(lora=True, beta=0.3)
    train_record = tmp_path / "train_config.json"
    from dataclasses import asdict

    train_record.write_text(json.dumps({"options": asdict(train), "pairs_sha256": "x"}))
    assert from_mapping(TrainConfig, load_config_file(train_record)) == train

    # A record from before configs were recorded: one line, not "unknown key mipo_version".
    record.write_text(json.dumps({"mipo_version": "0", "options": {}, "stages": {}}))
    with pytest.raises(ConfigError, match="output record without a resolved config"):
        load_config_file(record)


def test_demo_flag_and_config_agree() -> None:
    """`mipo run --demo` is demo_config: the demo's settings in RunConfig's schema."""
    from mipo.run import demo_config

    printed = _printed(["run", "--demo", "-o", "demo-out", "--print-config"])
    assert printed == to_mapping(demo_config("demo-out"))
    assert printed["generation"]["max_new_tokens"] == 64
    assert printed["train"]["lora"] is True


def test_nested_defaults_are_the_fields_own() -> None:
    """A partial nested mapping keeps the field's own defaults (the evaluation generates 256
    tokens, 16 rows at a time, not GenerationConfig's 512 and 32)."""
    from mipo.evaluate import EvalConfig

    config = from_mapping(EvalConfig, {"model": "m", "data": ["d"], "generation": {"top_p": 0.5}})
    assert (config.generation.max_new_tokens, config.generation.batch_size) == (256, 16)
    assert config.generation.top_p == 0.5


def test_seed_is_one_setting() -> None:
    from mipo.pairs.config import BuildPairsConfig

    config = from_mapping(BuildPairsConfig, {"input": "i", "out_dir": "o", "seed": 9})
    assert config.generation.seed == 9
    assert "seed" not in to_mapping(config)["generation"]
    with pytest.raises(ConfigError, match=r"'generation\.seed' is set from 'seed'"):
        from_mapping(BuildPairsConfig, {"input": "i", "out_dir": "o", "generation": {"seed": 1}})


def test_configuration_doc_is_current() -> None:
    """docs/configuration.md is written by tools/gen_config_docs.py from the dataclasses; rerun
    it after changing a config (`python tools/gen_config_docs.py`)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_config_docs.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
