"""``mipo build-pairs``: plan -> generate -> pairs, each stage resumable from its Parquet output.

Layout of an output folder::

    OUTDIR/
      run.json            options of each stage (hashed), model name + fingerprint, seed
      plan.parquet        the plan (one row per prompt: messages, token ids, negatives)
      generations/        chunk files + manifest of the generation runner (resumable, sharded)
      pairs.parquet       TRL DPO-ready pairs
      stats.json          counts, time and peak RSS per stage

A rerun with the same options skips finished stages (and finished generation chunks). With
changed options the run is refused unless ``overwrite``; then the outputs of the first changed
stage and of every later one are discarded (so changing only ``min_margin`` keeps the
generations). A plan that fails leaves nothing behind in a new output folder. The records that
decide what a rerun reuses are :mod:`mipo.pairs.manifest`; joining the shards of a ``--shard I/N``
run is :mod:`mipo.pairs.merge`.

>>> # loads and runs a model over a corpus (minutes): see tests/test_build_pairs.py
>>> from mipo.pairs.build import BuildPairsConfig, build_pairs  # doctest: +SKIP
>>> result = build_pairs(BuildPairsConfig("corpus.jsonl", "out", model="smollm2-135m"))  # doctest: +SKIP
>>> result.stats["pairs"]["pairs_written"]  # doctest: +SKIP
298
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mipo.corpus import open_corpus
from mipo.errors import ConfigError, CorpusError, ModelError, OutputError, TemplateError
from mipo.io import output_lock, read_json_record, write_json_atomic, write_parquet_atomic
from mipo.pairs.assemble import (
    PairFilterConfig,
    PairStats,
    assemble_pairs,
    build_requests,
    filter_pairs,
    filter_verdict,
)
from mipo.pairs.config import EXECUTORS, BuildPairsConfig, parse_shard
from mipo.pairs.manifest import (
    GENERATIONS_DIR,
    PAIRS_FILE,
    PLAN_FILE,
    RUN_FILE,
    STAGE_OUTPUTS,
    STAGES,
    STATS_FILE,
    first_changed_stage,
    run_record,
    stage_options,
)
from mipo.pairs.plan import PlanConfig, build_plan, read_plan

__all__ = [
    "EXECUTORS",
    "STAGES",
    "BuildPairsConfig",
    "BuildPairsResult",
    "build_pairs",
    "parse_shard",
    "summary_table",
]


@dataclass
class BuildPairsResult:
    """What a run did: the output folder, the stage it finished at, and ``stats.json``."""

    out_dir: Path
    completed: str
    stats: dict[str, Any]
    message: str = ""
    warnings: list[str] = field(default_factory=list)
    """Filters that dropped more than half the pairs, with the option that changes each."""


# --- bookkeeping ---------------------------------------------------------------------------------


def _peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB."""
    # ru_maxrss is in KiB on Linux and bytes on macOS; it is the peak of the whole process so far.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


class StageTimes:
    """Times each stage and records its seconds and the process's peak RSS in ``stats.json``."""

    def __init__(self, out: Path, stats: dict[str, Any]) -> None:
        self.out = out
        self.stats = stats
        self.stats.setdefault("stages", {})

    @contextlib.contextmanager
    def run(self, name: str) -> Iterator[dict[str, Any]]:
        start = time.perf_counter()
        record: dict[str, Any] = {}
        yield record
        seconds = time.perf_counter() - start
        # A resumed stage adds to the time its earlier, interrupted runs took.
        before = self.stats["stages"].get(name, {}).get("seconds_total", 0.0)
        record.update(
            seconds=round(seconds, 3),
            seconds_total=round(before + seconds, 3),
            peak_rss_mb=_peak_rss_mb(),
        )
        self.stats["stages"][name] = record
        self.save()

    def save(self) -> None:
        write_json_atomic(self.stats, self.out / STATS_FILE)


