"""``mipo run``: click command only (the work is in :mod:`mipo.run`; heavy imports happen inside
the command)."""

from __future__ import annotations

from typing import Any

import click

from mipo.cli._options import (
    GENERATION,
    RUN,
    TRAIN,
    config_default,
    config_file_options,
    config_value,
    context_format_option,
    epochs_default,
    given_options,
    learning_rate_default,
    nest_options,
    output_option,
    pop_vllm_options,
    quiet_model_bars,
    resolve_config,
    verbose_option,
    vllm_options,
)

# Options that go to TrainConfig (click name -> field), the rest go to RunConfig.
_TRAIN_OPTIONS = {
    "lora": "lora",
    "lora_r": "lora_r",
    "lora_alpha": "lora_alpha",
    "learning_rate": "learning_rate",
    "beta": "beta",
    "loss_type": "loss_type",
    "loss_weights": "loss_weights",
    "epochs": "epochs",
    "max_steps": "max_steps",
    "batch_size": "batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
    "max_length": "max_length",
    "seed": "seed",
    "trust_remote_code": "trust_remote_code",
}
_COLUMN_OPTIONS = ("prompt_col", "messages_col", "context_col", "user_col", "id_col")
_CORPUS_OPTIONS = {c: c.removesuffix("_col") for c in _COLUMN_OPTIONS} | {
    "context_format": "context_format"
}
# Generation options that set the pairs' generation and the evaluation's alike.
_BOTH_GENERATIONS = (
    "backend", "max_new_tokens", "temperature", "top_p", "gpu_memory_utilization",
    "max_model_len", "enable_prefix_caching", "kv_cache_gib", "vllm_args", "vllm_window_rows",
    "vllm_python",
)  # fmt: skip
EVAL_GENERATION = "mipo.evaluate.config:eval_generation"


def _pairs_and_eval(field: str) -> Any:
    """A generation option's default for the pairs and for the evaluation (one value when the
    two agree)."""
    pairs = config_value(f"{GENERATION}.{field}")
    evaluation = getattr(config_value(EVAL_GENERATION)(), field)
    return pairs if pairs == evaluation else f"{pairs} for pairs, {evaluation} in evaluation"


