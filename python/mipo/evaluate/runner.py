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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from mipo import __version__
from mipo.configfile import to_mapping
from mipo.errors import ConfigError, ModelError, OutputError
from mipo.evaluate.config import EvalConfig
from mipo.evaluate.report import finite_json
from mipo.evaluate.sections import ReportSections, personalization_headline
from mipo.io import read_json_record, write_parquet_atomic, write_text_atomic

if TYPE_CHECKING:
    from mipo.evaluate.datasets import EvalDataset

__all__ = ["EvalConfig", "EvalResult", "math_messages", "run_eval"]

logger = logging.getLogger(__name__)

MATH_INSTRUCTION = (
    "Solve the problem step by step. End your answer with a final line of the form '#### <number>'."
)


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
    """The PMI reference model and where the choice came from (for the report)."""
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


# --- the evaluations --------------------------------------------------------------------------


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

    >>> # needs a trained model folder and evaluation data (minutes): see tests/test_evaluate.py
    >>> run_eval(EvalConfig(model="runs/train1", data=["heldout.jsonl"], compare="smollm2-135m"),
    ...          "runs/eval1")  # doctest: +SKIP
    """
    started = time.perf_counter()
    outdir = Path(output_dir)
    if (outdir / "metrics.json").exists() and not config.overwrite:
        raise OutputError(f"{outdir} already holds an evaluation: pass --overwrite or another -o")
    datasets, exemplars = _load_data(config)
    outdir.mkdir(parents=True, exist_ok=True)
    run = _Evaluation(config, outdir, datasets, exemplars)
    workdir = outdir / ".work"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir()
    try:
        _generate(run, workdir)
        _grade_math(run)
        _score_contrasts(run, workdir)
        _save_cache(run)
        _judge(run, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return _write(run, time.perf_counter() - started)


def _load_data(config: EvalConfig) -> tuple[list[EvalDataset], list[tuple[str, str]]]:
    """The evaluation files (checked: PMI files need 2 prompts, names are unique) and, when a
    math file is among them, the few-shot examples."""
    from mipo.evaluate.datasets import load_dataset, load_fewshot

    datasets = [
        load_dataset(spec, limit=config.limit, context_format=config.context_format)
        for spec in config.data
    ]
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
    return datasets, exemplars


class _Evaluation:
    """State of one ``mipo eval`` run, shared by its steps: per-row frames grow a column per
    step and role; notes, model paths and the result cache's bookkeeping collect beside them."""

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
        self.server_calls: int | None = None  # requests made by a judge server
        self.cache_keys: dict[tuple[str, str], str] = {}
        self.cached: set[tuple[str, str]] = set()
        self.cache_notes: dict[tuple[str, str], list[str]] = {}
        shown = {q.strip() for q, _ in exemplars}
        for ds in self.of_kind("math"):
            leaked = sum(q.strip() in shown for q in ds.frame["question"])
            if leaked:
                self.notes.append(
                    f"{ds.name}: {leaked} question(s) are also few-shot examples, so their "
                    "solutions were in the prompt"
                )

    def resolved_dtype(self) -> str:
        """The dtype every model is generated and scored in (``auto`` resolved here)."""
        from mipo.models import default_device, select_dtype

        generation = self.config.generation
        device = default_device() if generation.device == "auto" else generation.device
        return str(select_dtype(device, generation.dtype)).removeprefix("torch.")

    def of_kind(self, kind: str) -> list[EvalDataset]:
        """The evaluation files of one kind (pmi, choice, math), in the given order."""
        return [ds for ds in self.datasets if ds.kind == kind]

    def load(self, spec: str, workdir: Path) -> tuple[Any, Any]:
        """Load a model (an adapter merged into ``workdir``) for scoring."""
        from mipo.evaluate.generation import materialize_model
        from mipo.models import load_model

        trust = self.config.trust_remote_code
        path = materialize_model(spec, workdir, trust_remote_code=trust).path
        return load_model(
            path,
            device=self.config.device_for_scoring(),
            dtype=self.config.generation.dtype,
            trust_remote_code=trust,
        )

    def note(self, role: str, ds: EvalDataset, text: str) -> None:
        """A note for the report that belongs to ``role``'s results on ``ds`` (and is cached
        with them)."""
        self.notes.append(text)
        self.cache_notes.setdefault((role, ds.name), []).append(text)

    def add_columns(self, ds: EvalDataset, *columns: Any) -> None:
        """Add per-row columns to ``ds``'s results."""
        self.rows[ds.name] = self.rows[ds.name].with_columns(*columns)


