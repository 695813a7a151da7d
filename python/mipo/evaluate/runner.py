"""``mipo eval``: run every evaluation on the given data and write the report.

For each model (the one evaluated and, with ``compare``, a baseline), on the same prompts with
the same per-row seeds:

1. **PMI** (pmi files): generate a response y to each held-out prompt x and score it under the
   reference model: PMI = log π_ref(y|x) − log mean_{j<=k} π_ref(y|x'_j) (log-mean-exp), for three
   contrast sets x': (a) *random* other prompts, (b) *same question, other users* — the question
   asked with k other users' contexts, which isolates personalization — and (c) *context drop*,
   the question without its context. The InfoNCE-style bounded estimate and the mean of logs sit
   beside it; every interval is a cluster bootstrap over users (and questions, when questions
   repeat), and model − baseline is paired by prompt. Beside the gain: the share of response
   3-grams copied from the context, the share of its content words found in the context,
   response length and log π_ref(y|x) per token, with a check of whether any of them explains
   the gain (:mod:`mipo.evaluate.controls`).
2. **Multiple choice** (choice files): accuracy by summed log-likelihood of each option (and by
   per-token mean, ``accuracy_norm``).
3. **Math** (math files): exact match of the extracted final number, after a k-shot chain of
   thought prompt (GSM8K-style: k worked examples as earlier user/assistant turns; 8 by default
   as in the paper, 0 = zero-shot).
4. **Judged win rate** (pmi files with a user context, with ``compare`` and ``judge``): a judge
   model scores both responses 1-5 against the user's context; win rate with ties as wins and
   as half.

The reference defaults to the model the evaluated model was trained from (``train_config.json``
of a ``mipo train`` output), else the baseline, else the model itself.

The headline personalization result — the paired same-question PMI gain — is also written to
``metrics.json`` under ``personalization`` (see docs/train-eval.md).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from mipo import __version__
from mipo.errors import ConfigError, ModelError, OutputError
from mipo.evaluate.report import finite_json
from mipo.io import read_json_record, write_parquet_atomic, write_text_atomic

if TYPE_CHECKING:
    from mipo.evaluate.datasets import EvalDataset

__all__ = ["EvalConfig", "EvalResult", "math_messages", "run_eval"]

logger = logging.getLogger(__name__)

MATH_INSTRUCTION = (
    "Solve the problem step by step. End your answer with a final line of the form '#### <number>'."
)


@dataclass
class EvalConfig:
    """Options of ``mipo eval``.

    >>> EvalConfig(model="m", data=["d.jsonl"], k=0)
    Traceback (most recent call last):
    mipo.errors.ConfigError: k must be an integer >= 1, got 0
    """

    model: str
    """Model to evaluate: a folder, a ``mipo train`` output directory, a LoRA adapter, a name."""
    data: list[str]
    """Evaluation files, each ``[kind:]path`` with kind ``pmi``, ``choice`` or ``math``."""
    reference: str | None = None
    """Reference model for PMI. ``None``: the model ``model`` was trained from (its
    ``train_config.json``), else ``compare``, else ``model`` itself."""
    compare: str | None = None
    """Baseline model evaluated on the same prompts and seeds (typically the base model)."""
    judge: str | None = None
    """Judge model for the personalization win rate (needs ``compare``); ``None`` or ``"none"``
    skips it (the default: a judge must be asked for, and one too small to tell responses apart
    ties every pair)."""
    judge_url: str | None = None
    """An OpenAI-compatible API base (``http://host:port/v1``: ``vllm serve``, a hosted
    endpoint) whose ``judge_model`` rates every response against each stated preference of the
    user (:mod:`mipo.evaluate.judge_server`); the key comes from ``$MIPO_JUDGE_API_KEY`` (else
    ``$OPENAI_API_KEY``). Exclusive with ``judge``."""
    judge_model: str | None = None
    """The served judge model's name (with ``judge_url``)."""
    judge_concurrency: int = 8
    """Judge requests in flight at once (with ``judge_url``)."""
    judge_timeout_s: float = 60.0
    """Seconds a judge request may take before it is retried (with ``judge_url``)."""
    k: int = 8
    """Contrast prompts per prompt (per contrast set) for the PMI's estimate of log π_ref(y)."""
    seed: int = 0
    """Seed of generation (per-row seeds derive from it), contrast draws and bootstrap."""
    max_new_tokens: int = 256
    """Most tokens per generated response for PMI / judged prompts (paper: 512)."""
    math_max_new_tokens: int | None = None
    """Most tokens per generated math solution. ``None``: 1024 as in the paper when generating on
    a GPU (or with vLLM), 512 on CPU, where a rambling answer costs minutes."""
    math_shots: int = 8
    """Worked examples shown before each math question, as earlier user/assistant chat turns
    (paper: GSM8K 8-shot chain of thought); 0 asks zero-shot."""
    math_fewshot: str | None = None
    """File of worked examples (``question``, ``answer`` ending in ``#### N``) for the math
    prompts, the first ``math_shots`` used; ``None``: the 8 shipped with mipo."""
    temperature: float = 0.1
    """Sampling temperature for generation (paper: 0.1; 0 = greedy)."""
    top_p: float = 0.9
    """Nucleus sampling mass (paper: 0.9)."""
    batch_size: int = 16
    """Rows per forward pass when generating and scoring (``mipo run --eval-batch-size``'s
    default too)."""
    limit: int | None = None
    """Evaluate at most this many rows of each file (quick runs)."""
    n_bootstrap: int = 2000
    """Bootstrap resamples for every confidence interval."""
    backend: str = "auto"
    """Generation backend: ``auto``, ``hf`` or ``vllm``."""
    device: str = "auto"
    """Device for generation and scoring: ``auto``, ``cpu``, ``cuda``, ``cuda:N``."""
    dtype: str = "auto"
    """Precision of generation and scoring: ``auto`` (bfloat16 on a GPU that supports it and on
    a CPU with AMX, float32 elsewhere), ``float32`` or ``bfloat16``."""
    train_log: str | None = None
    """A ``train_log.jsonl`` to plot; ``None``: the evaluated model's own, if it has one."""
    overwrite: bool = False
    """Replace an existing report in the output directory."""
    trust_remote_code: bool = False
    """Allow models that ship their own Python code."""
    vllm_options: dict[str, Any] = field(default_factory=dict)
    """vLLM engine settings for generation with the vllm backend, as
    :class:`~mipo.generate.GenerationConfig` fields: ``gpu_memory_utilization``,
    ``max_model_len``, ``enable_prefix_caching``, ``kv_cache_gib``, ``vllm_args``,
    ``vllm_window_rows``, ``vllm_python`` (an environment with vLLM when it is not installed
    here)."""
    cache_dir: str | None = None
    """Folder of per-model results reused across evaluations (:mod:`mipo.evaluate.cache`): a
    model already evaluated on the same data with the same settings (weights, data and
    settings hashed) is read back instead of generated and scored again. ``None``: no cache."""

    def __post_init__(self) -> None:
        def bad(name: str, value: Any, rule: str) -> ConfigError:
            return ConfigError(f"{name} must be {rule}, got {value!r}")

        if not self.model:
            raise bad("model", self.model, "a model folder or name")
        if not self.data:
            raise ConfigError("data: pass at least one evaluation file")
        for name in ("k", "max_new_tokens", "batch_size", "n_bootstrap"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise bad(name, value, "an integer >= 1")
        limit = self.math_max_new_tokens
        if limit is not None and (
            not isinstance(limit, int) or isinstance(limit, bool) or limit < 1
        ):
            raise bad("math_max_new_tokens", limit, "an integer >= 1, or None")
        shots = self.math_shots
        if not isinstance(shots, int) or isinstance(shots, bool) or shots < 0:
            raise bad("math_shots", shots, "an integer >= 0")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 2):
            raise bad("limit", self.limit, "an integer >= 2, or None")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise bad("seed", self.seed, "an integer >= 0")
        if not (isinstance(self.temperature, int | float) and self.temperature >= 0):
            raise bad("temperature", self.temperature, ">= 0")
        if not (isinstance(self.top_p, int | float) and 0 < self.top_p <= 1):
            raise bad("top_p", self.top_p, "in (0, 1]")
        if self.backend not in ("auto", "hf", "vllm"):
            raise bad("backend", self.backend, "auto, hf or vllm")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise bad("dtype", self.dtype, "auto, float32 or bfloat16")
        allowed = {
            "gpu_memory_utilization", "max_model_len", "enable_prefix_caching", "kv_cache_gib",
            "vllm_args", "vllm_python", "vllm_window_rows",
        }  # fmt: skip
        unknown = sorted(set(self.vllm_options) - allowed)
        if unknown:
            raise bad("vllm_options", unknown, f"keys among {', '.join(sorted(allowed))}")
        from mipo.generate import GenerationConfig

        GenerationConfig(**self.vllm_options)  # validates the values
        if self.judge is not None and self.judge.lower() == "none":
            self.judge = None
        if self.judge_url is not None:
            if self.judge is not None:
                raise ConfigError(
                    "--judge (a local model) and --judge-url (a server) exclude each other: "
                    "pass one of them"
                )
            self.server_judge()  # validates url, model, concurrency and timeout now
        elif self.judge_model is not None:
            raise ConfigError("--judge-model names the served model of --judge-url: pass both")

    def server_judge(self) -> Any:
        """The :class:`~mipo.evaluate.judge_server.ServerJudge` of ``judge_url``."""
        from mipo.evaluate.judge_server import ServerJudge

        return ServerJudge(
            str(self.judge_url),
            self.judge_model or "",
            concurrency=self.judge_concurrency,
            timeout_s=self.judge_timeout_s,
        )

    @property
    def judge_name(self) -> str | None:
        """How reports name the judge."""
        if self.judge_url:
            return f"{self.judge_model} at {self.judge_url}"
        return self.judge

    def device_for_scoring(self) -> str | None:
        return None if self.device == "auto" else self.device

    def math_token_limit(self) -> int:
        """``math_max_new_tokens``, or its device-dependent default (1024 on GPU, 512 on CPU)."""
        if self.math_max_new_tokens is not None:
            return self.math_max_new_tokens
        if self.device.startswith("cuda"):
            return 1024
        if self.backend == "vllm":
            from mipo.generate import vllm_device

            return 1024 if vllm_device() == "cuda" else 512
        if self.device == "auto":
            import torch

            return 1024 if torch.cuda.is_available() else 512
        return 512