@click.command("run")
@click.argument("corpus", required=False, metavar="[CORPUS]")
@output_option(
    "out_dir", old_names=("--out",), required=False, help="Output folder (a rerun continues)."
)
@config_file_options
@click.option("--demo", is_flag=True, help="The bundled sample corpus, built-in model, context-swap negatives, LoRA, small sizes (~18 min on 2 cores of an AMD EPYC Zen 4); = --recipe demo.")  # fmt: skip
@click.option("--recipe", help="A shipped recipe's settings (mipo recipes lists them); a --config file and flags override it.")  # fmt: skip
@click.option("--rounds", type=int, help="Rounds of build-pairs -> train -> eval", **config_default(RUN + ".rounds"))  # fmt: skip
@click.option("--eval-fraction", type=float, help="Share held out for evaluation (whole users)", **config_default(RUN + ".eval_fraction"))  # fmt: skip
@click.option("--eval-data", help="A separate held-out prompt file (then the whole corpus trains).")
@click.option("--max-prompts", type=int, help="Train on at most N prompts (seeded sample).")
@click.option("--max-eval-prompts", type=int, help="Evaluate on at most N held-out prompts.")
@click.option("--model", help="Base model: hub id, folder or .gguf  [default: built-in smollm2-135m]")  # fmt: skip
@click.option("--seed", type=int, help="Seed of split, negatives, generation, training, eval", **config_default(RUN + ".seed"))  # fmt: skip
@click.option("--negatives", help="Negative strategies: random, context-drop, context-swap, a comma-separated list, or auto (context-swap when the corpus has user contexts, else random)", **config_default(RUN + ".negatives"))  # fmt: skip
@click.option("--independent-negatives", is_flag=True, default=None, help="Sample separate responses for the random negatives.")  # fmt: skip
@click.option("--backend", type=click.Choice(["auto", "vllm", "hf"]), help="Generation backend, pairs and eval", **config_default(GENERATION + ".backend"))  # fmt: skip
@click.option("--max-new-tokens", type=int, help="Tokens per response, pairs and eval (evaluation defaults shorter, to stay quick)", **config_default(lambda: _pairs_and_eval("max_new_tokens")))  # fmt: skip
@click.option("--temperature", type=float, help="Sampling temperature", **config_default(lambda: _pairs_and_eval("temperature")))  # fmt: skip
@click.option("--top-p", type=float, help="Nucleus sampling mass", **config_default(lambda: _pairs_and_eval("top_p")))  # fmt: skip
@click.option("--generation-batch-size", type=int, help="Prompts per generation batch of the pairs (build-pairs --batch-size)", **config_default(GENERATION + ".batch_size"))  # fmt: skip
@click.option("--keep-truncated", is_flag=True, default=None, help="Keep pairs whose responses hit --max-new-tokens.")  # fmt: skip
@click.option("--drop-persona", is_flag=True, default=None, help="Drop pairs whose chosen answer speaks as the user.")  # fmt: skip
@click.option("--no-dedup", "dedup", flag_value=False, default=None, help="Keep duplicate prompts.")
@click.option("--lora/--no-lora", default=None, help="Train a LoRA adapter  [default: full fine-tuning; --demo: LoRA]")  # fmt: skip
@click.option("--lora-r", type=int, help="LoRA rank", **config_default(TRAIN + ".lora_r"))
@click.option("--lora-alpha", type=int, help="LoRA alpha", **config_default(TRAIN + ".lora_alpha"))  # fmt: skip
@click.option("--learning-rate", "--lr", "learning_rate", type=float, help="Peak learning rate", **config_default(learning_rate_default))  # fmt: skip
@click.option("--beta", type=float, help="DPO beta", **config_default(TRAIN + ".beta"))
@click.option("--loss-type", help="TRL DPO loss (comma-separate to combine: sigmoid,sft)", **config_default(TRAIN + ".loss_type"))  # fmt: skip
@click.option("--loss-weights", help="Weights of the --loss-type terms (1,0.5)")
@click.option("--epochs", type=float, help="Passes over the pairs", **config_default(epochs_default))  # fmt: skip
@click.option("--max-steps", type=int, help="Stop training after N optimizer steps.")
@click.option("--batch-size", type=int, help="Training pairs per device per step (mipo train --batch-size)", **config_default(TRAIN + ".batch_size"))  # fmt: skip
@click.option("--grad-accum", "gradient_accumulation_steps", type=int, help="Gradient accumulation steps", **config_default(TRAIN + ".gradient_accumulation_steps"))  # fmt: skip
@click.option("--max-length", type=int, help="Max prompt + response tokens in training", **config_default(TRAIN + ".max_length"))  # fmt: skip
@click.option("--train-config", type=click.Path(exists=True, dir_okay=False), help="YAML of training options (TrainConfig fields); flags win.")  # fmt: skip
@click.option("-k", "--contrasts", "eval_k", type=int, help="Contrast prompts per held-out prompt and contrast set for PMI", **config_default(RUN + ".eval_k"))  # fmt: skip
@click.option("--eval-batch-size", type=int, help="Rows per forward pass when generating and scoring the evaluation: speed and memory", **config_default(lambda: config_value(EVAL_GENERATION)().batch_size))  # fmt: skip
@click.option("--judge", help="Judge model for the win rate: a model, auto (the base model), or none  [default: none]")  # fmt: skip
@click.option("--extra-eval", "extra_eval_data", multiple=True, help="choice:/math: file evaluated every round (repeatable).")  # fmt: skip
@click.option("--n-bootstrap", type=int, help="Bootstrap resamples", **config_default(RUN + ".n_bootstrap"))  # fmt: skip
@click.option("--eval-cache", help="Folder of per-model evaluation results shared across runs (a sweep scores its base model once)  [default: OUTDIR/.eval-cache]")  # fmt: skip
@click.option("--reuse-pairs", type=click.Path(exists=True, file_okay=False), help="Copy round 1's pairs from another run's round-1/pairs (same corpus, model, generation options).")  # fmt: skip
@click.option("--overwrite", is_flag=True, default=None, help="Discard a run with other options in OUTDIR.")  # fmt: skip
@click.option("--trust-remote-code", is_flag=True, default=None, help="Allow the model's own code.")
@click.option("--no-progress", "progress", flag_value=False, default=None, help="No progress bars.")
@click.option("--prompt-col", help="Plain-text prompt column.")
@click.option("--messages-col", help="Chat messages column.")
@click.option("--context-col", help="User context column (see --context-format).")
@context_format_option
@click.option("--user-col", help="User id column.")
@click.option("--id-col", help="Row id column.")
@vllm_options
@verbose_option
@click.pass_context
def run_cmd(
    ctx: click.Context,
    corpus: str | None,
    demo: bool,
    recipe: str | None,
    train_config: str | None,
    **options: Any,
) -> None:
    """Build pairs, train and evaluate in one command, for one or more rounds.

    CORPUS is a prompt corpus as build-pairs reads it. A share of it (whole users) is held out;
    each round builds pairs with the previous round's model (round 1: the base model), trains from
    it, and evaluates it against the base on the held-out prompts (PMI with paired bootstrap
    intervals, judged win rate). Rerunning the same command skips finished stages; a larger
    --rounds adds rounds. Writes OUTDIR/report.md, report.html and metrics.json.

    \b
    Examples:
      mipo run --demo -o demo-out
      mipo run --recipe paper-personalization corpus.jsonl -o out
      mipo run corpus.jsonl -o out --lora --max-new-tokens 128 --rounds 2
    """
    from mipo.configfile import load_config_file, merge_mappings
    from mipo.errors import ConfigError
    from mipo.run import RunConfig, run_pipeline
    from mipo.run.recipes import load_recipe

    config_file = options.pop("config_file")
    print_config = options.pop("print_config")
    vllm = pop_vllm_options(options)
    given = given_options(ctx, options)
    given.update(vllm)
    verbose = bool(given.pop("verbose", False))
    # --seed and --trust-remote-code are the training's too.
    for shared in ("seed", "trust_remote_code"):
        if shared in given:
            given.setdefault("train", {})[shared] = given[shared]
    if corpus is not None:
        given["corpus"] = corpus
    both = {name: given.pop(name) for name in _BOTH_GENERATIONS if name in given}
    overrides = nest_options(
        given,
        {
            "columns": _CORPUS_OPTIONS,
            "train": {
                k: v for k, v in _TRAIN_OPTIONS.items() if k not in ("seed", "trust_remote_code")
            },
            "generation": {"generation_batch_size": "batch_size"},
            "eval_generation": {"eval_batch_size": "batch_size"},
        },
    )
    for group in ("generation", "eval_generation"):
        overrides[group] = {**overrides.get(group, {}), **both}
    if train_config:  # under the flags, over the --config file
        overrides["train"] = merge_mappings(
            load_config_file(train_config), overrides.get("train", {})
        )
    if demo and recipe not in (None, "demo"):
        raise ConfigError(f"--demo is --recipe demo: pass --demo or --recipe {recipe}, not both")
    name = "demo" if demo else recipe
    base = load_recipe(name).config if name else {}
    if config_file:
        base = merge_mappings(base, load_config_file(config_file))
    config = resolve_config(
        RunConfig,
        None,
        merge_mappings(base, overrides),
        print_config=print_config,
        required={
            "corpus": "CORPUS (or --demo, the bundled sample corpus)",
            "out_dir": "-o/--output",
        },
        source=config_file,
    )

    with quiet_model_bars(verbose):
        result = run_pipeline(config, log=lambda line: click.echo(line, err=True))
    _print_summary(result)


