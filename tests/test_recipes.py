"""Recipes (python/mipo/recipes/*.yaml): each loads and validates as a RunConfig, `mipo recipes`
lists them, `--recipe demo` is `--demo` (what `make demo` runs), and each runs end to end,
scaled down, on the tiny model (issue 22, item 4)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml
from click.testing import CliRunner

from mipo.cli import cli
from mipo.configfile import from_mapping, merge_mappings, to_mapping
from mipo.errors import ConfigError
from mipo.run import RunConfig, demo_config
from mipo.run.recipes import load_recipe, recipe_names
from mipo.synth import SAMPLE_CORPUS_PATH, load_sample_corpus

ROOT = Path(__file__).resolve().parents[1]
PAPER = ("paper-multiple-choice", "paper-personalization")


def test_the_shipped_recipes() -> None:
    assert recipe_names() == ["demo", *PAPER]


@pytest.mark.parametrize("name", recipe_names())
def test_every_recipe_loads_and_validates(name: str) -> None:
    recipe = load_recipe(name)
    assert recipe.description
    config = from_mapping(
        RunConfig,
        merge_mappings({"corpus": "corpus.jsonl", "out_dir": "out"}, recipe.config),
        source=str(recipe.path),
    )
    # Every key of the recipe is a setting of the config (nothing ignored on the way).
    mapping = to_mapping(config)
    for key, value in recipe.config.items():
        if isinstance(value, dict):
            assert {k: mapping[key][k] for k in value} == value, key
        else:
            assert mapping[key] == value, key


@pytest.mark.parametrize("name", PAPER)
def test_paper_recipes_have_the_papers_training_and_decoding(name: str) -> None:
    """DESIGN.md's facts from the paper: full fine-tuning, lr 5e-7, beta 0.1, one epoch, batch 4,
    cosine to 10% with 3% warmup, Adam (0.9, 0.95); top-p 0.9, temperature 0.1 (1.0 for multiple
    choice), 512 new tokens."""
    config = from_mapping(RunConfig, {"corpus": "c", "out_dir": "o", **load_recipe(name).config})
    train = config.train
    assert (train.lora, train.learning_rate, train.beta, train.epochs, train.batch_size) == (
        False, 5e-7, 0.1, 1.0, 4
    )  # fmt: skip
    assert (train.lr_scheduler, train.min_lr_ratio, train.warmup_ratio) == (
        "cosine_with_min_lr", 0.1, 0.03
    )  # fmt: skip
    assert (train.adam_beta1, train.adam_beta2, train.loss_type) == (0.9, 0.95, "sigmoid")
    temperature = 1.0 if name == "paper-multiple-choice" else 0.1
    for generation in (config.generation, config.eval_generation):
        assert (generation.top_p, generation.temperature) == (0.9, temperature)
        assert generation.max_new_tokens == 512
    assert config.model and "/" in config.model  # a hub model
    assert config.negatives == ("random" if name == "paper-multiple-choice" else "context-drop")


def test_the_demo_recipe_is_the_demo() -> None:
    """--demo, --recipe demo and demo_config are one config, and `make demo` runs --demo."""
    printed = {}
    for flag in (["--demo"], ["--recipe", "demo"]):
        result = CliRunner().invoke(cli, ["run", *flag, "-o", "demo-out", "--print-config"])
        assert result.exit_code == 0, result.output
        printed[flag[0]] = yaml.safe_load(result.stdout)
    assert printed["--demo"] == printed["--recipe"] == to_mapping(demo_config("demo-out"))
    assert printed["--demo"]["corpus"] == str(SAMPLE_CORPUS_PATH)
    demo_target = (ROOT / "Makefile").read_text().split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    assert "mipo run --demo" in demo_target


def test_recipes_command_lists_every_recipe() -> None:
    result = CliRunner().invoke(cli, ["recipes"])
    assert result.exit_code == 0
    for name in recipe_names():
        assert f"{name}\n  {load_recipe(name).description}\n" in result.output


def test_unknown_recipes_are_one_line() -> None:
    with pytest.raises(ConfigError, match="unknown recipe 'nope'; shipped: demo"):
        load_recipe("nope")
    result = CliRunner().invoke(cli, ["run", "--recipe", "nope", "-o", "x"])
    assert result.exit_code == 2 and result.stderr.startswith("error: unknown recipe 'nope'")
    result = CliRunner().invoke(cli, ["run", "--demo", "--recipe", "paper-personalization"])
    assert result.exit_code == 2 and "--demo is --recipe demo" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", recipe_names())
def test_each_recipe_runs_scaled_down(name: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    """Each recipe end to end on the tiny model, its sizes scaled down by flags (which override
    the recipe): the recipe's negatives, training type and decoding are what run."""
    frame = load_sample_corpus()
    users = frame["user_id"].unique(maintain_order=True)[:6].to_list()
    corpus = tmp_path / "corpus.jsonl"
    frame.filter(pl.col("user_id").is_in(users)).write_ndjson(corpus)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, [
        "run", "--recipe", name, str(corpus), "-o", str(out), "--model", str(tiny_model_dir),
        "--backend", "hf", "--max-new-tokens", "8", "--keep-truncated", "--max-steps", "1",
        "--batch-size", "2", "-k", "1", "--n-bootstrap", "50", "--max-prompts", "12",
        "--eval-fraction", "0.25", "--no-progress",
    ])  # fmt: skip
    assert result.exit_code == 0, (result.output, result.stderr)
    record = json.loads((out / "run.json").read_text())
    recipe = load_recipe(name).config
    assert record["config"]["negatives"] == recipe["negatives"]
    assert record["config"]["train"]["lora"] == recipe["train"]["lora"]
    assert record["config"]["generation"]["temperature"] == recipe.get("generation", {}).get(
        "temperature", 0.1
    )
    assert (out / "report.md").is_file()
    if name == "demo":
        # The run's record repeats it: the same pairs, byte for byte, in another folder.
        again = tmp_path / "again"
        result = CliRunner().invoke(
            cli, ["run", "--config", str(out / "run.json"), "-o", str(again)]
        )
        assert result.exit_code == 0, (result.output, result.stderr)
        pairs = Path("round-1") / "pairs" / "pairs.parquet"
        assert (again / pairs).read_bytes() == (out / pairs).read_bytes()
