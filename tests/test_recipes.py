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
PAPER = ("paper-math", "paper-multiple-choice", "paper-personalization")
NEGATIVES = {
    "paper-math": "sentence-drop",
    "paper-multiple-choice": "random",
    "paper-personalization": "context-drop",
}
# GSM8K-style word problems of several sentences (the paper-math recipe drops one of them).
MATH = [
    "Ann has 3.5 kg of rice. She cooks 0.5 kg a day. How many days does the rice last?",
    "Mr. Lee buys 4 pens at $2 each. He pays with a $10 note. How much change does he get?",
    "A train covers 60 km in 1.5 hours. What is its average speed in km per hour?",
    "Dr. Ng reads 20 pages a day. Her novel has 300 pages. How many days will it take?",
    "A farmer plants 7 rows of corn. Each row holds 12 plants. How many plants are there?",
    "Sam saves $15 every week. He wants a bike that costs $120. How many weeks must he save?",
    "A baker makes 48 muffins. She sells three quarters of them. How many are left over?",
    "Tia swims 25 laps on Monday. On Tuesday she swims twice as many. How many in total?",
    "A box holds 6 eggs. Grandma needs 40 eggs for a party. How many boxes should she buy?",
    "Leo is 9 years old. His sister is 4 years older. How old will she be in 5 years?",
    "A tank holds 200 litres. It leaks 2.5 litres an hour. How long until it is half empty?",
    "Mia knits 3 scarves a week. Each scarf uses 2 balls of wool. How much wool for 6 weeks?",
    "A bus seats 52 people. 130 pupils go on a school trip. How many buses are needed?",
    "Omar runs 5 km each morning. He rests on Sundays. How far does he run in two weeks?",
    "A pizza is cut into 8 slices. Four friends share 3 pizzas. How many slices each?",
    "Ivy earns $12.50 an hour. She works 6 hours on Saturday. What does she earn that day?",
]


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
    choice), 512 new tokens (1024 for math); the negatives of each setup; personalization with
    the paper's prompt."""
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
    new_tokens = 1024 if name == "paper-math" else 512
    for generation in (config.generation, config.eval_generation):
        assert (generation.top_p, generation.temperature) == (0.9, temperature)
        assert generation.max_new_tokens == new_tokens
    if name == "paper-math":
        assert config.math_max_new_tokens == 1024
    if name == "paper-personalization":
        assert config.columns.context_format == "paper"
    assert config.model and "/" in config.model  # a hub model
    assert config.negatives == NEGATIVES[name]


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
    corpus = tmp_path / "corpus.jsonl"
    if name == "paper-math":
        pl.DataFrame({"id": [f"m{i}" for i in range(len(MATH))], "question": MATH}).write_ndjson(
            corpus
        )
    else:
        frame = load_sample_corpus()
        users = frame["user_id"].unique(maintain_order=True)[:6].to_list()
        frame.filter(pl.col("user_id").is_in(users)).write_ndjson(corpus)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, [
        "run", "--recipe", name, str(corpus), "-o", str(out), "--model", str(tiny_model_dir),
        "--set", "generation.backend=hf", "--set", "eval_generation.backend=hf",
        "--generation-max-new-tokens", "8", "--set", "eval_generation.max_new_tokens=8",
        "--keep-truncated", "--max-steps", "1", "--train-batch-size", "2", "-k", "1",
        "--set", "n_bootstrap=50", "--max-prompts", "12", "--eval-fraction", "0.25",
        "--set", "progress=false",
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
    pairs = pl.read_parquet(out / "round-1" / "pairs" / "pairs.parquet")
    assert pairs.height and set(pairs["strategy"]) == {recipe["negatives"]}
    if name == "demo":
        # The run's record repeats it: the same pairs, byte for byte, in another folder.
        again = tmp_path / "again"
        result = CliRunner().invoke(
            cli, ["run", "--config", str(out / "run.json"), "-o", str(again)]
        )
        assert result.exit_code == 0, (result.output, result.stderr)
        pairs = Path("round-1") / "pairs" / "pairs.parquet"
        assert (again / pairs).read_bytes() == (out / pairs).read_bytes()