# --- generation -------------------------------------------------------------------------------


def _generate(run: _Evaluation, workdir: Path) -> None:
    """Each model answers the pmi and math prompts and scores the choices (results found in the
    cache are read instead)."""
    from mipo.evaluate.generation import materialize_model
    from mipo.models import resolve_model_path

    c = run.config
    for role, spec in run.roles.items():
        resolved = materialize_model(spec, workdir, trust_remote_code=c.trust_remote_code)
        path = Path(resolved.path)
        # A merged adapter lives in the work folder, deleted after the run: name the adapter.
        run.paths[role] = (
            f"{resolve_model_path(spec)} (LoRA adapter, merged for this run)"
            if workdir.resolve() in path.resolve().parents
            else str(path)
        )
        _read_cache(run, role, path)
        for ds in run.datasets:
            if ds.kind != "choice" and (role, ds.name) not in run.cached:
                _generate_answers(run, role, resolved, ds)
        _score_choice_files(run, role, resolved)


def _generate_answers(run: _Evaluation, role: str, resolved: Any, ds: EvalDataset) -> None:
    """``role``'s responses to a pmi or math file, with their finish reasons and prompt
    lengths; a note when prompts plus new tokens overflow the model's context."""
    from mipo.evaluate.generation import generate_responses, render_prompts

    c = run.config
    prompt_ids, context = render_prompts(resolved, _prompts(run, ds))
    limit = c.generation.max_new_tokens if ds.kind == "pmi" else c.math_token_limit()
    too_long = sum(len(ids) + limit > context for ids in prompt_ids) if context else 0
    if too_long:
        run.note(
            role,
            ds,
            f"{ds.name}, {role}: {too_long} prompt(s) plus {limit} new tokens exceed "
            f"the model's context of {context} tokens"
            + (" (lower --set math_shots=N)" if ds.kind == "math" else ""),
        )
    results = generate_responses(
        resolved,
        prompt_ids,
        replace(c.generation, max_new_tokens=limit),
        progress=f"eval: generating {ds.name} ({role})",
    )
    run.add_columns(
        ds,
        pl.Series(f"response_{role}", [r.text for r in results], dtype=pl.String),
        pl.Series(f"finish_reason_{role}", [r.finish_reason for r in results], dtype=pl.String),
        pl.Series(f"prompt_tokens_{role}", [len(ids) for ids in prompt_ids], dtype=pl.Int64),
    )


def _prompts(run: _Evaluation, ds: EvalDataset) -> list[list[dict[str, str]]]:
    """The chat prompts a pmi or math file asks the models to answer."""
    if ds.kind == "pmi":
        return ds.frame["prompt"].to_list()
    return [math_messages(q, run.exemplars) for q in ds.frame["question"]]


# --- scoring: choices and math ----------------------------------------------------------------


def _score_choice_files(run: _Evaluation, role: str, resolved: Any) -> None:
    """Load ``role``'s model once and score every choice file not read from the cache."""
    from mipo.models import load_model

    c = run.config
    choices = [ds for ds in run.of_kind("choice") if (role, ds.name) not in run.cached]
    if not choices:
        return
    loaded = load_model(
        resolved.path,
        device=c.device_for_scoring(),
        dtype=c.generation.dtype,
        trust_remote_code=c.trust_remote_code,
    )
    for ds in choices:
        _score_choices(run, ds, role, loaded)
    del loaded