def _remove(out: Path, names: tuple[str, ...]) -> None:
    """Remove the named files or folders of ``out`` (a link itself, never its target)."""
    for name in names:
        target = out / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()


# --- option records ------------------------------------------------------------------------------


def _context_length(model_path: Path) -> int | None:
    # resolve_model checked config.json already; a file damaged since is an error, not "no limit".
    """The model's context length from its config.json (None when it names none)."""
    config = read_json_record(
        model_path / "config.json",
        what="model config",
        fix="repair or re-download the model folder",
        error=ModelError,
    )
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = config.get(key) if config is not None else None
        if isinstance(value, int) and value > 0:
            return value
    return None


def _effective_max_prompt_tokens(
    config: BuildPairsConfig, model_path: Path, gen: Any
) -> int | None:
    """The longest prompt the plan keeps: ``max_prompt_tokens``, else the model's
    context less the new tokens (None when the context is unknown)."""
    if config.max_prompt_tokens is not None:
        return config.max_prompt_tokens
    context = _context_length(model_path)
    if context is None:
        return None
    room = context - gen.max_new_tokens
    if room < 1:
        raise ConfigError(
            f"generation.max_new_tokens {gen.max_new_tokens} leaves no room for a prompt in the "
            f"model's context of {context} tokens: lower --generation-max-new-tokens"
        )
    return room


# --- progress ------------------------------------------------------------------------------------


class _PlanProgress:
    """The plan's passes (read, tokenize, derange, write) as tasks of one progress display
    (:mod:`mipo.progress`), rows/s each."""

    def __init__(self, enabled: bool, total_rows: int | None) -> None:
        from mipo.progress import Display

        self.total_rows = total_rows
        self._display = Display(enabled)
        self._tasks: dict[str, Any] = {}
        # Steps run one after another: a step's clock starts when the previous one last moved.
        self._last = self._display.clock()

    def __enter__(self) -> _PlanProgress:
        self._display.__enter__()
        return self

    def __call__(self, step: str, rows: int) -> None:
        if self._display.mode == "off":
            return
        if step in self._tasks:
            self._tasks[step].advance(rows)
        elif step in ("read", "tokenize"):  # the two streaming passes, side by side
            self._tasks[step] = self._display.task(
                f"plan: {step}", total=self.total_rows, done=rows, unit="row", since=self._last
            )
        else:  # a step reported once, when it is over: the passes before it are over too
            self._finish_all()
            self._tasks[step] = self._display.task(
                f"plan: {step}", total=rows, done=rows, unit="row", since=self._last
            )
        self._last = self._display.clock()

    def _finish_all(self) -> None:
        for task in self._tasks.values():
            if not task.finished:
                task.total = task.done  # the corpus may hold fewer rows than counted
                task.finish()

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self._finish_all()
        self._display.__exit__(exc_type, *exc)


def _count_rows(corpus: Any) -> int | None:
    """Row count when it is free (Parquet footers); None for JSONL/CSV."""
    if corpus.format != "parquet":
        return None
    import pyarrow.parquet as pq

    try:
        return sum(pq.read_metadata(p).num_rows for p in corpus.files)
    except Exception:
        return None


# --- the command ---------------------------------------------------------------------------------


def _load_tokenizer(model_path: Path) -> Any:
    """The engine's chat tokenizer of the model (it must have a chat template)."""
    from mipo import engine

    try:
        tokenizer = engine.ChatTokenizer.from_pretrained(model_path)
    except TemplateError as exc:
        raise TemplateError(
            f"the tokenizer of '{model_path}' has no usable chat template ({exc}); "
            "use an instruct/chat model"
        ) from exc
    if not tokenizer.chat_template:
        raise TemplateError(
            f"the tokenizer of '{model_path}' has no chat template, so prompts cannot be rendered "
            "as a conversation: use an instruct/chat model (or add chat_template.jinja)"
        )
    return tokenizer


