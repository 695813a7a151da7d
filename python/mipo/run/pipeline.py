"""``mipo run``: build-pairs -> train -> eval in one command, for one or several rounds.

Layout of an output folder::

    OUTDIR/
      run.json              every option (hashed), the base model, seconds per stage
      data/train.parquet    the training prompts (rows of the corpus, as they were)
      data/eval.parquet     the held-out prompts: whole users, never trained on
      data/split.json       what the split did (written last: the split's completion marker)
      round-1/pairs/        ``mipo build-pairs`` on train.parquet with the base model
      round-1/model/        ``mipo train`` from the base model (model/, train_config.json, log)
      round-1/eval/         ``mipo eval``: round 1's model vs the base on eval.parquet
      round-2/...           pairs from round 1's model, trained from it (round 1 is its reference)
      report.md report.html metrics.json rounds.png

Every round is evaluated on the same held-out prompts, with the same seeds, with PMI scored under
the *base* model, so the numbers of all rounds are comparable; the difference to the previous
round is the paired bootstrap of the two rounds' per-prompt values. Each stage writes its output
atomically and is skipped when a rerun finds it finished, so rerunning the same command continues
an interrupted run, and rerunning with a larger ``--rounds`` adds rounds.

>>> # builds pairs, trains and evaluates a model (minutes): see tests/test_run.py
>>> from mipo.run import RunConfig, run_pipeline  # doctest: +SKIP
>>> result = run_pipeline(RunConfig("corpus.jsonl", "out", rounds=2))  # doctest: +SKIP
>>> result.report_md  # doctest: +SKIP
PosixPath('out/report.md')
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import polars as pl

from mipo import __version__
from mipo.configfile import to_mapping
from mipo.corpus import Corpus, open_corpus, resolve_input_files
from mipo.errors import CorpusError, OutputError
from mipo.io import read_json_record, replace_dir, write_json_atomic
from mipo.run.config import (
    AUTO_NEGATIVES,
    DEMO_SETTINGS,
    DEMO_TRAIN,
    RunConfig,
    demo_config,
)
from mipo.run.report import EVAL_NAME, write_run_report
from mipo.run.split import DATA_DIR, compute_split, write_split

__all__ = [
    "AUTO_NEGATIVES",
    "DEMO_SETTINGS",
    "DEMO_TRAIN",
    "RunConfig",
    "RunResult",
    "demo_config",
    "resolve_negatives",
    "run_pipeline",
]

RUN_FILE = "run.json"
# Everything `mipo run` writes at the top of OUTDIR (round-* folders come on top of these).
_TOP_OUTPUTS = (
    RUN_FILE,
    DATA_DIR,
    "report.md",
    "report.html",
    "metrics.json",
    "rounds.png",
)


def resolve_negatives(config: RunConfig, corpus: Corpus) -> RunConfig:
    """``config`` with ``negatives="auto"`` resolved for ``corpus``: ``context-swap`` when some
    prompt has a user context, else ``random``."""
    has_context = corpus.collect(
        corpus.standardized(["has_context"]).select(pl.col("has_context").any())
    ).item()
    return replace(config, negatives="context-swap" if has_context else "random")


@dataclass(frozen=True)
class RunResult:
    """What a run wrote: the report, the metrics and each round's folders."""

    out_dir: Path
    report_md: Path
    report_html: Path
    metrics_json: Path
    metrics: dict[str, Any]


# --- bookkeeping ---------------------------------------------------------------------------------


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _input_stamp(spec: str | None) -> list[dict[str, Any]] | None:
    if spec is None:
        return None
    files, _ = resolve_input_files(spec)
    return [{"name": p.name, "size": p.stat().st_size} for p in files]