def _score_choices(run: _Evaluation, ds: EvalDataset, role: str, loaded: tuple[Any, Any]) -> None:
    """``role``'s pick among each question's options, by summed and by per-token mean
    log-likelihood, and whether each is correct."""
    from mipo.scoring import score_responses

    prompts, options, owner = [], [], []
    for i, row in enumerate(ds.frame.iter_rows(named=True)):
        for option in row["choices"]:
            prompts.append([{"role": "user", "content": row["question"]}])
            options.append(option)
            owner.append(i)
    scored = score_responses(
        loaded,
        prompts,
        options,
        batch_size=run.config.generation.batch_size,
        progress=f"eval: scoring choices {ds.name} ({role})",
    )
    sums: list[list[float]] = [[] for _ in range(ds.frame.height)]
    means: list[list[float]] = [[] for _ in range(ds.frame.height)]
    for i, logprob, tokens in zip(owner, scored["logprob"], scored["num_tokens"], strict=True):
        sums[i].append(logprob)
        means[i].append(logprob / max(tokens, 1))
    gold = ds.frame["answer_index"].to_list()
    pick = [max(range(len(s)), key=s.__getitem__) for s in sums]
    pick_norm = [max(range(len(s)), key=s.__getitem__) for s in means]
    run.add_columns(
        ds,
        pl.Series(f"pick_{role}", pick, dtype=pl.Int64),
        pl.Series(f"correct_{role}", [p == g for p, g in zip(pick, gold, strict=True)]),
        pl.Series(f"correct_norm_{role}", [p == g for p, g in zip(pick_norm, gold, strict=True)]),
    )


def _grade_math(run: _Evaluation) -> None:
    """Each role's extracted final number on every math question, and whether it is correct."""
    from mipo.evaluate.answers import extract_number, math_correct

    for ds in run.of_kind("math"):
        answers = run.rows[ds.name]["answer"].to_list()
        for role in run.roles:
            texts = run.rows[ds.name][f"response_{role}"].to_list()
            run.add_columns(
                ds,
                pl.Series(f"extracted_{role}", [extract_number(t) for t in texts], dtype=pl.String),
                pl.Series(
                    f"correct_{role}",
                    [math_correct(t, a) for t, a in zip(texts, answers, strict=True)],
                ),
            )


# --- contrasts: PMI under the reference ---------------------------------------------------------


def _score_contrasts(run: _Evaluation, workdir: Path) -> None:
    """Score every role's responses to the pmi files under the reference: PMI against each
    contrast set, and the copying / context-word / persona controls beside it."""
    pmi_sets = run.of_kind("pmi")
    if not pmi_sets:
        return
    run.paths["reference"] = str(_resolved_path(run.reference, run.config.trust_remote_code))
    todo = [(ds, r) for ds in pmi_sets for r in run.roles if (r, ds.name) not in run.cached]
    reference = run.load(run.reference, workdir) if todo else None
    for ds in pmi_sets:
        if not ds.has_context:
            run.notes.append(
                f"{ds.name}: no user context, so no same-question (other users' contexts) "
                "or context-drop contrasts"
            )
        for role in run.roles:
            if (role, ds.name) not in run.cached:
                run.add_columns(ds, *_contrast_columns(run, reference, ds, role))


