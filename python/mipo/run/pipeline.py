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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import polars as pl

from mipo import __version__
from mipo.corpus import ColumnOptions, Corpus, open_corpus, resolve_input_files
from mipo.errors import ConfigError, CorpusError, OutputError
from mipo.evaluate.config import EvalConfig
from mipo.io import read_json_record, replace_dir, write_json_atomic
from mipo.run.report import EVAL_NAME, write_run_report
from mipo.run.split import DATA_DIR, compute_split, write_split
from mipo.train import TrainConfig

__all__ = [
    "AUTO_NEGATIVES",
    "DEMO_SETTINGS",
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
# Options that may change between a run and its continuation.
# (`reuse_pairs` only saves work: build-pairs checks that the copied pairs are the ones this run
# would build, so the outputs do not depend on it.)
_FREE_OPTIONS = frozenset(
    {"out_dir", "rounds", "overwrite", "progress", "reuse_pairs", "eval_cache"}
)

AUTO_NEGATIVES = "auto"
"""``RunConfig.negatives`` default: chosen from the corpus by :func:`resolve_negatives`."""

DEMO_SETTINGS: dict[str, Any] = {
    "max_prompts": 200,
    "eval_fraction": 0.25,
    "max_eval_prompts": 64,
    "negatives": "context-swap",
    "max_new_tokens": 64,
    "keep_truncated": True,
    "drop_persona": True,
    "eval_k": 8,
    "judge": None,
    "n_bootstrap": 2000,
}
"""What ``--demo`` sets (explicit options win): sized for 2 CPU cores with the built-in
SmolLM2-135M (7.7 minutes measured where the CPU has AMX, so bf16; 45 without, in fp32, before
the CPU malloc settings). Negatives are the same question with another user's context
(``context-swap``: what isolates personalization); held-out prompts are whole users, and the
summary's headline is their same-question PMI gain. Responses are cut at 64 tokens, so truncated
pairs are kept (otherwise nearly all would be dropped). Pairs whose chosen answer speaks as the
user are dropped (``drop_persona``): in the sweep (benches/RESULTS.md, *Mini reproduction:
prompt formats*) that kept persona adoption at the base model's level (-0.02 [-0.20, 0.17])
while the same-question gain held (+23.9 [13.7, 32.9] nats), but fluency still fell (-0.39
nats/token), so the demo misses that criterion, and its summary says so."""

DEMO_TRAIN: dict[str, Any] = {
    "lora": True,
    "batch_size": 8,
    "max_length": 384,
    "learning_rate": 5e-4,
    "epochs": 2.0,
}
"""The training options ``--demo`` sets (explicit options win)."""


@dataclass
class RunConfig:
    """Options of ``mipo run`` (see ``mipo run --help``).

    >>> RunConfig("corpus.jsonl", "out", eval_fraction=1.5)
    Traceback (most recent call last):
    mipo.errors.ConfigError: eval_fraction (--eval-fraction) must be in (0, 1), got 1.5
    """

    corpus: str
    """Prompt corpus (Parquet, JSONL or CSV file, folder or glob), as ``mipo build-pairs`` reads."""
    out_dir: str | Path
    """Output folder (created; a rerun with the same options continues in it)."""
    rounds: int = 1
    """Rounds of build-pairs -> train -> eval; round r generates with and trains from round r-1's
    model (iterated self-improvement; the paper runs one round)."""
    eval_fraction: float = 0.2
    """Share of the prompts held out for evaluation: whole users when the corpus has a user
    column, else rows; drawn with ``seed``. Ignored with ``eval_data``."""
    eval_data: str | None = None
    """A separate file of held-out prompts; the whole corpus is then used for training."""
    max_prompts: int | None = None
    """Train on at most this many prompts (a seeded sample of the training side); None: all."""
    max_eval_prompts: int | None = None
    """Evaluate on at most this many held-out prompts (a seeded sample); None: all."""
    model: str | None = None
    """Base model (hub id, folder, .gguf); None: the built-in default (SmolLM2-135M-Instruct)."""
    seed: int = 0
    """Seed of the split, the negatives (plus the round number), generation and evaluation."""
    columns: ColumnOptions = field(default_factory=ColumnOptions)
    """Corpus column names; None fields are detected."""
    negatives: str = "auto"
    """Negative strategies of build-pairs: ``random``, ``context-drop``, ``context-swap`` or a
    comma-separated list of them. ``auto``: ``context-swap`` when the corpus has user contexts
    (a context column, or system messages, that is not blank everywhere), else ``random``.
    Measured on the built-in model (benches/RESULTS.md, mini reproduction), random negatives
    never raised the same-question PMI (personalization); context-swap did."""
    independent_negatives: bool = False
    """Sample a separate response for each random negative instead of reusing one."""
    backend: str = "auto"
    """Generation backend: ``auto``, ``vllm`` or ``hf``."""
    max_new_tokens: int | None = None
    """Most new tokens per generated response (pairs and evaluation); None: 512 for pairs and
    256 for evaluation."""
    temperature: float | None = None
    """Sampling temperature (pairs and evaluation); None: 0.1 (paper)."""
    top_p: float | None = None
    """Nucleus sampling mass (pairs and evaluation); None: 0.9 (paper)."""
    generation_batch_size: int | None = None
    """Prompts per generation batch for the pairs; None: the generation default (32)."""
    keep_truncated: bool = False
    """Keep pairs whose responses hit ``max_new_tokens`` (needed with short limits)."""
    drop_persona: bool = False
    """Drop pairs whose chosen answer speaks as the user (``mipo build-pairs --drop-persona``)."""
    dedup: bool = True
    """Remove exact and near-duplicate training prompts before pairing."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Training options; ``model``, ``resume`` and ``overwrite`` are set by the run itself."""
    eval_k: int = EvalConfig.k
    """Contrast prompts per held-out prompt (per contrast set) for the PMI's estimate of
    log π_ref(y)."""
    eval_batch_size: int = EvalConfig.batch_size
    """Rows per forward pass when generating and scoring the evaluation."""
    judge: str | None = None
    """Judge model for the personalization win rate: a model spec, ``auto`` (the base model),
    or None / ``none`` (the default) to skip it."""
    extra_eval_data: tuple[str, ...] = ()
    """Further ``mipo eval`` files evaluated every round (``choice:``/``math:`` files)."""
    math_max_new_tokens: int = 256
    """Most tokens per generated solution of a math file in ``extra_eval_data`` (shorter than
    ``mipo eval``'s device-dependent default, to keep every round quick)."""
    n_bootstrap: int = EvalConfig.n_bootstrap
    """Bootstrap resamples of every confidence interval."""
    overwrite: bool = False
    """Discard the outputs of a run with other options in ``out_dir`` and start over."""
    progress: bool = True
    """Show progress bars of the stages (stderr)."""
    trust_remote_code: bool = False
    """Allow models that ship their own Python code."""
    reuse_pairs: str | None = None
    """The ``round-1/pairs`` folder of a finished run with the same corpus, split, base model and
    generation options: copied instead of generated (build-pairs then checks that they are the
    pairs this run would build, else the run stops), so a sweep over training options generates
    once."""

    vllm_options: dict[str, Any] = field(default_factory=dict)
    """vLLM engine settings for pairs and evaluation with the vllm backend (see
    :class:`~mipo.evaluate.EvalConfig` ``vllm_options``)."""
    eval_cache: str | None = None
    """Folder of per-model evaluation results shared across runs (a sweep scores its base model
    once); None: ``OUTDIR/.eval-cache`` (shared by the rounds of this run). Results do not
    depend on it."""

    def __post_init__(self) -> None:
        from mipo.pairs.negatives import parse_strategy

        def bad(name: str, value: Any, rule: str) -> ConfigError:
            flag = "--" + name.replace("_", "-")
            return ConfigError(f"{name} ({flag}) must be {rule}, got {value!r}")

        if not isinstance(self.rounds, int) or isinstance(self.rounds, bool) or self.rounds < 1:
            raise bad("rounds", self.rounds, "an integer >= 1")
        if not (isinstance(self.eval_fraction, int | float) and 0 < self.eval_fraction < 1):
            raise bad("eval_fraction", self.eval_fraction, "in (0, 1)")
        for name in ("max_prompts", "max_eval_prompts"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 2):
                raise bad(name, value, "an integer >= 2, or unset")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise bad("seed", self.seed, "an integer >= 0")
        if self.negatives != AUTO_NEGATIVES:
            self.negatives = parse_strategy(self.negatives)
        for name in ("eval_k", "eval_batch_size", "n_bootstrap", "math_max_new_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise bad(name, value, "an integer >= 1")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise bad("max_new_tokens", self.max_new_tokens, "an integer >= 1")
        if self.judge is not None and self.judge.strip().lower() == "none":
            self.judge = None
        if self.train.model is not None:
            raise ConfigError(
                "train.model is set by the run (round 1 trains the base model, round r the "
                "model of round r-1): pass the base model as --model / RunConfig.model"
            )
        if self.train.resume or self.train.overwrite:
            raise ConfigError(
                "train.resume/overwrite are managed by the run (a rerun resumes): drop them"
            )
        self.extra_eval_data = tuple(self.extra_eval_data)
        if (
            self.reuse_pairs is not None
            and not (Path(self.reuse_pairs) / "pairs.parquet").is_file()
        ):
            raise ConfigError(
                f"reuse_pairs must be the pairs folder of a finished run (with pairs.parquet), "
                f"got {self.reuse_pairs!r}"
            )
        # Fails now, naming the option, rather than after the split and the first round.
        validate = "random" if self.negatives == AUTO_NEGATIVES else None
        self._build_config("corpus", "out", None, round_number=1, negatives=validate)

    def _build_config(
        self,
        input_path: str,
        out_dir: str | Path,
        model: str | None,
        *,
        round_number: int,
        negatives: str | None = None,
    ) -> Any:
        from mipo.pairs.build import BuildPairsConfig

        negatives = negatives or self.negatives
        if negatives == AUTO_NEGATIVES:
            raise RuntimeError("negatives 'auto' must be resolved (resolve_negatives) first")
        return BuildPairsConfig(
            input=input_path,
            out_dir=out_dir,
            model=model,
            negatives=negatives,  # type: ignore[arg-type]
            independent_negatives=self.independent_negatives,
            seed=self.seed + round_number - 1,  # fresh negatives and samples each round
            backend=self.backend,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            batch_size=self.generation_batch_size,
            keep_truncated=self.keep_truncated,
            drop_persona=self.drop_persona,
            dedup=self.dedup,
            trust_remote_code=self.trust_remote_code,
            progress=self.progress,
            **{
                k: (tuple(v.items()) if k == "vllm_args" else v)
                for k, v in self.vllm_options.items()
            },
        )

    def options_record(self) -> dict[str, Any]:
        """The options the outputs depend on, as JSON-ready values (for ``run.json``)."""
        record = json.loads(json.dumps(asdict(self), default=str))
        return {k: v for k, v in record.items() if k not in _FREE_OPTIONS}


def resolve_negatives(config: RunConfig, corpus: Corpus) -> RunConfig:
    """``config`` with ``negatives="auto"`` resolved for ``corpus``: ``context-swap`` when some
    prompt has a user context, else ``random``."""
    has_context = corpus.collect(
        corpus.standardized(["has_context"]).select(pl.col("has_context").any())
    ).item()
    return replace(config, negatives="context-swap" if has_context else "random")


def demo_config(out_dir: str | Path, **overrides: Any) -> RunConfig:
    """The ``--demo`` run: the bundled sample corpus, the built-in model, LoRA, small sizes.

    ``overrides`` are :class:`RunConfig` fields; ``train`` overrides may be given as a dict of
    :class:`~mipo.train.TrainConfig` fields, merged over :data:`DEMO_TRAIN`.

    >>> demo_config("demo-out").train.lora
    True
    """
    from mipo.synth import SAMPLE_CORPUS_PATH

    train_overrides = overrides.pop("train", None) or {}
    if isinstance(train_overrides, TrainConfig):
        train_config = train_overrides
    else:
        train_config = TrainConfig(**{**DEMO_TRAIN, **train_overrides})
    options: dict[str, Any] = {"corpus": str(SAMPLE_CORPUS_PATH), **DEMO_SETTINGS, **overrides}
    return RunConfig(out_dir=out_dir, train=train_config, **options)


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
    if not options.get("vllm_options"):  # unset: hashed as before the option existed
        options.pop("vllm_options", None)
    # Options added later, at their defaults: hashed as before they existed, so a finished run
    # still continues (or is read back) under the version that added them.
    if not options.get("drop_persona"):
        options.pop("drop_persona", None)
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

    build = config._build_config(
        str(out / DATA_DIR / "train.parquet"), pairs_dir, str(generator), round_number=number
    )
    result = build_pairs(build)
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
            "dropped them); with short responses pass --keep-truncated or raise --max-new-tokens"
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
    judge = config.judge
    if judge == "auto":
        judge = str(base_path)
    evaluation = EvalConfig(
        model=str(train_dir),
        data=[f"pmi:{out / DATA_DIR / EVAL_NAME}.parquet", *config.extra_eval_data],
        reference=str(base_path),
        compare=str(base_path),
        judge=judge,
        k=config.eval_k,
        seed=config.seed,
        context_format=config.columns.context_format,
        # Unset options take the evaluation's own defaults (the pairs take the generation's).
        max_new_tokens=config.max_new_tokens or EvalConfig.max_new_tokens,
        math_max_new_tokens=config.math_max_new_tokens,
        temperature=EvalConfig.temperature if config.temperature is None else config.temperature,
        top_p=EvalConfig.top_p if config.top_p is None else config.top_p,
        batch_size=config.eval_batch_size,
        n_bootstrap=config.n_bootstrap,
        backend=config.backend,
        overwrite=True,  # no metrics.json: an interrupted evaluation, redo it
        trust_remote_code=config.trust_remote_code,
        cache_dir=config.eval_cache or str(out / ".eval-cache"),
        vllm_options=config.vllm_options,
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
    >>> run_pipeline(RunConfig("corpus.jsonl", "out", max_new_tokens=64))  # doctest: +SKIP
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