def _open_run(config: RunConfig, out: Path, base: Any) -> dict[str, Any]:
    """Check OUTDIR against the options, start over with ``overwrite``; return ``run.json``."""
    options = config.options_record()
    options["inputs"] = {
        "corpus": _input_stamp(config.corpus),
        "eval_data": _input_stamp(config.eval_data),
    }
    options["base_fingerprint"] = base.fingerprint
    record = {
        "mipo_version": __version__,
        "command": "run",
        "base_model": {"name": base.name, "path": str(base.path), "fingerprint": base.fingerprint},
        "options": options,
        "options_hash": _hash(options),
        # The whole resolved config in its own schema: `mipo run --config run.json` repeats it.
        "config": to_mapping(config),
        "stage_seconds": {},
    }
    if out.exists() and not out.is_dir():
        raise OutputError(f"output path '{out}' exists and is not a folder: choose another -o")
    old: dict[str, Any] | None = None
    if out.is_dir() and any(out.iterdir()):
        try:
            old = read_json_record(out / RUN_FILE, what="mipo run record")
        except OutputError:
            if not config.overwrite:
                raise
            old = None  # --overwrite starts over, whatever the old record holds
        if old is None and not config.overwrite:
            raise OutputError(
                f"output folder '{out}' is not empty and holds no mipo run: choose an empty or "
                "new folder, or pass --overwrite"
            )
        if old is not None and old.get("options_hash") != record["options_hash"]:
            if not config.overwrite:
                before = old.get("options", {})
                changed = [
                    f"{k}: {before.get(k)!r} -> {options.get(k)!r}"
                    for k in sorted(set(before) | set(options))
                    if before.get(k) != options.get(k)
                ]
                shown = "; ".join(changed[:3]) + ("; ..." if len(changed) > 3 else "")
                raise OutputError(
                    f"'{out}' holds a run with other options ({shown}): rerun with the same "
                    "options to continue it (only --rounds may change), pass --overwrite to start "
                    "over, or choose another -o"
                )
            old = None
        if old is None:  # --overwrite: remove what a run writes, nothing else
            for name in _TOP_OUTPUTS:
                _remove(out / name)
            for folder in out.glob("round-*"):
                _remove(folder)
    if old is not None:
        record["stage_seconds"] = old.get("stage_seconds", {})
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(record, out / RUN_FILE)
    return record


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


class _Clock:
    """Seconds per stage, accumulated over interrupted and resumed runs, saved in run.json."""

    def __init__(self, out: Path, record: dict[str, Any]) -> None:
        self.out = out
        self.record = record

    def time(self, name: str, work: Callable[..., Any], *args: Any) -> Any:
        started = time.perf_counter()
        value = work(*args)
        seconds = time.perf_counter() - started
        times = self.record["stage_seconds"]
        times[name] = round(times.get(name, 0.0) + seconds, 3)
        write_json_atomic(self.record, self.out / RUN_FILE)
        return value


# --- one round -----------------------------------------------------------------------------------


def _round_dir(out: Path, number: int) -> Path:
    return out / f"round-{number}"


def _train_finished(train_dir: Path) -> bool:
    # A corrupt record is an error, not "unfinished": retraining would silently replace a model.
    record = read_json_record(
        train_dir / "train_config.json",
        what="training record",
        fix=f"delete the folder {train_dir} to train this round again, or rerun with --overwrite",
    )
    return record is not None and record.get("status") == "complete"


def _merge_adapter(train_dir: Path, trust_remote_code: bool) -> Path:
    """Base + LoRA adapter as a plain model in ``train_dir/merged`` (build-pairs and the next
    round's training load full models only)."""
    from mipo.models import merge_adapter

    return merge_adapter(
        train_dir / "model", train_dir / "merged", trust_remote_code=trust_remote_code
    )


def _check_built(
    config: RunConfig, out: Path, number: int, generator: Path, pairs_dir: Path
) -> None:
    """``build_pairs`` into ``pairs_dir`` (a no-op check on a finished folder of the same
    options)."""
    from mipo.pairs.build import build_pairs

    build = config.build_config(
        str(out / DATA_DIR / "train.parquet"), pairs_dir, str(generator), round_number=number
    )
    try:
        result = build_pairs(build)
    except CorpusError as e:  # e.g. no pair left: which filter, and the option that changes it
        raise CorpusError(f"round {number}: {e}") from None
    if result.completed != "pairs" or not (pairs_dir / "pairs.parquet").is_file():
        raise OutputError(f"round {number}: build-pairs stopped early: {result.message}")