def _contrast_columns(
    run: _Evaluation, reference: Any, ds: EvalDataset, role: str
) -> list[pl.Series]:
    """``role``'s per-row PMI columns (every contrast and estimator) and control columns on
    one pmi file."""
    from mipo.evaluate.controls import context_word_share, copied_ngram_share, speaks_as_user
    from mipo.scoring import pmi_scores

    frame = run.rows[ds.name]
    contexts = frame["context"].to_list()
    responses = frame[f"response_{role}"]
    scores = pmi_scores(
        reference,
        frame["prompt"],
        responses,
        k=run.config.k,
        seed=run.config.seed,
        contexts=contexts if ds.has_context else None,
        nocontext=frame["prompt_nocontext"] if ds.has_context else None,
        users=frame["user_id"].to_list() if ds.has_users else None,
        batch_size=run.config.generation.batch_size,
        prompt_format=ds.prompt_format,
        progress=f"eval: scoring PMI {ds.name} ({role})",
    )
    texts = responses.to_list()
    copied = [copied_ngram_share(r, c) for r, c in zip(texts, contexts, strict=True)]
    words = [context_word_share(r, c) for r, c in zip(texts, contexts, strict=True)]
    persona = [speaks_as_user(r, c) for r, c in zip(texts, contexts, strict=True)]
    return [
        *(s.alias(f"{s.name}_{role}") for s in scores.iter_columns()),
        pl.Series(f"copy_share_{role}", copied, dtype=pl.Float64),
        pl.Series(f"context_words_{role}", words, dtype=pl.Float64),
        pl.Series(f"persona_{role}", persona, dtype=pl.Float64),
    ]


# --- the result cache -------------------------------------------------------------------------


def _cache_settings(run: _Evaluation, ds: EvalDataset) -> dict[str, Any]:
    """Everything a role's per-row results on ``ds`` depend on, besides the weights."""
    c = run.config
    g = c.generation
    settings: dict[str, Any] = {
        "mipo": __version__,
        "kind": ds.kind,
        "limit": c.limit,
        "seed": c.seed,
        "temperature": g.temperature,
        "top_p": g.top_p,
        "batch_size": g.batch_size,
        "backend": g.backend,
        "device": g.device,
        # The dtype actually used (``auto`` resolves per machine): a baseline cached in
        # fp32 is never compared with a model scored in bf16.
        "dtype": run.resolved_dtype(),
        # Set only (as recorded before generation was one nested config): the vLLM settings
        # that can change the text.
        "vllm": {
            k: getattr(g, k)
            for k in ("max_model_len", "vllm_args")
            if getattr(g, k) not in (None, {})
        },
    }
    if ds.kind == "pmi":
        settings.update(
            max_new_tokens=g.max_new_tokens, k=c.k, context_format=ds.prompt_format.spec
        )
    if ds.kind == "math":
        settings.update(max_new_tokens=c.math_token_limit(), exemplars=run.exemplars)
    return settings


def _read_cache(run: _Evaluation, role: str, path: Path) -> None:
    """Look up every dataset of ``role`` (the model at ``path``) in the cache and take the
    results found."""
    from mipo.evaluate.cache import ResultCache, content_digest

    if run.config.cache_dir is None:
        return
    cache = ResultCache(run.config.cache_dir)
    weights = content_digest(path, suffixes=(".safetensors", ".bin"))
    reference = None
    for ds in run.datasets:
        if ds.kind == "pmi" and reference is None:
            reference = _reference_digest(run)
        key = cache.key(
            weights=weights,
            data=content_digest(ds.path),
            name=ds.name,
            reference=reference if ds.kind == "pmi" else None,
            settings=_cache_settings(run, ds),
        )
        run.cache_keys[(role, ds.name)] = key
        hit = cache.load(key, role)
        if hit is None:
            continue
        columns, notes = hit
        run.rows[ds.name] = pl.concat([run.rows[ds.name], columns], how="horizontal")
        for note in notes:
            run.note(role, ds, note)
        run.cached.add((role, ds.name))
        logger.info("%s on %s: results read from the cache (%s)", role, ds.name, key)


def _reference_digest(run: _Evaluation) -> str:
    """The digest of the reference model's weights (PMI results depend on them)."""
    from mipo.evaluate.cache import content_digest
    from mipo.models import resolve_model_path

    path = resolve_model_path(run.reference, trust_remote_code=run.config.trust_remote_code)
    return content_digest(path, suffixes=(".safetensors", ".bin"))