@dataclass(frozen=True)
class EvalResult:
    """Paths of what ``run_eval`` wrote, and the metrics."""

    output_dir: Path
    report_md: Path
    report_html: Path
    metrics_json: Path
    metrics: dict[str, Any]


# --- helpers ----------------------------------------------------------------------------------


def _train_record(spec: str | None) -> dict[str, Any] | None:
    """``train_config.json`` of a ``mipo train`` output (the dir, or its model/merged subdir)."""
    if spec is None:
        return None
    path = Path(spec)
    for candidate in (path / "train_config.json", path.parent / "train_config.json"):
        if candidate.is_file():
            # Fail closed: a corrupt record must not silently change the PMI reference.
            return read_json_record(
                candidate,
                what="training record",
                fix="restore it (or train again), or name the reference model with --reference",
                error=ModelError,
            )
    return None


def _pick_reference(config: EvalConfig) -> tuple[str, str]:
    if config.reference:
        return config.reference, "--reference"
    for role, spec in (("model", config.model), ("baseline", config.compare)):
        record = _train_record(spec)
        if record and record.get("resolved", {}).get("reference_model"):
            source = f"the reference the {role} was trained against (train_config.json)"
            return record["resolved"]["reference_model"], source
    if config.compare:
        return config.compare, "the baseline (--compare)"
    return config.model, "the evaluated model itself (no --reference, no training record)"


def _train_log_path(config: EvalConfig) -> Path | None:
    if config.train_log:
        return Path(config.train_log)
    path = Path(config.model)
    for candidate in (path / "train_log.jsonl", path.parent / "train_log.jsonl"):
        if candidate.is_file():
            return candidate
    return None


def _stat_row(label: str, stats: dict[str, Any], key: str, has_baseline: bool) -> list[str]:
    from mipo.evaluate.report import fmt_ci

    row = [label, fmt_ci(stats["model"].get(key))]
    if has_baseline:
        row += [fmt_ci(stats["baseline"].get(key)), fmt_ci(stats.get("difference", {}).get(key))]
    return row


def _headers(has_baseline: bool) -> list[str]:
    if has_baseline:
        return ["metric", "model", "baseline", "model − baseline (paired)"]
    return ["metric", "model"]


# --- the evaluations --------------------------------------------------------------------------


def _per_token(values: list[float | None], tokens: list[int]) -> list[float | None]:
    return [None if v is None or t == 0 else v / t for v, t in zip(values, tokens, strict=True)]