def _print_summary(result: Any) -> None:
    from mipo.evaluate.report import fmt_ci

    for entry in result.metrics["rounds"]:
        for key, label in (
            ("pmi_same_question", "same-question PMI (personalization)"),
            ("pmi_random", "random-contrast PMI"),
        ):
            if not entry["pmi"].get(key):
                continue
            line = f"round {entry['round']}: held-out {label} {fmt_ci(entry['pmi'].get(key))}"
            line += f", − base {fmt_ci(entry['vs_base'].get(key))}"
            click.echo(line)
        judge = entry.get("judge")
        if judge:
            click.echo(
                f"round {entry['round']}: judged win rate (ties as half) "
                f"{judge['win_rate_ties_as_half']:.3f}"
            )
        for finding in entry.get("findings", []):
            click.echo(f"  {finding}")
    for key, label in (("pmi_same_question", "same-question"), ("pmi_random", "random-contrast")):
        base = result.metrics["base"]["pmi"].get(key)
        if base:
            click.echo(f"base model: held-out {label} PMI {fmt_ci(base)}")
    headline = result.metrics.get("personalization")
    if headline:
        above = "above 0" if headline["gain_above_zero"] else "not above 0"
        click.echo(
            f"personalization: same-question PMI gain {fmt_ci(headline['gain'])} nats "
            f"(95% cluster-bootstrap interval {above}; metrics.json: personalization)"
        )
    last = result.metrics["rounds"][-1] if result.metrics["rounds"] else {}
    if headline and last.get("reader_criteria"):
        missed = [name for name, met in last["reader_criteria"].items() if not met]
        click.echo(
            "would a reader call it personal? persona adoption (speaks as the user) "
            f"{fmt_ci(headline.get('persona_baseline'))} -> {fmt_ci(headline.get('persona_model'))}"
            f", fluency {fmt_ci(headline.get('logprob_per_token_change'))} nats/token, adjusted "
            f"gain {fmt_ci((headline.get('adjusted_gain') or {}).get('all'))}: "
            + ("all criteria met" if not missed else "misses " + "; ".join(missed))
        )
    seconds = result.metrics["total_stage_seconds"]
    click.echo(f"time: {seconds / 60:.1f} min over all stages")
    click.echo(f"report: {result.report_md} (and {result.report_html.name}, metrics.json)")


@click.command("recipes")
def recipes_cmd() -> None:
    """List the shipped recipes (mipo run --recipe NAME; --print-config shows one in full)."""
    from mipo.run.recipes import load_recipe, recipe_names

    for name in recipe_names():
        recipe = load_recipe(name)
        click.echo(f"{name}\n  {recipe.description}")


COMMANDS: list[click.Command] = [run_cmd, recipes_cmd]
