"""``mipo eval``: click command only (the work is in :mod:`mipo.evaluate`; heavy imports happen
inside the command)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mipo.cli._options import (
    EVAL,
    config_default,
    config_file_options,
    config_value,
    context_format_option,
    given_options,
    nest_options,
    output_option,
    pop_vllm_options,
    quiet_model_bars,
    resolve_config,
    verbose_option,
    vllm_options,
)

# Options that are fields of the evaluation's GenerationConfig (option name -> field name).
_GENERATION_OPTIONS = {
    name: name
    for name in (
        "max_new_tokens", "temperature", "top_p", "batch_size", "backend", "device", "dtype",
        "gpu_memory_utilization", "max_model_len", "enable_prefix_caching", "kv_cache_gib",
        "vllm_args", "vllm_window_rows", "vllm_python",
    )
}  # fmt: skip
EVAL_GENERATION = "mipo.evaluate.config:eval_generation"


def _eval_default(name: str) -> Any:
    """The evaluation's generation default of ``name`` (for --help)."""
    return lambda: getattr(config_value(EVAL_GENERATION)(), name)


@click.command("eval")
@click.argument("data", nargs=-1)
@click.option("--model", help="Model to evaluate (folder, train OUTDIR, adapter, name).")
@output_option(
    "output",
    type=click.Path(path_type=Path),
    required=False,
    help="Output directory (report.md, report.html, metrics.json, plots).",
)
@config_file_options
@click.option(
    "--reference",
    default=None,
    help="Reference model for PMI  [default: the model --model was trained from]",
)
@click.option("--compare", default=None, help="Baseline model, same prompts and seeds.")
@click.option(
    "--judge",
    default=None,
    help="Judge model for the personalization win rate (needs --compare)  [default: none]",
)
@click.option(
    "--judge-url",
    default=None,
    help="OpenAI-compatible API base of a judge server (http://host:port/v1); key from "
    "$MIPO_JUDGE_API_KEY (else $OPENAI_API_KEY).",
)
@click.option(
    "--judge-model", default=None, help="The served judge model's name (with --judge-url)."
)
@click.option(
    "--judge-concurrency",
    type=int,
    help="Judge requests in flight.",
    **config_default(EVAL + ".judge_concurrency"),
)
@click.option(
    "--judge-timeout",
    "judge_timeout_s",
    type=float,
    help="Seconds per judge request before it is retried.",
    **config_default(EVAL + ".judge_timeout_s"),
)
@context_format_option
@click.option(
    "-k",
    "--contrasts",
    "k",
    type=int,
    help="Contrast prompts per prompt and contrast set for PMI.",
    **config_default(EVAL + ".k"),
)
@click.option(
    "--seed",
    type=int,
    help="Seed of generation, contrast draws and bootstrap.",
    **config_default(EVAL + ".seed"),
)
@click.option(
    "--max-new-tokens",
    type=int,
    help="Most tokens per response to a PMI prompt (paper: 512; shorter than build-pairs' "
    "default, to keep evaluation quick).",
    **config_default(_eval_default("max_new_tokens")),
)
@click.option(
    "--math-max-new-tokens",
    default=None,
    type=int,
    help="Most tokens per math solution  [default: 1024 (paper) on GPU, 512 on CPU]",
)
@click.option(
    "--math-shots",
    type=int,
    help="Worked examples before each math question (chain of thought); 0 = zero-shot.",
    **config_default(EVAL + ".math_shots"),
)
@click.option(
    "--math-fewshot",
    default=None,
    help="JSONL/Parquet/CSV of worked examples (question, answer ending '#### N')  [default: "
    "shipped 8]",
)
@click.option(
    "--temperature",
    type=float,
    help="Sampling temperature (paper: 0.1; 0 = greedy).",
    **config_default(_eval_default("temperature")),
)
@click.option(
    "--top-p",
    type=float,
    help="Nucleus mass (paper: 0.9).",
    **config_default(_eval_default("top_p")),
)
@click.option(
    "--batch-size",
    type=int,
    help="Rows per forward pass when generating and scoring: speed and memory.",
    **config_default(_eval_default("batch_size")),
)
@click.option("--limit", default=None, type=int, help="At most N rows of each file.")
@click.option(
    "--n-bootstrap",
    type=int,
    help="Bootstrap resamples per confidence interval.",
    **config_default(EVAL + ".n_bootstrap"),
)
@click.option(
    "--backend",
    type=click.Choice(["auto", "hf", "vllm"]),
    help="Generation backend (auto: vLLM when usable — installed with a GPU, its CPU build, or "
    "through --vllm-python — else transformers).",
    **config_default(_eval_default("backend")),
)
@click.option(
    "--device", help="auto, cpu, cuda or cuda:N.", **config_default(_eval_default("device"))
)
@click.option(
    "--dtype",
    type=click.Choice(["auto", "float32", "bfloat16"]),
    help="Precision of generation and scoring (auto: bf16 on GPUs and CPUs with AMX or AVX-512 BF16, else fp32).",
    **config_default(_eval_default("dtype")),
)
@vllm_options
@click.option(
    "--cache-dir",
    default=None,
    help="Reuse per-model results across evaluations (a sweep scores its baseline once).",
)
@click.option(
    "--train-log", default=None, help="train_log.jsonl to plot  [default: the model's own]"
)
@click.option("--overwrite", is_flag=True, help="Replace an existing report.")
@click.option("--trust-remote-code", is_flag=True, help="Allow models that ship Python code.")
@click.option("--no-progress", is_flag=True, help="No progress display.")
@verbose_option
@click.pass_context
def eval_cmd(
    ctx: click.Context, data: tuple[str, ...], output: Path | None, **options: Any
) -> None:
    """Evaluate a model on DATA files: PMI, multiple choice, math, judged win rate.

    \b
    DATA kinds (detected from columns, or prefixed kind:path):
      pmi     held-out prompts (question/context/user_id, or messages)
      choice  JSONL with question, choices, answer
      math    JSONL with question, answer ('... #### N'); asked 8-shot chain of
              thought by default (--math-shots)
    """
    from mipo.errors import ConfigError
    from mipo.evaluate import EvalConfig, run_eval
    from mipo.evaluate.report import fmt_ci
    from mipo.progress import off

    config_file = options.pop("config_file")
    print_config = options.pop("print_config")
    vllm = pop_vllm_options(options)
    # Options not given keep the file's or EvalConfig's defaults (the ones --help shows).
    given = given_options(ctx, options)
    given.update(vllm)
    if data:
        given["data"] = list(data)
    verbose = bool(given.pop("verbose", False))
    no_progress = bool(given.pop("no_progress", False))
    config = resolve_config(
        EvalConfig,
        config_file,
        nest_options(given, {"generation": _GENERATION_OPTIONS}),
        print_config=print_config,
        required={"data": "DATA", "model": "--model"},
    )
    if output is None:
        raise ConfigError("pass -o/--output: the folder the report is written to")
    with quiet_model_bars(verbose), off(no_progress):
        result = run_eval(config, output)
    m = result.metrics
    for name, stats in m["pmi"].items():
        for key, label in (
            ("pmi_same_question", "same question, other users"),
            ("pmi_random", "random"),
        ):
            if key not in stats["model"]:
                continue
            line = f"PMI {name} ({label}): model {fmt_ci(stats['model'][key])}"
            if "difference" in stats:
                line += f", model − baseline {fmt_ci(stats['difference'][key])}"
            click.echo(line)
        for finding in stats.get("findings", []):
            click.echo(f"  {finding}")
    for section in ("multiple_choice", "math"):
        for name, stats in m[section].items():
            line = (
                f"{section.replace('_', ' ')} {name}: accuracy {fmt_ci(stats['model']['accuracy'])}"
            )
            if "baseline" in stats:
                line += f" (baseline {fmt_ci(stats['baseline']['accuracy'])})"
            click.echo(line)
    for name, stats in m["judge"].items():
        line = (
            f"judge {name}: win rate {stats['win_rate_ties_as_wins']:.3f} (ties as wins), "
            f"{stats['win_rate_ties_as_half']:.3f} (ties as half)"
        )
        if "unparsed" in stats:
            line += f"; unparsed replies {sum(stats['unparsed'].values())}"
        click.echo(line)
    click.echo(f"report: {result.report_md}")


COMMANDS: list[click.Command] = [eval_cmd]