def math_messages(question: str, exemplars: list[tuple[str, str]]) -> list[dict[str, str]]:
    """The chat prompt for one math question: each worked example as a user turn (its question
    and the instruction) answered by an assistant turn (its solution ending in ``#### N``), then
    the question itself. Every user turn has the same form, so the examples show the model
    exactly what its own answer should look like.

    >>> shots = [("What is 1 + 1?", "1 + 1 = 2\\n#### 2")]
    >>> [m["role"] for m in math_messages("What is 2 + 3?", shots)]
    ['user', 'assistant', 'user']
    >>> math_messages("What is 2 + 3?", [])[0]["content"].startswith("What is 2 + 3?\\n\\nSolve")
    True
    """
    messages: list[dict[str, str]] = []
    for example_question, solution in exemplars:
        messages.append({"role": "user", "content": f"{example_question}\n\n{MATH_INSTRUCTION}"})
        messages.append({"role": "assistant", "content": solution})
    messages.append({"role": "user", "content": f"{question}\n\n{MATH_INSTRUCTION}"})
    return messages


def run_eval(config: EvalConfig, output_dir: str | os.PathLike[str]) -> EvalResult:
    """Run every evaluation the data calls for and write report.md / report.html / metrics.json.

    >>> run_eval(EvalConfig(model="runs/train1", data=["heldout.jsonl"], compare="smollm2-135m"),
    ...          "runs/eval1")  # doctest: +SKIP
    """
    from mipo.evaluate.datasets import load_dataset, load_fewshot

    started = time.perf_counter()
    outdir = Path(output_dir)
    if (outdir / "metrics.json").exists() and not config.overwrite:
        raise OutputError(f"{outdir} already holds an evaluation: pass --overwrite or another -o")
    datasets = [load_dataset(spec, limit=config.limit) for spec in config.data]
    has_math = any(ds.kind == "math" for ds in datasets)
    exemplars = load_fewshot(config.math_fewshot, config.math_shots) if has_math else []
    for ds in datasets:
        if ds.kind == "pmi" and ds.frame.height < 2:
            raise ConfigError(f"PMI data {ds.path} needs at least 2 prompts, has {ds.frame.height}")
    names = [ds.name for ds in datasets]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigError(
            f"evaluation files share the name(s) {', '.join(duplicated)}: rename them"
        )
    outdir.mkdir(parents=True, exist_ok=True)
    run = _Evaluation(config, outdir, datasets, exemplars)
    workdir = outdir / ".work"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir()
    try:
        run.generate_and_score_choices(workdir)
        run.grade_math()
        run.score_pmi(workdir)
        run.save_cache()
        run.judge(workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return run.write(time.perf_counter() - started)


class _Evaluation:
    """State of one ``mipo eval`` run: per-row frames grow a column per step and role."""

    def __init__(
        self,
        config: EvalConfig,
        outdir: Path,
        datasets: list[EvalDataset],
        exemplars: list[tuple[str, str]],
    ) -> None:
        self.config = config
        self.exemplars = exemplars
        self.outdir = outdir
        self.datasets = datasets
        self.roles = {"model": config.model}
        if config.compare:
            self.roles["baseline"] = config.compare
        self.has_baseline = "baseline" in self.roles
        self.reference, self.reference_source = _pick_reference(config)
        self.rows = {ds.name: ds.frame for ds in datasets}
        self.notes: list[str] = []
        self.judged: list[str] = []
        self.paths: dict[str, str] = {}
        self.ci: dict[str, int] = {"n_resamples": config.n_bootstrap, "seed": config.seed}
        self.cache_keys: dict[tuple[str, str], str] = {}
        self.cached: set[tuple[str, str]] = set()
        self.cache_notes: dict[tuple[str, str], list[str]] = {}
        shown = {q.strip() for q, _ in exemplars}
        for ds in self._of_kind("math"):
            leaked = sum(q.strip() in shown for q in ds.frame["question"])
            if leaked:
                self.notes.append(
                    f"{ds.name}: {leaked} question(s) are also few-shot examples, so their "
                    "solutions were in the prompt"
                )

    def _of_kind(self, kind: str) -> list[EvalDataset]:
        return [ds for ds in self.datasets if ds.kind == kind]

    def _load(self, spec: str, workdir: Path) -> tuple[Any, Any]:
        from mipo.evaluate.generation import materialize_model
        from mipo.models import load_model

        trust = self.config.trust_remote_code
        path = materialize_model(spec, workdir, trust_remote_code=trust).path
        return load_model(
            path,
            device=self.config.device_for_scoring(),
            dtype=self.config.dtype,
            trust_remote_code=trust,
        )

    # --- steps --------------------------------------------------------------------------------

    def generate_and_score_choices(self, workdir: Path) -> None:
        """Each model answers the pmi and math prompts and scores the choices."""
        from mipo.evaluate.generation import (
            generate_responses,
            materialize_model,
            render_prompts,
        )
        from mipo.models import load_model, resolve_model_path

        c = self.config
        for role, spec in self.roles.items():
            resolved = materialize_model(spec, workdir, trust_remote_code=c.trust_remote_code)
            path = Path(resolved.path)
            # A merged adapter lives in the work folder, deleted after the run: name the adapter.
            self.paths[role] = (
                f"{resolve_model_path(spec)} (LoRA adapter, merged for this run)"
                if workdir.resolve() in path.resolve().parents
                else str(path)
            )
            self._read_cache(role, path)
            for ds in self.datasets:
                if ds.kind == "choice" or (role, ds.name) in self.cached:
                    continue
                prompt_ids, context = render_prompts(resolved, self._prompts(ds))
                limit = c.max_new_tokens if ds.kind == "pmi" else c.math_token_limit()
                too_long = sum(len(ids) + limit > context for ids in prompt_ids) if context else 0
                if too_long:
                    self._note(
                        role,
                        ds,
                        f"{ds.name}, {role}: {too_long} prompt(s) plus {limit} new tokens exceed "
                        f"the model's context of {context} tokens"
                        + (" (lower --math-shots)" if ds.kind == "math" else ""),
                    )
                results = generate_responses(
                    resolved,
                    prompt_ids,
                    seed=c.seed,
                    max_new_tokens=limit,
                    temperature=c.temperature,
                    top_p=c.top_p,
                    batch_size=c.batch_size,
                    backend=c.backend,
                    device=c.device,
                    dtype=c.dtype,
                    vllm_options=c.vllm_options,
                )
                self.rows[ds.name] = self.rows[ds.name].with_columns(
                    pl.Series(f"response_{role}", [r.text for r in results], dtype=pl.String),
                    pl.Series(
                        f"finish_reason_{role}",
                        [r.finish_reason for r in results],
                        dtype=pl.String,
                    ),
                    pl.Series(
                        f"prompt_tokens_{role}", [len(ids) for ids in prompt_ids], dtype=pl.Int64
                    ),
                )
            choices = [ds for ds in self._of_kind("choice") if (role, ds.name) not in self.cached]
            if choices:
                loaded = load_model(
                    resolved.path,
                    device=c.device_for_scoring(),
                    dtype=c.dtype,
                    trust_remote_code=c.trust_remote_code,
                )
                for ds in choices:
                    self._score_choices(ds, role, loaded)
                del loaded

    # --- the result cache ---------------------------------------------------------------------

    def _settings(self, ds: EvalDataset) -> dict[str, Any]:
        """Everything a role's per-row results on ``ds`` depend on, besides the weights."""
        c = self.config
        settings: dict[str, Any] = {
            "mipo": __version__,
            "kind": ds.kind,
            "limit": c.limit,
            "seed": c.seed,
            "temperature": c.temperature,
            "top_p": c.top_p,
            "batch_size": c.batch_size,
            "backend": c.backend,
            "device": c.device,
            "dtype": c.dtype,
            "vllm": {
                k: v for k, v in c.vllm_options.items() if k in ("max_model_len", "vllm_args")
            },
        }
        if ds.kind == "pmi":
            settings.update(max_new_tokens=c.max_new_tokens, k=c.k)
        if ds.kind == "math":
            settings.update(
                max_new_tokens=c.math_token_limit(),
                exemplars=self.exemplars,
            )
        return settings

    def _read_cache(self, role: str, path: Path) -> None:
        """Look up every dataset of ``role`` (the model at ``path``) in the cache."""
        from mipo.evaluate.cache import ResultCache, content_digest

        if self.config.cache_dir is None:
            return
        cache = ResultCache(self.config.cache_dir)
        weights = content_digest(path, suffixes=(".safetensors", ".bin"))
        reference = None
        for ds in self.datasets:
            if ds.kind == "pmi" and reference is None:
                from mipo.models import resolve_model_path

                reference = content_digest(
                    resolve_model_path(
                        self.reference, trust_remote_code=self.config.trust_remote_code
                    ),
                    suffixes=(".safetensors", ".bin"),
                )
            key = cache.key(
                weights=weights,
                data=content_digest(ds.path),
                name=ds.name,
                reference=reference if ds.kind == "pmi" else None,
                settings=self._settings(ds),
            )
            self.cache_keys[(role, ds.name)] = key
            hit = cache.load(key, role)
            if hit is None:
                continue
            columns, notes = hit
            self.rows[ds.name] = pl.concat([self.rows[ds.name], columns], how="horizontal")
            for note in notes:
                self._note(role, ds, note)
            self.cached.add((role, ds.name))
            logger.info("%s on %s: results read from the cache (%s)", role, ds.name, key)

    def _note(self, role: str, ds: EvalDataset, text: str) -> None:
        self.notes.append(text)
        self.cache_notes.setdefault((role, ds.name), []).append(text)

    def save_cache(self) -> None:
        """Store the per-row results of every (role, dataset) computed in this run."""
        from mipo.evaluate.cache import ResultCache

        if self.config.cache_dir is None:
            return
        cache = ResultCache(self.config.cache_dir)
        for (role, name), key in self.cache_keys.items():
            if (role, name) not in self.cached:
                cache.save(key, role, self.rows[name], self.cache_notes.get((role, name), []))

    def _prompts(self, ds: EvalDataset) -> list[list[dict[str, str]]]:
        """The chat prompts a pmi or math file asks the models to answer."""
        if ds.kind == "pmi":
            return ds.frame["prompt"].to_list()
        return [math_messages(q, self.exemplars) for q in ds.frame["question"]]

    def _score_choices(self, ds: EvalDataset, role: str, loaded: tuple[Any, Any]) -> None:
        from mipo.scoring import score_responses

        prompts, options, owner = [], [], []
        for i, row in enumerate(ds.frame.iter_rows(named=True)):
            for option in row["choices"]:
                prompts.append([{"role": "user", "content": row["question"]}])
                options.append(option)
                owner.append(i)
        scored = score_responses(loaded, prompts, options, batch_size=self.config.batch_size)
        sums: list[list[float]] = [[] for _ in range(ds.frame.height)]
        means: list[list[float]] = [[] for _ in range(ds.frame.height)]
        for i, logprob, tokens in zip(owner, scored["logprob"], scored["num_tokens"], strict=True):
            sums[i].append(logprob)
            means[i].append(logprob / max(tokens, 1))
        gold = ds.frame["answer_index"].to_list()
        pick = [max(range(len(s)), key=s.__getitem__) for s in sums]
        pick_norm = [max(range(len(s)), key=s.__getitem__) for s in means]
        self.rows[ds.name] = self.rows[ds.name].with_columns(
            pl.Series(f"pick_{role}", pick, dtype=pl.Int64),
            pl.Series(f"correct_{role}", [p == g for p, g in zip(pick, gold, strict=True)]),
            pl.Series(
                f"correct_norm_{role}", [p == g for p, g in zip(pick_norm, gold, strict=True)]
            ),
        )

    def grade_math(self) -> None:
        from mipo.evaluate.answers import extract_number, math_correct

        for ds in self._of_kind("math"):
            frame = self.rows[ds.name]
            for role in self.roles:
                texts = frame[f"response_{role}"].to_list()
                frame = frame.with_columns(
                    pl.Series(
                        f"extracted_{role}", [extract_number(t) for t in texts], dtype=pl.String
                    ),
                    pl.Series(
                        f"correct_{role}",
                        [
                            math_correct(t, a)
                            for t, a in zip(texts, frame["answer"].to_list(), strict=True)
                        ],
                    ),
                )
            self.rows[ds.name] = frame

    def score_pmi(self, workdir: Path) -> None:
        from mipo.evaluate.controls import context_word_share, copied_ngram_share
        from mipo.scoring import pmi_scores

        pmi_sets = self._of_kind("pmi")
        if not pmi_sets:
            return
        self.paths["reference"] = str(_resolved_path(self.reference, self.config.trust_remote_code))
        todo = [(ds, r) for ds in pmi_sets for r in self.roles if (r, ds.name) not in self.cached]
        reference = self._load(self.reference, workdir) if todo else None
        for ds in pmi_sets:
            frame = self.rows[ds.name]
            if not ds.has_context:
                self.notes.append(
                    f"{ds.name}: no user context, so no same-question (other users' contexts) "
                    "or context-drop contrasts"
                )
            contexts = frame["context"].to_list()
            for role in self.roles:
                if (role, ds.name) in self.cached:
                    continue
                responses = frame[f"response_{role}"]
                scores = pmi_scores(
                    reference,
                    frame["prompt"],
                    responses,
                    k=self.config.k,
                    seed=self.config.seed,
                    contexts=contexts if ds.has_context else None,
                    nocontext=frame["prompt_nocontext"] if ds.has_context else None,
                    users=frame["user_id"].to_list() if ds.has_users else None,
                    batch_size=self.config.batch_size,
                )
                texts = responses.to_list()
                copied = [copied_ngram_share(r, c) for r, c in zip(texts, contexts, strict=True)]
                words = [context_word_share(r, c) for r, c in zip(texts, contexts, strict=True)]
                frame = frame.with_columns(
                    *(s.alias(f"{s.name}_{role}") for s in scores.iter_columns()),
                    pl.Series(f"copy_share_{role}", copied, dtype=pl.Float64),
                    pl.Series(f"context_words_{role}", words, dtype=pl.Float64),
                )
            self.rows[ds.name] = frame

    def judge(self, workdir: Path) -> None:
        from mipo.evaluate.judge import judge_scores

        pmi_sets = self._of_kind("pmi")
        with_context = [ds for ds in pmi_sets if ds.has_context]
        if not pmi_sets:
            return
        if not self.config.judge and not self.config.judge_url:
            self.notes.append(
                "judged win rate skipped: no judge (pass --judge MODEL, or --judge-url URL "
                "--judge-model NAME for a server)"
            )
            return
        if not self.has_baseline:
            self.notes.append("judged win rate skipped: it compares two models, pass --compare")
            return
        if not with_context:
            self.notes.append("judged win rate skipped: the prompt data holds no user context")
            return
        server = self.config.server_judge() if self.config.judge_url else None
        local = None if server else self._load(str(self.config.judge), workdir)
        for ds in with_context:
            frame = self.rows[ds.name]
            for role in self.roles:
                args = (
                    frame["context"].to_list(),
                    frame["question"].to_list(),
                    frame[f"response_{role}"].to_list(),
                )
                if server is not None:
                    scores = server.score(*args)
                    columns = [
                        scores["score"].alias(f"judge_score_{role}"),
                        scores["score"].alias(f"judge_expected_{role}"),
                        scores["unparsed"].alias(f"judge_unparsed_{role}"),
                        scores["preferences"].alias(f"judge_preferences_{role}"),
                    ]
                else:
                    scores = judge_scores(local, *args, batch_size=self.config.batch_size)
                    columns = [
                        scores["score"].alias(f"judge_score_{role}"),
                        scores["expected_score"].alias(f"judge_expected_{role}"),
                    ]
                frame = frame.with_columns(columns)
            self.rows[ds.name] = frame
            self.judged.append(ds.name)
        if server is not None:
            self.server_calls = server.calls

    # --- summary and report -------------------------------------------------------------------

    def write(self, runtime_s: float) -> EvalResult:
        from mipo.evaluate.report import Report

        c = self.config
        report = Report("mipo evaluation report")
        metrics: dict[str, Any] = {
            "models": {
                "model": c.model,
                "baseline": c.compare,
                "reference": self.reference,
                "reference_source": self.reference_source,
                "judge": c.judge_name if self.judged else None,
                "paths": self.paths,
            },
            "config": asdict(c),
            "pmi": {},
            "multiple_choice": {},
            "math": {},
            "judge": {},
        }
        if self._of_kind("math"):
            from mipo.evaluate.datasets import MATH_FEWSHOT_PATH

            metrics["math_setup"] = {
                "shots": len(self.exemplars),
                "examples_file": str(c.math_fewshot or MATH_FEWSHOT_PATH)
                if self.exemplars
                else None,
                "max_new_tokens": c.math_token_limit(),
            }
        report.heading("Models")
        model_rows = [["model", c.model]]
        if self.has_baseline:
            model_rows.append(["baseline", str(c.compare)])
        if self._of_kind("pmi"):
            model_rows.append(["reference (PMI)", f"{self.reference} — {self.reference_source}"])
        if self.judged:
            model_rows.append(["judge", str(c.judge_name)])
        report.table(["role", "model"], model_rows)
        report.paragraph(
            f"Generation: temperature {c.temperature}, top-p {c.top_p}, seed {c.seed} (the same "
            "per-row seeds for every model). Intervals: 95% percentile bootstrap "
            f"({c.n_bootstrap} resamples) over clusters: users (crossed with questions when a "
            "question repeats) for prompt files, questions for choice and math files; "
            "differences are paired by prompt."
        )
        plots: list[str] = []
        for ds in self.datasets:
            frame = self.rows[ds.name]
            write_parquet_atomic(frame, self.outdir / f"{ds.kind}_{ds.name}.parquet")
            if ds.kind == "pmi":
                metrics["pmi"][ds.name] = self._pmi_section(ds, frame, report, plots)
                if ds.name in self.judged:
                    metrics["judge"][ds.name] = self._judge_section(ds, frame, report)
            else:
                section = "multiple_choice" if ds.kind == "choice" else "math"
                metrics[section][ds.name] = self._accuracy_section(ds, frame, report)
        headline = _personalization(metrics["pmi"], self.config.k)
        if headline is not None:
            metrics["personalization"] = headline
        training = self._training_section(report, plots)
        if training:
            metrics["training"] = training
        if self.notes:
            report.heading("Notes")
            report.bullets(self.notes)
        metrics["notes"] = self.notes
        metrics["plots"] = plots
        metrics["runtime_s"] = runtime_s
        files = {
            "report.md": report.to_markdown(),
            "report.html": report.to_html(),
            "metrics.json": json.dumps(finite_json(metrics), indent=2, default=str),
        }
        for name, text in files.items():
            write_text_atomic(text, self.outdir / name)
        return EvalResult(
            output_dir=self.outdir,
            report_md=self.outdir / "report.md",
            report_html=self.outdir / "report.html",
            metrics_json=self.outdir / "metrics.json",
            metrics=metrics,
        )

    def _clusters(self, ds: EvalDataset) -> dict[str, Any]:
        """Cluster keys of a pmi file's rows for the bootstrap (see
        :func:`mipo.evaluate.stats.prompt_clusters`)."""
        from mipo.evaluate.stats import prompt_clusters

        frame = self.rows[ds.name]
        users = frame["user_id"].to_list() if ds.has_users else None
        return prompt_clusters(users, frame["question"].to_list())

    def _pmi_section(
        self, ds: EvalDataset, frame: pl.DataFrame, report: Any, plots: list[str]
    ) -> dict[str, Any]:
        from mipo.evaluate.controls import COPY_NGRAM, explain_gain
        from mipo.evaluate.report import fmt_ci, plot_distributions
        from mipo.evaluate.stats import bootstrap_ci, paired_bootstrap_ci, resampling_label
        from mipo.scoring import CONTRASTS

        c = self.config
        contrasts = [k for k in CONTRASTS if f"pmi_{k}_model" in frame.columns]
        keys = ["logprob", "logprob_per_token", "num_tokens", "copy_share", "context_words"]
        for kind in contrasts:
            keys += [
                f"pmi_{kind}",
                f"pmi_{kind}_infonce",
                f"pmi_{kind}_mean_log",
                f"pmi_{kind}_per_token",
            ]
        groups = self._clusters(ds)
        ci = {**self.ci, **groups}
        stats: dict[str, Any] = {
            role: {key: bootstrap_ci(_pmi_column(frame, key, role), **ci) for key in keys}
            for role in self.roles
        }
        label = resampling_label(
            groups["clusters"], groups["crossed"], users=groups["cluster_kind"] == "users"
        )
        users = len(set(groups["clusters"])) if ds.has_users else None
        questions = frame["question"].n_unique()
        stats["resampling"] = {
            "units": label,
            "users": users,
            "questions": questions,
            "n_resamples": c.n_bootstrap,
        }
        counts: dict[str, Any] = {"k": c.k}
        for kind in contrasts:
            got = frame[f"num_contrasts_{kind}_model"]
            wanted = 1 if kind == "context_drop" else c.k
            counts[kind] = {
                "fewer_than_wanted": int(((got > 0) & (got < wanted)).sum()),
                "none": int((got == 0).sum()),
                "wanted": wanted,
            }
        stats["contrasts"] = counts
        if self.has_baseline:
            stats["difference"] = {
                key: paired_bootstrap_ci(
                    _pmi_column(frame, key, "model"), _pmi_column(frame, key, "baseline"), **ci
                )
                for key in keys
            }
            stats["controls"] = {}
            for kind in contrasts:
                deltas = {name: _difference(frame, column) for name, column in SHORTCUTS}
                for name in ("copying", "context words"):
                    if all(v is None for v in deltas[name]):
                        deltas.pop(name)  # no context anywhere: nothing to copy
                stats["controls"][kind] = explain_gain(
                    _difference(frame, f"pmi_{kind}"),
                    deltas,
                    n_resamples=c.n_bootstrap,
                    seed=c.seed,
                    **groups,
                )
        units = {
            "users and questions": f"{users} users crossed with {questions} questions",
            "users": f"{users} users",
            "questions": f"{questions} questions (no user column)",
            "prompts": f"{frame.height} prompts",
        }[label]
        title = f"Pointwise mutual information — {ds.name} ({frame.height} prompts"
        report.heading(title + (f", {users} users)" if users else ")"))
        report.paragraph(
            "PMI(x, y) = log π_ref(y|x) − log (1/k) Σ_j π_ref(y|x'_j), the log-mean-exp estimate "
            f"of log π_ref(y|x) − log E_x' π_ref(y|x'), k = {c.k}, in nats; higher means the "
            "response is more specific to its prompt. Contrasts x': 'random' — other held-out "
            "prompts; 'same question, other users' — the prompt's own question asked with k "
            "other users' contexts (isolates personalization); 'context drop' — the question "
            "without its context (one contrast: log π(y|c,q) − log π(y|q)). 'InfoNCE' is the "
            "bounded estimate log π(y|x) − log (π(y|x) + Σ_j π(y|x'_j))/(k+1) ≤ log(k+1); "
            "'mean of logs' subtracts the mean log-probability instead (never below the "
            "headline, unbounded: secondary). Intervals: 95% percentile cluster bootstrap over "
            f"{units} ({c.n_bootstrap} resamples); model − baseline is paired by prompt."
        )
        names = {
            "random": "random",
            "same_question": "same question, other users",
            "context_drop": "context drop",
        }
        table = []
        for kind in contrasts:
            table.append(
                _stat_row(f"**PMI ({names[kind]})**", stats, f"pmi_{kind}", self.has_baseline)
            )
        for kind in contrasts:
            table.append(
                _stat_row(
                    f"PMI InfoNCE ({names[kind]})", stats, f"pmi_{kind}_infonce", self.has_baseline
                )
            )
        for kind in contrasts:
            table.append(
                _stat_row(
                    f"PMI per token ({names[kind]})",
                    stats,
                    f"pmi_{kind}_per_token",
                    self.has_baseline,
                )
            )
        for kind in contrasts:
            table.append(
                _stat_row(
                    f"secondary: mean of logs ({names[kind]})",
                    stats,
                    f"pmi_{kind}_mean_log",
                    self.has_baseline,
                )
            )
        table.append(
            _stat_row(
                f"share of response {COPY_NGRAM}-grams copied from the context",
                stats,
                "copy_share",
                self.has_baseline,
            )
        )
        table.append(
            _stat_row(
                "share of response content words found in the context",
                stats,
                "context_words",
                self.has_baseline,
            )
        )
        table.append(_stat_row("response tokens", stats, "num_tokens", self.has_baseline))
        table.append(
            _stat_row("log π_ref(y|x) per token", stats, "logprob_per_token", self.has_baseline)
        )
        table.append(_stat_row("log π_ref(y|x)", stats, "logprob", self.has_baseline))
        report.table(_headers(self.has_baseline), table)
        short = [
            f"{names[kind]}: {counts[kind]['fewer_than_wanted']} with fewer than "
            f"{counts[kind]['wanted']}, {counts[kind]['none']} with none"
            for kind in contrasts
        ]
        report.paragraph("Rows with fewer contrasts than asked for — " + "; ".join(short) + ".")
        if self.has_baseline:
            rows = []
            findings = []
            for kind in contrasts:
                control = stats["controls"][kind]
                adjusted = control["adjusted"]
                row = [names[kind], fmt_ci(control["raw"])]
                for key in [name for name, _ in SHORTCUTS] + ["all"]:
                    row.append(fmt_ci({"n": 1, **adjusted[key]}) if key in adjusted else "–")
                rows.append(row)
                findings.append(_gain_finding(names[kind], control))
            report.paragraph(
                "Does the gain survive the shortcuts? Per prompt, ΔPMI (model − baseline) is "
                "regressed on the change in the 3-gram copy share ('copying'), in the share of "
                "content words found in the context ('context words', which also catches the "
                "context restated in other words), in response tokens ('length') and in "
                "log π_ref(y|x) per token ('fluency'), one at a time and all together, over the "
                "prompts where every measure exists; the intercept is the gain predicted for "
                "responses that copy as much, reuse as many context words, are as long and as "
                "fluent as the baseline's (same cluster bootstrap)."
            )
            report.table(
                ["contrast", "gain"]
                + [f"adjusted for {name}" for name, _ in SHORTCUTS]
                + ["adjusted for all"],
                rows,
            )
            fluency = stats["difference"]["logprob_per_token"]
            if fluency.get("high", 0) < 0:
                findings.append(
                    "the model's responses are less likely under the reference per token "
                    f"({fmt_ci(fluency)} nats): some fluency was lost, read the gain with that "
                    "in mind"
                )
            report.bullets(findings)
            stats["findings"] = findings
        shown = "same_question" if "same_question" in contrasts else "random"
        png = f"pmi_{ds.name}.png"
        plot_distributions(
            {role: frame[f"pmi_{shown}_{role}"].to_list() for role in self.roles},
            self.outdir / png,
            title=f"PMI of generated responses under the reference — {ds.name}",
            xlabel=f"PMI ({names[shown]}), nats",
        )
        plots.append(png)
        report.image(png, f"PMI distributions, {ds.name}")
        return stats

    def _judge_section(self, ds: EvalDataset, frame: pl.DataFrame, report: Any) -> dict[str, Any]:
        from mipo.evaluate.judge import win_rates
        from mipo.evaluate.report import fmt_ci
        from mipo.evaluate.stats import bootstrap_ci, paired_bootstrap_ci

        model = frame["judge_score_model"].to_list()
        baseline = frame["judge_score_baseline"].to_list()
        rates = win_rates(model, baseline)
        half = [
            None if m is None or b is None else (1.0 if m > b else 0.5 if m == b else 0.0)
            for m, b in zip(model, baseline, strict=True)
        ]
        as_wins = [None if h is None else float(h >= 0.5) for h in half]
        ci = {**self.ci, **self._clusters(ds)}
        given = {score for score in (*model, *baseline) if score is not None}
        stats = {
            **rates,
            # One score for every response: the judge cannot separate the models, so the win
            # rate is all ties by construction (typical of a judge as small as the built-in model).
            "single_score": next(iter(given)) if len(given) == 1 else None,
            "win_rate_ties_as_wins_ci": bootstrap_ci(as_wins, **ci),
            "win_rate_ties_as_half_ci": bootstrap_ci(half, **ci),
            "model_score": bootstrap_ci(model, **ci),
            "baseline_score": bootstrap_ci(baseline, **ci),
            "model_expected_score": bootstrap_ci(frame["judge_expected_model"].to_list(), **ci),
            "baseline_expected_score": bootstrap_ci(
                frame["judge_expected_baseline"].to_list(), **ci
            ),
            "expected_score_difference": paired_bootstrap_ci(
                frame["judge_expected_model"].to_list(),
                frame["judge_expected_baseline"].to_list(),
                **ci,
            ),
        }
        report.heading(f"Judged personalization — {ds.name}")
        name = self.config.judge_name
        if self.config.judge_url:
            unparsed = {role: int(frame[f"judge_unparsed_{role}"].sum()) for role in self.roles}
            asked = {role: int(frame[f"judge_preferences_{role}"].sum()) for role in self.roles}
            stats["unparsed"] = unparsed
            stats["ratings_asked"] = asked
            stats["requests_made"] = getattr(self, "server_calls", None)
            report.paragraph(
                f"Judge {name} rates each response 1–5 against each sentence of the user's "
                "context (one stated preference each), the ratings averaged (the paper's "
                "metric); a reply that is not a single digit 1–5 is not scored. Unparsed "
                + ", ".join(f"{role}: {unparsed[role]} of {asked[role]}" for role in self.roles)
                + ". Win rate: model vs baseline per prompt."
            )
            if any(unparsed.values()):
                self.notes.append(
                    f"the judge {name} gave {sum(unparsed.values())} replies that are not a "
                    "single digit 1-5; those ratings are left out (counted, never guessed)"
                )
        else:
            report.paragraph(
                f"Judge {name} rates each response 1–5 against the user's stated context "
                "(its most probable digit as the next token; expected score = probability-"
                "weighted digit). Win rate: model vs baseline per prompt."
            )
        if stats["single_score"] is not None:  # listed under the report's Notes
            self.notes.append(
                f"the judge {name} gave every response the same score "
                f"({stats['single_score']}), so every comparison is a tie and the win rate says "
                "nothing about the models: pass a stronger judge with --judge MODEL"
            )
        report.table(
            ["measure", "value"],
            [
                ["wins / ties / losses", f"{rates['wins']} / {rates['ties']} / {rates['losses']}"],
                ["win rate, ties as wins (paper)", fmt_ci(stats["win_rate_ties_as_wins_ci"])],
                ["win rate, ties as half", fmt_ci(stats["win_rate_ties_as_half_ci"])],
                ["mean score, model", fmt_ci(stats["model_score"])],
                ["mean score, baseline", fmt_ci(stats["baseline_score"])],
                ["expected score, model − baseline", fmt_ci(stats["expected_score_difference"])],
            ],
        )
        return stats

    def _accuracy_section(
        self, ds: EvalDataset, frame: pl.DataFrame, report: Any
    ) -> dict[str, Any]:
        from mipo.evaluate.report import fmt_number
        from mipo.evaluate.stats import bootstrap_ci, paired_bootstrap_ci

        columns = {"accuracy": "correct"}
        if ds.kind == "choice":
            columns["accuracy_norm"] = "correct_norm"

        def values(column: str, role: str) -> list[float | None]:
            return [float(v) for v in frame[f"{column}_{role}"].to_list()]

        stats: dict[str, Any] = {}
        for role in self.roles:
            stats[role] = {
                key: bootstrap_ci(values(col, role), **self.ci) for key, col in columns.items()
            }
            if ds.kind == "math":
                stats[role]["answer_found"] = _share(frame[f"extracted_{role}"].is_not_null())
                stats[role]["truncated"] = _share(frame[f"finish_reason_{role}"] == "length")
        if self.has_baseline:
            stats["difference"] = {
                key: paired_bootstrap_ci(values(col, "model"), values(col, "baseline"), **self.ci)
                for key, col in columns.items()
            }
        if ds.kind == "choice":
            report.heading(f"Multiple choice — {ds.name} ({frame.height} questions)")
            report.paragraph(
                "The option with the highest summed log-likelihood as the assistant's answer is "
                "picked; accuracy_norm uses the per-token mean instead."
            )
        else:
            report.heading(f"Math (exact match) — {ds.name} ({frame.height} questions)")
            shots = len(self.exemplars)
            setup = (
                f"{shots}-shot chain of thought: {shots} worked examples as earlier user/assistant "
                "turns, each ending in '#### <number>'"
                if shots
                else "Zero-shot"
            )
            report.paragraph(
                f"{setup}; the model is asked to end with '#### <number>', and the number after "
                "'####' (or else the last number) must equal the gold answer. Up to "
                f"{self.config.math_token_limit()} new tokens."
            )
        table = [_stat_row(key, stats, key, self.has_baseline) for key in columns]
        if ds.kind == "math":
            for key in ("answer_found", "truncated"):
                row = [key, fmt_number(stats["model"][key])]
                if self.has_baseline:
                    row += [fmt_number(stats["baseline"][key]), ""]
                table.append(row)
        report.table(_headers(self.has_baseline), table)
        return stats

    def _training_section(self, report: Any, plots: list[str]) -> dict[str, Any] | None:
        from mipo.evaluate.report import fmt_number, plot_training, read_train_log

        log_path = _train_log_path(self.config)
        if log_path is None:
            return None
        entries = read_train_log(log_path)
        steps = [e for e in entries if "loss" in e]
        if not steps:
            self.notes.append(f"training log {log_path} holds no loss entries")
            return None
        training = {
            "log": str(log_path),
            "steps": len(steps),
            "first_loss": steps[0].get("loss"),
            "final_loss": steps[-1].get("loss"),
            "final_reward_margin": steps[-1].get("rewards/margins"),
            "final_reward_accuracy": steps[-1].get("rewards/accuracies"),
        }
        report.heading("Training")
        report.table(
            ["measure", "value"],
            [
                [key.replace("_", " "), value if isinstance(value, str) else fmt_number(value)]
                for key, value in training.items()
            ],
        )
        png = "training.png"
        if plot_training(entries, self.outdir / png):
            plots.append(png)
            report.image(png, "training loss and reward margins")
        return training


def _resolved_path(spec: str, trust_remote_code: bool) -> Path:
    from mipo.models import resolve_model_path

    return resolve_model_path(spec, trust_remote_code=trust_remote_code)


def _share(mask: pl.Series) -> float:
    mean = mask.cast(pl.Float64).mean()
    return float(mean) if isinstance(mean, int | float) else 0.0


SHORTCUTS = (
    ("copying", "copy_share"),
    ("context words", "context_words"),
    ("length", "num_tokens"),
    ("fluency", "logprob_per_token"),
)
"""The covariates a PMI gain is checked against (:func:`mipo.evaluate.controls.explain_gain`):
label -> per-row column."""


def _personalization(pmi: dict[str, Any], k: int) -> dict[str, Any] | None:
    """The headline of an evaluation: the paired same-question PMI gain of the first prompt file
    that has one (``metrics.json`` key ``personalization``, documented in docs/train-eval.md)."""
    for name, stats in pmi.items():
        difference = stats.get("difference", {})
        gain = difference.get("pmi_same_question")
        if not gain or not gain.get("n"):
            continue
        control = stats["controls"]["same_question"]
        return {
            "dataset": name,
            "contrast": "same_question",
            "estimator": "log-mean-exp",
            "k": k,
            "gain": gain,
            "excludes_zero": bool(gain["low"] > 0 or gain["high"] < 0),
            "gain_above_zero": bool(gain["low"] > 0),
            "model": stats["model"]["pmi_same_question"],
            "baseline": stats["baseline"]["pmi_same_question"],
            "infonce_gain": difference["pmi_same_question_infonce"],
            "adjusted_gain": control["adjusted"],
            "explained_by": control["explained_by"],
            "copy_share_change": difference["copy_share"],
            "context_words_change": difference["context_words"],
            "length_change": difference["num_tokens"],
            "logprob_per_token_change": difference["logprob_per_token"],
            "resampling": stats["resampling"],
        }
    return None


def _difference(frame: pl.DataFrame, key: str) -> list[float | None]:
    """Per-row model − baseline of a PMI-section value (None where either is missing)."""
    return [
        None if a is None or b is None else float(a) - float(b)
        for a, b in zip(
            _pmi_column(frame, key, "model"), _pmi_column(frame, key, "baseline"), strict=True
        )
    ]


def _gain_finding(name: str, control: dict[str, Any]) -> str:
    """One sentence on a contrast's gain, computed from its interval and the adjustments."""
    from mipo.evaluate.report import fmt_ci

    raw = control["raw"]
    if not raw.get("n"):
        return f"{name}: no rows to compare"
    if raw["low"] > 0:
        if not control.get("checked", True):
            return (
                f"{name}: PMI rose by {fmt_ci(raw)} nats (interval above 0), but only "
                f"{control['rows_used']} prompt(s) have every shortcut measure (copying needs "
                "a context and 3+ words), too few to check whether copying, length or fluency "
                "explain it"
            )
        explained = control["explained_by"]
        if explained:
            which = " and ".join("all of them together" if e == "all" else e for e in explained)
            return (
                f"{name}: PMI rose by {fmt_ci(raw)} nats, but adjusting for {which} leaves an "
                "interval that includes 0: the gain is explained by " + which
            )
        both = control["adjusted"].get("all") or next(iter(control["adjusted"].values()), None)
        return (
            f"{name}: PMI rose by {fmt_ci(raw)} nats (interval above 0), and the gain survives "
            f"adjustment for {', '.join(control['covariates'])}"
            + (f" (all together: {fmt_ci({'n': 1, **both})})" if both else "")
        )
    if raw["high"] < 0:
        return f"{name}: PMI fell by {fmt_ci(raw)} nats (interval below 0)"
    return f"{name}: no detectable change ({fmt_ci(raw)} nats, the interval includes 0)"


def _pmi_column(frame: pl.DataFrame, key: str, role: str) -> list[float | None]:
    """A per-row PMI-section value for one role (per-token values derived on the fly)."""
    if key.endswith("_per_token"):
        values = frame[f"{key.removesuffix('_per_token')}_{role}"].to_list()
        return _per_token(values, frame[f"num_tokens_{role}"].to_list())
    return frame[f"{key}_{role}"].to_list()