def _refuse_input_output_overlap(files: list[Path], spec: str, out: Path) -> None:
    """An input file inside OUTDIR could be deleted by --overwrite, and an OUTDIR inside an input
    folder would be read back as input on a rerun: refuse both before anything is written."""
    target = out.resolve()
    for path in files:
        if target in path.resolve().parents:
            raise ConfigError(
                f"input file '{path}' is inside the output folder '{out}': choose an -o outside "
                "the input"
            )
    folder = Path(spec).expanduser()
    if folder.is_dir() and (target == folder.resolve() or folder.resolve() in target.parents):
        raise ConfigError(
            f"the output folder '{out}' is inside the input folder '{spec}', so a rerun would "
            "read mipo's outputs as input: choose an -o outside it"
        )


def refuse_linked_folder(folder: Path) -> None:
    """Writes stay inside OUTDIR: a subfolder replaced by a link to elsewhere is not followed."""
    if folder.is_symlink():
        raise OutputError(
            f"'{folder}' is a symbolic link (to '{os.readlink(folder)}'); mipo writes only inside "
            "the output folder: remove the link and rerun"
        )


def build_pairs(config: BuildPairsConfig) -> BuildPairsResult:
    """Run (or continue) the stages into ``config.out_dir``; see the module docstring."""
    from mipo.models import resolve_model

    out = Path(config.out_dir).expanduser()
    _refuse_unusable_output(out)
    if config.executor == "ray" and not config.plan_only:
        # A missing Ray is refused before the plan is built, not after it.
        from mipo.generate.executors import check_executor

        check_executor(config.executor)

    # Everything that can reject the input runs before the output folder is touched; the corpus
    # first, since reading its schema is instant and loading a model is not.
    corpus = open_corpus(config.input, config.columns)
    _refuse_input_output_overlap(corpus.files, config.input, out)
    model = resolve_model(
        config.model,
        trust_remote_code=config.trust_remote_code,
        allow_pickle=config.allow_pickle,
    )
    tokenizer = _load_tokenizer(model.path)
    gen = config.generation
    plan_config = PlanConfig(
        seed=config.seed,
        negatives=config.negatives,
        max_prompt_tokens=_effective_max_prompt_tokens(config, model.path, gen),
        dedup=config.dedup,
        near_dup_threshold=config.near_dup_threshold,
        user_constraint=config.user_constraint,
        batch_rows=config.plan_batch_rows,
    )
    record = run_record(config, model, stage_options(config, corpus, model, plan_config, gen))

    fresh = not out.exists() or not any(out.iterdir())
    old = None if fresh else read_json_record(out / RUN_FILE)
    changed = _stage_to_redo(out, config, record, fresh=fresh, old=old)

    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    shard_index, num_shards = config.shard
    locked = False
    try:
        with output_lock(out / f".mipo-build-shard-{shard_index}-of-{num_shards}.lock"):
            locked = True
            if old is None or changed is not None:
                _clear_stages_from("plan" if old is None else changed, out, record)
            return _run_stages(config, out, model, tokenizer, corpus, gen, plan_config, record)
    except BaseException:
        if locked and (created or fresh) and not (out / PLAN_FILE).exists():
            # Nothing usable was made (the plan failed before plan.parquet existed): leave the
            # folder as it was.
            if created:
                shutil.rmtree(out, ignore_errors=True)
            else:
                for child in out.iterdir():
                    _remove(out, (child.name,))
        raise


