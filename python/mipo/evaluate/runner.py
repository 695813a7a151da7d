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
    from mipo.evaluate.datasets import load_dataset, load_fewshot

    started = time.perf_counter()
    outdir = Path(output_dir)
    if (outdir / "metrics.json").exists() and not config.overwrite:
        raise OutputError(f"{outdir} already holds an evaluation: pass --overwrite or another -o")
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
        self.server_calls: int | None = None  # requests made by a judge server
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

    def resolved_dtype(self) -> str:
        """The dtype every model is generated and scored in (``auto`` resolved here)."""
        from mipo.models import default_device, select_dtype

        generation = self.config.generation
        device = default_device() if generation.device == "auto" else generation.device
        return str(select_dtype(device, generation.dtype)).removeprefix("torch.")

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
            dtype=self.config.generation.dtype,
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
                limit = c.generation.max_new_tokens if ds.kind == "pmi" else c.math_token_limit()
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
                    replace(c.generation, max_new_tokens=limit),
                    progress=f"eval: generating {ds.name} ({role})",
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
                    dtype=c.generation.dtype,
                    trust_remote_code=c.trust_remote_code,
                )
                for ds in choices:
                    self._score_choices(ds, role, loaded)
                del loaded

    # --- the result cache ---------------------------------------------------------------------

    def _settings(self, ds: EvalDataset) -> dict[str, Any]:
        """Everything a role's per-row results on ``ds`` depend on, besides the weights."""
        c = self.config
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
            "dtype": self.resolved_dtype(),
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
        scored = score_responses(
            loaded,
            prompts,
            options,
            batch_size=self.config.generation.batch_size,
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
        from mipo.evaluate.controls import (
            context_word_share,
            copied_ngram_share,
            speaks_as_user,
        )
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
                    batch_size=self.config.generation.batch_size,
                    prompt_format=ds.prompt_format,
                    progress=f"eval: scoring PMI {ds.name} ({role})",
                )
                texts = responses.to_list()
                copied = [copied_ngram_share(r, c) for r, c in zip(texts, contexts, strict=True)]
                words = [context_word_share(r, c) for r, c in zip(texts, contexts, strict=True)]
                persona = [speaks_as_user(r, c) for r, c in zip(texts, contexts, strict=True)]
                frame = frame.with_columns(
                    *(s.alias(f"{s.name}_{role}") for s in scores.iter_columns()),
                    pl.Series(f"copy_share_{role}", copied, dtype=pl.Float64),
                    pl.Series(f"context_words_{role}", words, dtype=pl.Float64),
                    pl.Series(f"persona_{role}", persona, dtype=pl.Float64),
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
                label = f"eval: judging {ds.name} ({role})"
                if server is not None:
                    scores = server.score(*args, progress=label)
                    columns = [
                        scores["score"].alias(f"judge_score_{role}"),
                        scores["score"].alias(f"judge_expected_{role}"),
                        scores["unparsed"].alias(f"judge_unparsed_{role}"),
                        scores["preferences"].alias(f"judge_preferences_{role}"),
                    ]
                else:
                    scores = judge_scores(
                        local, *args, batch_size=self.config.generation.batch_size, progress=label
                    )
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
            # The resolved config in its own schema: `mipo eval --config metrics.json` repeats it.
            "config": to_mapping(c),
            # What the numbers were computed with: every model is generated and scored in this
            # dtype, and its prompts put the user's context where this format says.
            "dtype": self.resolved_dtype(),
            "context_format": c.context_format,
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
            f"Generation: temperature {c.generation.temperature}, top-p {c.generation.top_p}, "
            f"seed {c.seed} (the same "
            f"per-row seeds for every model); every model generated and scored in "
            f"{self.resolved_dtype()}; user context in the prompt as `{c.context_format}` "
            "(--context-format). Intervals: 95% percentile bootstrap "
            f"({c.n_bootstrap} resamples) over clusters: users (crossed with questions when a "
            "question repeats) for prompt files, questions for choice and math files; "
            "differences are paired by prompt."
        )
        plots: list[str] = []
        sections = ReportSections(
            c,
            self.roles,
            self.outdir,
            self.notes,
            shots=len(self.exemplars),
            server_calls=self.server_calls,
        )
        for ds in self.datasets:
            frame = self.rows[ds.name]
            write_parquet_atomic(frame, self.outdir / f"{ds.kind}_{ds.name}.parquet")
            if ds.kind == "pmi":
                metrics["pmi"][ds.name] = sections.pmi(ds, frame, report, plots)
                if ds.name in self.judged:
                    metrics["judge"][ds.name] = sections.judge(ds, frame, report)
            else:
                section = "multiple_choice" if ds.kind == "choice" else "math"
                metrics[section][ds.name] = sections.accuracy(ds, frame, report)
        headline = personalization_headline(metrics["pmi"], self.config.k)
        if headline is not None:
            metrics["personalization"] = headline
        training = sections.training(report, plots)
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


def _resolved_path(spec: str, trust_remote_code: bool) -> Path:
    from mipo.models import resolve_model_path

    return resolve_model_path(spec, trust_remote_code=trust_remote_code)