def _adopt_input_stamp(pairs_dir: Path, train_file: Path) -> None:
    """Give ``train_file`` the modification time recorded by the copied pairs when it is
    byte-identical to the file they were built from: build-pairs compares input files by name,
    size and mtime, and this run wrote its own copy of the same split later."""
    try:
        # Tolerated on purpose: build-pairs reads this run.json next and reports what is wrong.
        record = read_json_record(pairs_dir / "run.json") or {}
        source = Path(record["input"])
        (stamp,) = record["stages"]["plan"]["options"]["input_files"]
        recorded = int(stamp["mtime_ns"])
    except (OutputError, KeyError, TypeError, ValueError):
        return  # nothing to adopt: build-pairs decides
    if source.is_file() and source.read_bytes() == train_file.read_bytes():
        os.utime(train_file, ns=(time.time_ns(), recorded))


def _build_round_pairs(config: RunConfig, out: Path, number: int, generator: Path) -> Path:
    pairs_dir = _round_dir(out, number) / "pairs"
    pairs = pairs_dir / "pairs.parquet"
    if number == 1 and config.reuse_pairs is not None and not pairs.is_file():
        # Copy beside the target and let build-pairs check the copy (it only compares options
        # when they match, and refuses when they differ) before it takes the target's place,
        # so a mismatch leaves nothing behind that a rerun would take for finished pairs.
        tmp = pairs_dir.with_name(".pairs.reused.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(
            Path(config.reuse_pairs),  # type: ignore[arg-type]
            tmp,
            ignore=shutil.ignore_patterns(".*lock*", "*.tmp*", "*.stale-*"),
        )
        try:
            _adopt_input_stamp(tmp, out / DATA_DIR / "train.parquet")
            _check_built(config, out, number, generator, tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        replace_dir(tmp, pairs_dir)  # replaces an interrupted earlier attempt
    if not pairs.is_file():
        _check_built(config, out, number, generator, pairs_dir)
    count = pl.scan_parquet(pairs).select(pl.len()).collect().item()
    if count == 0:
        raise CorpusError(
            f"round {number} built no pairs ({pairs_dir / 'stats.json'} says which filter "
            "dropped them); with short responses pass --keep-truncated or raise "
            "--generation-max-new-tokens"
        )
    return pairs


def _train_round(config: RunConfig, out: Path, number: int, generator: Path, pairs: Path) -> Path:
    from mipo.train import train

    train_dir = _round_dir(out, number) / "model"
    if _train_finished(train_dir):
        return train_dir
    checkpoints = train_dir / "checkpoints"
    resume = checkpoints.is_dir() and any(checkpoints.glob("checkpoint-*"))
    options = replace(
        config.train,
        model=str(generator),
        resume=resume,
        overwrite=not resume and train_dir.exists(),
    )
    # build-pairs records the generator's folder in run.json, so `train` sees that it trains
    # the model that generated the pairs (both stages get `generator`) and stays silent.
    train(pairs, train_dir, options, progress=config.progress)
    return train_dir


def _evaluate_round(
    config: RunConfig, out: Path, number: int, train_dir: Path, base_path: Path
) -> dict[str, Any]:
    from mipo.evaluate import run_eval
    from mipo.progress import off

    eval_dir = _round_dir(out, number) / "eval"
    finished = read_json_record(
        eval_dir / "metrics.json",
        what="evaluation metrics",
        fix=f"delete the folder {eval_dir} to evaluate this round again",
    )
    if finished is not None:
        return finished
    evaluation = config.eval_config(
        str(train_dir),
        [f"pmi:{out / DATA_DIR / EVAL_NAME}.parquet", *config.extra_eval_data],
        str(base_path),
        overwrite=True,  # no metrics.json: an interrupted evaluation, redo it
        cache_dir=config.eval_cache or str(out / ".eval-cache"),
    )
    with off(not config.progress):
        return run_eval(evaluation, eval_dir).metrics


def _run_round(
    config: RunConfig,
    out: Path,
    number: int,
    generator: Path,
    base_path: Path,
    clock: _Clock,
    say: Callable[[str], None],
) -> Path:
    """Pairs, training, evaluation (and the merge the next round needs) of round ``number``,
    each skipped when finished; returns the model the next round starts from."""
    folder = _round_dir(out, number)
    prefix = f"round {number}/{config.rounds}"

    def stage(name: str, done: bool, doing: str, work: Callable[..., Any], *args: Any) -> Any:
        say(f"{prefix}: {name} already done, skipping" if done else f"{prefix}: {doing}")
        return clock.time(f"round-{number}/{name}", work, *args)

    reusing = number == 1 and config.reuse_pairs is not None
    pairs = stage(
        "pairs",
        (folder / "pairs" / "pairs.parquet").is_file(),
        f"reusing the pairs of {config.reuse_pairs} (checked against this run's options)"
        if reusing
        else f"building pairs with {generator}",
        _build_round_pairs,
        *(config, out, number, generator),
    )
    method = "LoRA" if config.train.lora else "full fine-tuning"
    train_dir = stage(
        "train",
        _train_finished(folder / "model"),
        f"training from {generator} ({method})",
        _train_round,
        *(config, out, number, generator, pairs),
    )
    stage(
        "eval",
        (folder / "eval" / "metrics.json").is_file(),
        "evaluating against the base model on the held-out prompts",
        _evaluate_round,
        *(config, out, number, train_dir, base_path),
    )
    if number == config.rounds:
        return generator
    if not config.train.lora:
        return Path(train_dir) / "model"
    return Path(
        stage(
            "merge",
            (train_dir / "merged" / "config.json").is_file(),
            "merging the LoRA adapter into a full model for the next round",
            _merge_adapter,
            *(train_dir, config.trust_remote_code),
        )
    )


# --- the pipeline --------------------------------------------------------------------------------


def run_pipeline(config: RunConfig, *, log: Callable[[str], None] | None = None) -> RunResult:
    """Run (or continue) the split and every round into ``config.out_dir``; write the report.

    ``log`` receives one line as each stage starts (the CLI prints them to stderr).

    >>> # builds pairs, trains and evaluates a model (minutes): see tests/test_run.py
    >>> run_pipeline(RunConfig("corpus.jsonl", "out", rounds=2))  # doctest: +SKIP
    """
    from mipo.models import resolve_model

    say = log or (lambda _line: None)
    out = Path(config.out_dir).expanduser()
    # Reject bad input before the output folder is touched.
    corpus = open_corpus(config.corpus, config.columns)
    if config.negatives == AUTO_NEGATIVES:
        config = resolve_negatives(config, corpus)
        say(f"negatives: {config.negatives} (auto; pass --negatives to choose)")
    if config.eval_data is not None:
        open_corpus(config.eval_data, config.columns)
    for spec in config.extra_eval_data:
        from mipo.evaluate.datasets import load_dataset

        load_dataset(spec, limit=2)
    split = compute_split(config)
    base = resolve_model(config.model, trust_remote_code=config.trust_remote_code)
    record = _open_run(config, out, base)
    clock = _Clock(out, record)
    started = time.perf_counter()

    say(f"split: holding out prompts for evaluation -> {out / DATA_DIR}")
    info = clock.time("split", write_split, split, out)
    say(
        f"split: {info['train_prompts']} training prompts, {info['eval_prompts']} held out "
        f"(by {info['held_out_by']})"
    )
    generator = Path(base.path)
    for number in range(1, config.rounds + 1):
        generator = _run_round(config, out, number, generator, Path(base.path), clock, say)

    say("writing the report")
    metrics_path, md, html = write_run_report(
        out, config, record, info, base, time.perf_counter() - started
    )
    metrics = read_json_record(metrics_path, what="run metrics") or {}
    return RunResult(out, md, html, metrics_path, metrics)