def _refuse_unusable_output(out: Path) -> None:
    """Refuse an output path that is a file or a broken symbolic link."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"output path '{out}' exists and is not a folder: choose another -o")
    if out.is_symlink() and not out.exists():
        raise OutputError(
            f"output path '{out}' is a broken symbolic link (to '{os.readlink(out)}'): create "
            "its target, remove the link, or choose another -o"
        )


def _stage_to_redo(
    out: Path,
    config: BuildPairsConfig,
    record: dict[str, Any],
    *,
    fresh: bool,
    old: dict[str, Any] | None,
) -> str | None:
    """The first stage whose options differ from the run already in ``out`` (None when none
    does); without ``overwrite``, a folder holding something else or a run with other options
    is refused."""
    if not fresh and old is None:
        leftovers = [p.name for p in out.iterdir() if not p.name.startswith(".")]
        if leftovers and not config.overwrite:
            raise OutputError(
                f"output folder '{out}' is not empty and holds no mipo run ({', '.join(sorted(leftovers)[:5])}"
                f"{', ...' if len(leftovers) > 5 else ''}): choose an empty or new folder, or pass "
                "--overwrite"
            )
    changed, differences = first_changed_stage(old, record)
    if changed is not None and not config.overwrite:
        shown = "; ".join(differences[:4]) + ("; ..." if len(differences) > 4 else "")
        raise OutputError(
            f"'{out}' holds a run with different {changed} options ({shown or 'changed'}): "
            "rerun with the same options to continue it, pass --overwrite to redo it from the "
            f"{changed} stage, or choose another -o"
        )
    return changed


def _clear_stages_from(start: str, out: Path, record: dict[str, Any]) -> None:
    """Remove the outputs of stage ``start`` and every later one, so they are redone."""
    for name in STAGES[STAGES.index(start) :]:  # type: ignore[arg-type]
        _remove(out, STAGE_OUTPUTS[name])
    if start == "plan":
        _remove(out, (STATS_FILE, RUN_FILE))
    else:  # the kept plan's record, with the new options of the redone stages
        write_json_atomic(record, out / RUN_FILE)


def _run_stages(
    config: BuildPairsConfig,
    out: Path,
    model: Any,
    tokenizer: Any,
    corpus: Any,
    gen: Any,
    plan_config: PlanConfig,
    record: dict[str, Any],
) -> BuildPairsResult:
    """Run the stages not yet done: plan, generate, pairs (each skipped when its output is
    there)."""
    from mipo.generate import load_results

    stats = read_json_record(out / STATS_FILE) or {}
    stats.setdefault(
        "run", {"input": str(config.input), "model": record["model"], "seed": config.seed}
    )
    stages = StageTimes(out, stats)

    # 1. plan
    if not (out / PLAN_FILE).is_file():
        _plan_stage(config, out, model, tokenizer, corpus, plan_config, record, stages)
    elif not (out / RUN_FILE).is_file():
        write_json_atomic(record, out / RUN_FILE)
    if config.plan_only:
        return BuildPairsResult(out, "plan", stats, f"plan written to {out / PLAN_FILE}")

    # 2. generate
    plan = read_plan(out / PLAN_FILE)
    gen_dir = out / GENERATIONS_DIR
    _generate_stage(config, out, model, tokenizer, gen, plan, stages)

    # 3. pairs (every shard tries; the last one to finish finds all chunks)
    try:
        responses = load_results(gen_dir, require_complete=True)
    except OutputError as exc:
        if config.shard[1] > 1:
            message = (
                f"shard {config.shard[0]}/{config.shard[1]} finished its chunks; {exc}. When every "
                f"shard is done, run `mipo merge {out}` (adding the other shards' folders if they "
                "ran elsewhere)"
            )
            return BuildPairsResult(out, "generate", stats, message)
        raise
    return pairs_stage(config, out, model, plan, responses, stats, stages)


def _plan_stage(
    config: BuildPairsConfig,
    out: Path,
    model: Any,
    tokenizer: Any,
    corpus: Any,
    plan_config: PlanConfig,
    record: dict[str, Any],
    stages: StageTimes,
) -> None:
    """Stage 1: write plan.parquet (locally, or over a Ray cluster) and its statistics."""
    stats = stages.stats
    stats.pop("plan", None)
    # run.json first: a crash right after the plan's rename must leave a folder a rerun
    # recognises as this run (not "a folder holding plan.parquet and no mipo run").
    write_json_atomic(record, out / RUN_FILE)
    with stages.run("plan") as rec:
        with _PlanProgress(config.progress, _count_rows(corpus)) as bar:
            if config.executor == "ray":
                from mipo.pairs.ray_plan import build_plan_ray

                # Same rows, keep mask and clusters as the local plan, with the dedup state
                # spread over the cluster (mipo.pairs.ray_plan), every negative strategy
                # included. The stage record says where the plan ran.
                plan_stats = build_plan_ray(
                    corpus,
                    tokenizer,
                    model.path,
                    out / PLAN_FILE,
                    plan_config,
                    partitions=config.num_workers,
                    address=config.ray_address,
                    progress=bar,
                )
                rec["plan_executor"] = "ray"
            else:
                plan_stats = build_plan(
                    corpus, tokenizer, out / PLAN_FILE, plan_config, progress=bar
                )
                rec["plan_executor"] = "local"
        rec["step_seconds"] = {k: round(v, 3) for k, v in plan_stats.step_seconds.items()}
        stats["plan"] = plan_stats.as_dict()


def _generate_stage(
    config: BuildPairsConfig,
    out: Path,
    model: Any,
    tokenizer: Any,
    gen: Any,
    plan: Any,
    stages: StageTimes,
) -> None:
    """Stage 2: this shard's chosen and rejected responses to the plan's requests, as chunk
    files under generations/, and their statistics."""
    from mipo.generate import run_generation

    requests = build_requests(
        plan,
        strategy=config.negatives,
        independent_negatives=config.independent_negatives,
        seed=config.seed,
        tokenizer=tokenizer,
    )
    gen_dir = out / GENERATIONS_DIR
    refuse_linked_folder(gen_dir)
    with stages.run("generate") as rec:
        # Either executor writes the same chunk files and manifest (so a run may switch
        # executor and resume); a Ray runtime lives only for this call unless the caller holds
        # one.
        mine = run_generation(
            requests,
            gen_dir,
            model=model,
            config=gen,
            executor=config.executor,
            shard=config.shard,
            overwrite=config.overwrite,
            progress=config.progress,
            num_workers=config.num_workers,
            address=config.ray_address,
        )
        rec["executor"] = config.executor
        rec["requests"] = requests.height
        rec["shard"] = f"{config.shard[0]}/{config.shard[1]}"
        rec["responses_this_shard"] = mine.height
    stages.stats["generate"] = _generation_stats(
        mine, requests.height, stages.stats["stages"]["generate"]
    )
    stages.save()


def _generation_stats(results: Any, num_requests: int, stage: dict[str, Any]) -> dict[str, Any]:
    """The generate stage's statistics for stats.json: requests, responses, new tokens, finish
    reasons, mean length, throughput and empty responses."""
    tokens = int(results["num_response_tokens"].sum()) if results.height else 0
    reasons = (
        {str(k): int(v) for k, v in results["finish_reason"].value_counts(sort=True).iter_rows()}
        if results.height
        else {}
    )
    seconds = stage.get("seconds") or 0.0
    return {
        "requests": num_requests,
        "responses": results.height,
        "new_tokens": tokens,
        "finish_reasons": reasons,
        "mean_response_tokens": round(tokens / results.height, 1) if results.height else None,
        "new_tokens_per_s_incl_resumed": round(tokens / seconds, 1) if seconds else None,
        "empty_responses": int((results["response"].str.strip_chars() == "").sum())
        if results.height
        else 0,
    }


def pairs_stage(
    config: BuildPairsConfig,
    out: Path,
    model: Any,
    plan: Any,
    responses: Any,
    stats: dict[str, Any],
    stages: StageTimes,
) -> BuildPairsResult:
    """Stage 3: pair each prompt's chosen and rejected responses, apply the filters, and write
    pairs.parquet with its statistics (nothing to do when the pairs are already built)."""
    if (out / PAIRS_FILE).is_file() and "pairs" in stats:
        return BuildPairsResult(out, "pairs", stats, f"pairs already built: {out / PAIRS_FILE}")
    filters = PairFilterConfig(
        keep_truncated=config.keep_truncated,
        score=config.score,
        min_margin=config.min_margin,
        drop_persona=config.drop_persona,
    )
    pair_stats = PairStats()
    with stages.run("pairs") as rec:
        pairs = assemble_pairs(
            plan,
            responses,
            strategy=config.negatives,
            independent_negatives=config.independent_negatives,
            seed=config.seed,
            stats=pair_stats,
        )
        pairs = filter_pairs(pairs, filters, model_path=model.path, stats=pair_stats, plan=plan)
        error, warnings = filter_verdict(pair_stats)
        if error is None:  # an empty pairs file would only fail the next stage
            write_parquet_atomic(pairs.drop("plan_index"), out / PAIRS_FILE)
        rec["pairs_written"] = pairs.height
    pair_stats.seconds = stats["stages"]["pairs"]["seconds"]
    stats["pairs"] = pair_stats.as_dict()
    if warnings:
        stats["pairs"]["warnings"] = warnings
    stages.save()
    if error is not None:
        raise CorpusError(
            f"{error}; no {PAIRS_FILE} written ({out / STATS_FILE} has the counts): rerun with "
            "that change and --overwrite (finished stages before it are kept)"
        )
    return BuildPairsResult(
        out, "pairs", stats, f"{pairs.height} pairs written to {out / PAIRS_FILE}", warnings
    )


# --- summary -------------------------------------------------------------------------------------


def summary_table(stats: dict[str, Any]) -> Any:
    """A rich table of what the run did (rows in, duplicates, drops, pairs, time per stage)."""
    from rich.table import Table

    table = Table(title="mipo build-pairs", show_header=True, header_style="bold")
    table.add_column("step")
    table.add_column("count", justify="right")
    plan = stats.get("plan", {})
    gen = stats.get("generate", {})
    pairs = stats.get("pairs", {})
    stages = stats.get("stages", {})

    def row(label: str, value: Any) -> None:
        if value is not None:
            table.add_row(label, f"{value:,}" if isinstance(value, int) else str(value))

    if plan:
        row("rows in", plan.get("rows_in"))
        row("null/empty prompts dropped", plan.get("empty_dropped"))
        row("exact duplicates removed", plan.get("exact_duplicates"))
        row("near duplicates removed", plan.get("near_duplicates"))
        limit = plan.get("max_prompt_tokens")
        row(
            f"over {limit} prompt tokens dropped" if limit else "over-length dropped",
            plan.get("over_length"),
        )
        row("prompts planned", plan.get("prompts_planned"))
        if plan.get("users") is not None:
            row("users", plan.get("users"))
        if plan.get("question_clusters") is not None:
            row("question clusters", plan.get("question_clusters"))
            row("context swaps reusing another user's response", plan.get("swaps_reused"))
            row("context swaps generated", plan.get("swaps_generated"))
            for key, label in (
                ("swaps_no_context", "prompts without context (no context swap)"),
                ("swaps_no_donor", "prompts with no other user's context"),
                ("swaps_over_length", "generated swaps over the prompt limit"),
            ):
                if plan.get(key):
                    row(label, plan[key])
    if gen:
        row("generation requests", gen.get("requests"))
        row("responses (this run's shard)", gen.get("responses"))
        row("new tokens", gen.get("new_tokens"))
    if pairs:
        for kind, count in pairs.get("pairs_built", {}).items():
            row(f"pairs built ({kind})", count)
        if pairs.get("no_context_skipped"):
            row("prompts without context (no context-drop pair)", pairs["no_context_skipped"])
        for name, count in pairs.get("filtered", {}).items():
            row(f"dropped: {name.replace('_', ' ')}", count)
        row("pairs written", pairs.get("pairs_written"))
    for name in STAGES:
        if name in stages:
            info = stages[name]
            seconds = info.get("seconds_total", info["seconds"])
            row(f"time {name}", f"{seconds:.1f} s (peak RSS {info['peak_rss_mb']:.0f} MB)")
    return table
