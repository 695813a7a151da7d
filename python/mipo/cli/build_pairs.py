"""``mipo build-pairs`` and ``mipo merge``: click commands only (the work is in
:mod:`mipo.pairs.build` and :mod:`mipo.pairs.merge`; heavy imports happen inside the commands)."""

from __future__ import annotations

from typing import Any

import click

from mipo.cli._options import (
    GENERATION,
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

BUILD = "mipo.pairs.config:BuildPairsConfig"

# Options that are fields of a nested config: option name -> field name.
_GENERATION_OPTIONS = {
    name: name
    for name in (
        "backend", "max_new_tokens", "temperature", "top_p", "batch_size", "chunk_size", "dtype",
        "tensor_parallel_size", "gpu_memory_utilization", "max_model_len",
        "enable_prefix_caching", "kv_cache_gib", "vllm_args", "vllm_window_rows", "vllm_python",
    )
}  # fmt: skip
_COLUMN_OPTIONS = {
    "prompt_col": "prompt",
    "messages_col": "messages",
    "context_col": "context",
    "user_col": "user",
    "id_col": "id",
    "context_format": "context_format",
}


def _print_result(result: Any) -> None:
    from rich.console import Console

    from mipo.pairs.build import summary_table

    console = Console(soft_wrap=True)
    console.print(summary_table(result.stats))
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if result.message:
        console.print(result.message, markup=False, highlight=False)


@click.command("build-pairs")
@click.argument("input", metavar="INPUT", required=False)
@output_option(
    "out_dir", old_names=("--out",), required=False, help="Output folder (a rerun continues)."
)
@config_file_options
@click.option(
    "--model",
    default=None,
    help="Hub id, local model folder or .gguf file [default: the built-in smollm2-135m].",
)
@click.option("--plan-only", is_flag=True, help="Stop after writing plan.parquet.")
@click.option(
    "--negatives",
    **config_default(BUILD + ".negatives"),
    help="random: a response to another prompt; context-drop: a response to the prompt without "
    "its context; context-swap: a response to the same question with another user's context "
    "(reused where another user asked it); a comma-separated list gives one pair of each "
    "(e.g. random,context-swap; both = random,context-drop).",
)
@click.option(
    "--independent-negatives",
    is_flag=True,
    help="Sample a separate response to σ(i) instead of reusing σ(i)'s own (2x generation).",
)
@click.option(
    "--backend",
    type=click.Choice(["auto", "vllm", "hf"]),
    **config_default(GENERATION + ".backend"),
    help="auto: vLLM when installed and a GPU is present, else transformers.",
)
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    **config_default(BUILD + ".executor"),
    help="local: plan and generate in this process; ray: the plan as Ray tasks and generation "
    "on a Ray cluster's workers, one model copy per GPU (pip install 'mipo[ray]').",
)
@click.option(
    "--num-workers",
    type=int,
    default=None,
    help="--executor ray: model copies, and the plan's shuffle partitions [default: as many "
    "as the cluster fits; partitions: its CPUs].",
)
@click.option(
    "--ray-address",
    default=None,
    help="--executor ray: cluster address [default: $RAY_ADDRESS, else a cluster started here "
    "with `ray start`, else a local Ray runtime].",
)
@click.option(
    "--max-new-tokens",
    type=int,
    help="Most tokens per response (the paper's length; `mipo eval` defaults shorter, to keep "
    "evaluation quick).",
    **config_default(GENERATION + ".max_new_tokens"),
)
@click.option(
    "--temperature",
    type=float,
    help="Sampling temperature (0 = greedy).",
    **config_default(GENERATION + ".temperature"),
)
@click.option(
    "--top-p", type=float, help="Nucleus sampling mass.", **config_default(GENERATION + ".top_p")
)
@click.option(
    "--seed",
    type=int,
    help="Seed of the negatives and of every sampling seed.",
    **config_default(BUILD + ".seed"),
)
@click.option(
    "--batch-size",
    type=int,
    help="Prompts per generation batch (`mipo run`: --generation-batch-size).",
    **config_default(GENERATION + ".batch_size"),
)
@click.option(
    "--chunk-size",
    type=int,
    help="Rows per generation chunk.",
    **config_default(GENERATION + ".chunk_size"),
)
@click.option(
    "--dtype", help="auto, float32, bfloat16 or float16.", **config_default(GENERATION + ".dtype")
)
@click.option("--tensor-parallel-size", type=int, default=None, help="vLLM tensor parallelism.")
@vllm_options
@click.option(
    "--shard",
    **config_default(lambda: "/".join(map(str, config_value(BUILD + ".shard")))),
    help="I/N: generate only every N-th chunk, starting at chunk I.",
)
@click.option(
    "--max-prompt-tokens",
    type=int,
    default=None,
    help="Drop longer prompts [default: model context minus --max-new-tokens].",
)
@click.option("--no-dedup", is_flag=True, help="Keep duplicates (never paired with each other).")
@click.option(
    "--near-dup-threshold",
    type=float,
    help="Jaccard similarity from which two prompts are near duplicates.",
    **config_default(BUILD + ".near_dup_threshold"),
)
@click.option(
    "--no-user-constraint",
    is_flag=True,
    help="Allow a random negative from the same user.",
)
@click.option("--keep-truncated", is_flag=True, help="Keep pairs with a truncated response.")
@click.option(
    "--drop-persona",
    is_flag=True,
    help="Drop pairs whose chosen answer speaks as the user (restates their context as its own).",
)
@click.option(
    "--score",
    is_flag=True,
    help="Score log π(y+|x) − log π(y−|x) under the reference model; drop pairs below "
    "--min-margin.",
)
@click.option(
    "--min-margin",
    type=float,
    help="With --score: least margin kept.",
    **config_default(BUILD + ".min_margin"),
)
@click.option(
    "--overwrite", is_flag=True, help="Redo a run with other options (from the changed stage on)."
)
@click.option("--trust-remote-code", is_flag=True, help="Allow the model's own Python code.")
@click.option("--allow-pickle", is_flag=True, help="Allow pickle-based (.bin) weights.")
@click.option("--prompt-col", default=None, help="Plain-text prompt column.")
@click.option("--messages-col", default=None, help="Chat messages column.")
@click.option("--context-col", default=None, help="User context column (see --context-format).")
@context_format_option
@click.option("--user-col", default=None, help="User id column.")
@click.option("--id-col", default=None, help="Row id column.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@verbose_option
@click.pass_context
def build_pairs_cmd(ctx: click.Context, **options: Any) -> None:
    """Build DPO preference pairs from a prompt corpus.

    INPUT is a Parquet, JSONL or CSV file, a folder, or a glob of shards. Stages (each resumable):
    plan (dedup, tokenize, negatives -> plan.parquet), generate (generations/), pairs
    (pairs.parquet + stats.json). OUTDIR/run.json records the resolved config: --config
    OUTDIR/run.json repeats the run.

    \b
    Example:
      mipo build-pairs python/mipo/data/sample_corpus.jsonl -o out --max-new-tokens 64
    """
    from mipo.pairs.build import build_pairs, parse_shard
    from mipo.pairs.config import BuildPairsConfig

    config_file = options.pop("config_file")
    print_config = options.pop("print_config")
    vllm = pop_vllm_options(options)
    given = given_options(ctx, options)  # the others keep the file's or the config's defaults
    given.update(vllm)
    if "shard" in given:
        given["shard"] = list(parse_shard(given["shard"]))
    for name in ("no_dedup", "no_user_constraint", "no_progress"):
        if given.pop(name, False):
            given[name.removeprefix("no_")] = False
    verbose = bool(given.pop("verbose", False))
    overrides = nest_options(given, {"generation": _GENERATION_OPTIONS, "columns": _COLUMN_OPTIONS})
    config = resolve_config(
        BuildPairsConfig,
        config_file,
        overrides,
        print_config=print_config,
        required={"input": "INPUT", "out_dir": "-o/--output"},
    )
    with quiet_model_bars(verbose):
        result = build_pairs(config)
    _print_result(result)


@click.command("merge")
@click.argument("out_dir", metavar="OUTDIR")
@click.argument("shard_dirs", nargs=-1, metavar="[SHARD_DIR]...")
@click.option("--trust-remote-code", is_flag=True, help="Allow the model's own Python code.")
@click.option("--allow-pickle", is_flag=True, help="Allow pickle-based (.bin) weights.")
def merge_cmd(
    out_dir: str, shard_dirs: tuple[str, ...], trust_remote_code: bool, allow_pickle: bool
) -> None:
    """Join the shards of a `build-pairs --shard I/N` run and build its pairs.

    OUTDIR is the output folder of one shard (or the folder all shards shared); SHARD_DIRs are
    the other shards' folders when they ran elsewhere. Missing chunks are listed.
    """
    from mipo.pairs.merge import merge_shards

    _print_result(
        merge_shards(
            out_dir,
            list(shard_dirs),
            trust_remote_code=trust_remote_code,
            allow_pickle=allow_pickle,
        )
    )


COMMANDS: list[click.Command] = [build_pairs_cmd, merge_cmd]