def _save_cache(run: _Evaluation) -> None:
    """Store the per-row results of every (role, dataset) computed in this run."""
    from mipo.evaluate.cache import ResultCache

    if run.config.cache_dir is None:
        return
    cache = ResultCache(run.config.cache_dir)
    for (role, name), key in run.cache_keys.items():
        if (role, name) not in run.cached:
            cache.save(key, role, run.rows[name], run.cache_notes.get((role, name), []))


# --- judging ----------------------------------------------------------------------------------


def _judge(run: _Evaluation, workdir: Path) -> None:
    """A judge scores both models' responses to the pmi files with a user context (or a note
    says why not)."""
    pmi_sets = run.of_kind("pmi")
    if not pmi_sets:
        return
    skipped = _judge_skipped(run, pmi_sets)
    if skipped:
        run.notes.append(skipped)
        return
    server = run.config.server_judge() if run.config.judge_url else None
    local = None if server else run.load(str(run.config.judge), workdir)
    for ds in [ds for ds in pmi_sets if ds.has_context]:
        for role in run.roles:
            run.add_columns(ds, _judge_columns(run, ds, role, server, local))
        run.judged.append(ds.name)
    if server is not None:
        run.server_calls = server.calls


def _judge_skipped(run: _Evaluation, pmi_sets: list[EvalDataset]) -> str | None:
    """Why the judged win rate cannot be computed (a note for the report), or None."""
    if not run.config.judge and not run.config.judge_url:
        return (
            "judged win rate skipped: no judge (pass --judge MODEL, or --judge-url URL "
            "--judge-model NAME for a server; mipo run: --set judge=MODEL)"
        )
    if not run.has_baseline:
        return "judged win rate skipped: it compares two models, pass --compare"
    if not any(ds.has_context for ds in pmi_sets):
        return "judged win rate skipped: the prompt data holds no user context"
    return None


def _judge_columns(
    run: _Evaluation, ds: EvalDataset, role: str, server: Any, local: Any
) -> list[pl.Series]:
    """The judge's per-row scores of ``role``'s responses: from a judge server (with its
    unparsed replies and ratings asked) or from a local judge model (with expected scores)."""
    from mipo.evaluate.judge import judge_scores

    frame = run.rows[ds.name]
    args = (
        frame["context"].to_list(),
        frame["question"].to_list(),
        frame[f"response_{role}"].to_list(),
    )
    label = f"eval: judging {ds.name} ({role})"
    if server is not None:
        scores = server.score(*args, progress=label)
        return [
            scores["score"].alias(f"judge_score_{role}"),
            scores["score"].alias(f"judge_expected_{role}"),
            scores["unparsed"].alias(f"judge_unparsed_{role}"),
            scores["preferences"].alias(f"judge_preferences_{role}"),
        ]
    scores = judge_scores(local, *args, batch_size=run.config.generation.batch_size, progress=label)
    return [
        scores["score"].alias(f"judge_score_{role}"),
        scores["expected_score"].alias(f"judge_expected_{role}"),
    ]


# --- writing ----------------------------------------------------------------------------------


def _write(run: _Evaluation, runtime_s: float) -> EvalResult:
    """Write the per-row results, report.md, report.html and metrics.json."""
    from mipo.evaluate.report import Report

    report = Report("mipo evaluation report")
    metrics = _metrics_header(run)
    _write_setup(run, report)
    plots: list[str] = []
    sections = ReportSections(
        run.config,
        run.roles,
        run.outdir,
        run.notes,
        shots=len(run.exemplars),
        server_calls=run.server_calls,
    )
    for ds in run.datasets:
        frame = run.rows[ds.name]
        write_parquet_atomic(frame, run.outdir / f"{ds.kind}_{ds.name}.parquet")
        if ds.kind == "pmi":
            metrics["pmi"][ds.name] = sections.pmi(ds, frame, report, plots)
            if ds.name in run.judged:
                metrics["judge"][ds.name] = sections.judge(ds, frame, report)
        else:
            section = "multiple_choice" if ds.kind == "choice" else "math"
            metrics[section][ds.name] = sections.accuracy(ds, frame, report)
    headline = personalization_headline(metrics["pmi"], run.config.k)
    if headline is not None:
        metrics["personalization"] = headline
    training = sections.training(report, plots)
    if training:
        metrics["training"] = training
    if run.notes:
        report.heading("Notes")
        report.bullets(run.notes)
    metrics["notes"] = run.notes
    metrics["plots"] = plots
    metrics["runtime_s"] = runtime_s
    return _write_files(run.outdir, report, metrics)


def _metrics_header(run: _Evaluation) -> dict[str, Any]:
    """``metrics.json`` before any dataset's section: the models, the resolved config, the
    dtype and context format, empty per-kind sections and the math setup."""
    c = run.config
    metrics: dict[str, Any] = {
        "models": {
            "model": c.model,
            "baseline": c.compare,
            "reference": run.reference,
            "reference_source": run.reference_source,
            "judge": c.judge_name if run.judged else None,
            "paths": run.paths,
        },
        # The resolved config in its own schema: `mipo eval --config metrics.json` repeats it.
        "config": to_mapping(c),
        # What the numbers were computed with: every model is generated and scored in this
        # dtype, and its prompts put the user's context where this format says.
        "dtype": run.resolved_dtype(),
        "context_format": c.context_format,
        "pmi": {},
        "multiple_choice": {},
        "math": {},
        "judge": {},
    }
    if run.of_kind("math"):
        from mipo.evaluate.datasets import MATH_FEWSHOT_PATH

        metrics["math_setup"] = {
            "shots": len(run.exemplars),
            "examples_file": str(c.math_fewshot or MATH_FEWSHOT_PATH) if run.exemplars else None,
            "max_new_tokens": c.math_token_limit(),
        }
    return metrics


def _write_setup(run: _Evaluation, report: Any) -> None:
    """The report's opening: the models in each role, then how generation and intervals were
    done."""
    c = run.config
    report.heading("Models")
    model_rows = [["model", c.model]]
    if run.has_baseline:
        model_rows.append(["baseline", str(c.compare)])
    if run.of_kind("pmi"):
        model_rows.append(["reference (PMI)", f"{run.reference} — {run.reference_source}"])
    if run.judged:
        model_rows.append(["judge", str(c.judge_name)])
    report.table(["role", "model"], model_rows)
    report.paragraph(
        f"Generation: temperature {c.generation.temperature}, top-p {c.generation.top_p}, "
        f"seed {c.seed} (the same "
        f"per-row seeds for every model); every model generated and scored in "
        f"{run.resolved_dtype()}; user context in the prompt as `{c.context_format}` "
        "(--context-format). Intervals: 95% percentile bootstrap "
        f"({c.n_bootstrap} resamples) over clusters: users (crossed with questions when a "
        "question repeats) for prompt files, questions for choice and math files; "
        "differences are paired by prompt."
    )


def _write_files(outdir: Path, report: Any, metrics: dict[str, Any]) -> EvalResult:
    """Write report.md, report.html and metrics.json into ``outdir``."""
    files = {
        "report.md": report.to_markdown(),
        "report.html": report.to_html(),
        "metrics.json": json.dumps(finite_json(metrics), indent=2, default=str),
    }
    for name, text in files.items():
        write_text_atomic(text, outdir / name)
    return EvalResult(
        output_dir=outdir,
        report_md=outdir / "report.md",
        report_html=outdir / "report.html",
        metrics_json=outdir / "metrics.json",
        metrics=metrics,
    )


def _resolved_path(spec: str, trust_remote_code: bool) -> Path:
    """Where a model spec resolves on disk."""
    from mipo.models import resolve_model_path

    return resolve_model_path(spec, trust_remote_code=trust_remote_code)
