"""The report's sections of ``mipo eval``: per dataset, its statistics (the part of
``metrics.json`` it fills) and its headings, tables, findings and plots in the report.

:class:`ReportSections` writes the PMI, judged win rate, multiple-choice / math and training
sections from the per-row results of :mod:`mipo.evaluate.runner`;
:func:`personalization_headline` picks the headline gain. Rendering (Markdown, HTML, plots)
is :mod:`mipo.evaluate.report`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

if TYPE_CHECKING:
    from mipo.evaluate.config import EvalConfig
    from mipo.evaluate.datasets import EvalDataset

__all__ = [
    "EXAMPLES_SHOWN",
    "FLUENCY_FLOOR",
    "PERSONA_MARGIN",
    "SHORTCUTS",
    "ReportSections",
    "personalization_headline",
    "pick_examples",
    "reader_criteria",
    "render_examples",
]

EXAMPLES_SHOWN = 4
"""Base-vs-tuned examples each report shows, drawn with the evaluation seed (never picked)."""
_EXAMPLE_CHARS = 400


SHORTCUTS = (
    ("copying", "copy_share"),
    ("context words", "context_words"),
    ("persona", "persona"),
    ("length", "num_tokens"),
    ("fluency", "logprob_per_token"),
)
"""The covariates a PMI gain is checked against (:func:`mipo.evaluate.controls.explain_gain`):
label -> per-row column."""


class ReportSections:
    """Writes one section per dataset into a :class:`~mipo.evaluate.report.Report` and returns
    its statistics; notes for the report's Notes go to ``notes`` (shared with the runner)."""

    def __init__(
        self,
        config: EvalConfig,
        roles: dict[str, str],
        outdir: Path,
        notes: list[str],
        *,
        shots: int,
        server_calls: int | None = None,
    ) -> None:
        self.config = config
        self.roles = roles
        self.has_baseline = "baseline" in roles
        self.outdir = outdir
        self.notes = notes
        self.shots = shots
        self.server_calls = server_calls
        self.ci: dict[str, int] = {"n_resamples": config.n_bootstrap, "seed": config.seed}

    def _clusters(self, ds: EvalDataset, frame: pl.DataFrame) -> dict[str, Any]:
        """Cluster keys of a pmi file's rows for the bootstrap (see
        :func:`mipo.evaluate.stats.prompt_clusters`)."""
        from mipo.evaluate.stats import prompt_clusters

        users = frame["user_id"].to_list() if ds.has_users else None
        return prompt_clusters(users, frame["question"].to_list())

    def pmi(
        self, ds: EvalDataset, frame: pl.DataFrame, report: Any, plots: list[str]
    ) -> dict[str, Any]:
        """The PMI section of one prompt file: its statistics, the table of every estimate and
        control, the check of the gain against the shortcuts, the plot and the examples."""
        from mipo.scoring import CONTRASTS

        contrasts = [k for k in CONTRASTS if f"pmi_{k}_model" in frame.columns]
        stats = self._pmi_statistics(ds, frame, contrasts)
        _write_pmi_intro(report, ds, frame, stats["resampling"], self.config)
        report.table(_headers(self.has_baseline), _pmi_table(stats, contrasts, self.has_baseline))
        report.paragraph(_contrast_counts_sentence(stats["contrasts"], contrasts))
        if self.has_baseline:
            stats["findings"] = _write_shortcut_check(report, stats, contrasts)
        plots.append(self._pmi_plot(ds, frame, contrasts, report))
        if self.has_baseline:
            stats["examples"] = pick_examples(frame, EXAMPLES_SHOWN, seed=self.config.seed)
            render_examples(report, stats["examples"], heading=f"Examples — {ds.name}")
        return stats

    def _pmi_statistics(
        self, ds: EvalDataset, frame: pl.DataFrame, contrasts: list[str]
    ) -> dict[str, Any]:
        """Each role's intervals of every PMI-section value, the resampling units, the contrast
        counts and, with a baseline, the paired differences and the shortcut controls."""
        from mipo.evaluate.stats import bootstrap_ci, paired_bootstrap_ci, resampling_label

        c = self.config
        keys = _pmi_keys(contrasts)
        groups = self._clusters(ds, frame)
        ci = {**self.ci, **groups}
        stats: dict[str, Any] = {
            role: {key: bootstrap_ci(_pmi_column(frame, key, role), **ci) for key in keys}
            for role in self.roles
        }
        stats["resampling"] = {
            "units": resampling_label(
                groups["clusters"], groups["crossed"], users=groups["cluster_kind"] == "users"
            ),
            "users": len(set(groups["clusters"])) if ds.has_users else None,
            "questions": frame["question"].n_unique(),
            "n_resamples": c.n_bootstrap,
        }
        stats["contrasts"] = _contrast_counts(frame, contrasts, c.k)
        if self.has_baseline:
            stats["difference"] = {
                key: paired_bootstrap_ci(
                    _pmi_column(frame, key, "model"), _pmi_column(frame, key, "baseline"), **ci
                )
                for key in keys
            }
            stats["controls"] = {
                kind: _shortcut_control(frame, kind, groups, c) for kind in contrasts
            }
        return stats

    def _pmi_plot(
        self, ds: EvalDataset, frame: pl.DataFrame, contrasts: list[str], report: Any
    ) -> str:
        """Plot each role's PMI distribution (same-question contrast where there is one), put
        it in the report and return the file's name."""
        from mipo.evaluate.report import plot_distributions

        shown = "same_question" if "same_question" in contrasts else "random"
        png = f"pmi_{ds.name}.png"
        plot_distributions(
            {role: frame[f"pmi_{shown}_{role}"].to_list() for role in self.roles},
            self.outdir / png,
            title=f"PMI of generated responses under the reference — {ds.name}",
            xlabel=f"PMI ({_CONTRAST_NAMES[shown]}), nats",
        )
        report.image(png, f"PMI distributions, {ds.name}")
        return png

    def judge(self, ds: EvalDataset, frame: pl.DataFrame, report: Any) -> dict[str, Any]:
        """The judged win-rate section of one prompt file: wins, ties and losses, the win rates
        and mean scores with intervals, and how the judge scored."""
        from mipo.evaluate.report import fmt_ci

        stats = self._judge_statistics(ds, frame)
        report.heading(f"Judged personalization — {ds.name}")
        name = self.config.judge_name
        if self.config.judge_url:
            self._judge_server_counts(frame, stats, report)
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
                "nothing about the models: pass a stronger judge with --judge MODEL "
                "(mipo run: --set judge=MODEL)"
            )
        report.table(
            ["measure", "value"],
            [
                [
                    "wins / ties / losses",
                    f"{stats['wins']} / {stats['ties']} / {stats['losses']}",
                ],
                ["win rate, ties as wins (paper)", fmt_ci(stats["win_rate_ties_as_wins_ci"])],
                ["win rate, ties as half", fmt_ci(stats["win_rate_ties_as_half_ci"])],
                ["mean score, model", fmt_ci(stats["model_score"])],
                ["mean score, baseline", fmt_ci(stats["baseline_score"])],
                ["expected score, model − baseline", fmt_ci(stats["expected_score_difference"])],
            ],
        )
        return stats

    def _judge_statistics(self, ds: EvalDataset, frame: pl.DataFrame) -> dict[str, Any]:
        """Wins, ties and losses, the win rates (ties as wins, ties as half) and each model's
        scores with their intervals, and whether the judge gave one score to everything."""
        from mipo.evaluate.judge import win_rates
        from mipo.evaluate.stats import bootstrap_ci, paired_bootstrap_ci

        model = frame["judge_score_model"].to_list()
        baseline = frame["judge_score_baseline"].to_list()
        rates = win_rates(model, baseline)
        half = [
            None if m is None or b is None else (1.0 if m > b else 0.5 if m == b else 0.0)
            for m, b in zip(model, baseline, strict=True)
        ]
        as_wins = [None if h is None else float(h >= 0.5) for h in half]
        ci = {**self.ci, **self._clusters(ds, frame)}
        given = {score for score in (*model, *baseline) if score is not None}
        return {
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

    def _judge_server_counts(self, frame: pl.DataFrame, stats: dict[str, Any], report: Any) -> None:
        """For a judge server: the ratings asked and left unparsed (into ``stats``), the
        paragraph on how it rated, and a note when some replies were not a score."""
        name = self.config.judge_name
        unparsed = {role: int(frame[f"judge_unparsed_{role}"].sum()) for role in self.roles}
        asked = {role: int(frame[f"judge_preferences_{role}"].sum()) for role in self.roles}
        stats["unparsed"] = unparsed
        stats["ratings_asked"] = asked
        stats["requests_made"] = self.server_calls
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

    def accuracy(self, ds: EvalDataset, frame: pl.DataFrame, report: Any) -> dict[str, Any]:
        """The section of one multiple-choice or math file: each role's accuracy (and, for math,
        how often an answer was found or cut off) with intervals, paired model − baseline."""
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
            shots = self.shots
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

    def training(self, report: Any, plots: list[str]) -> dict[str, Any] | None:
        """The training section (from the evaluated model's train_log.jsonl, when there is one):
        steps, first and final loss, final reward margin and accuracy, and the curves."""
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


def pick_examples(frame: pl.DataFrame, n: int, *, seed: int) -> list[dict[str, Any]]:
    """``n`` rows of a pmi file's results drawn uniformly with ``seed`` (so a reader sees what
    changed without anyone choosing what to show): context, question, both responses, whether
    each speaks as the user, and the same-question PMI of each.

    >>> rows = pl.DataFrame({"id": ["a", "b"], "context": ["c", "d"], "question": ["q", "r"],
    ...     "response_model": ["m1", "m2"], "response_baseline": ["b1", "b2"]})
    >>> [e["id"] for e in pick_examples(rows, 1, seed=0)]
    ['b']
    """
    import random

    order = sorted(random.Random(seed).sample(range(frame.height), min(n, frame.height)))
    out = []
    for i in order:
        row = frame.row(i, named=True)
        example: dict[str, Any] = {
            "id": row.get("id"),
            "user_id": row.get("user_id"),
            "context": row.get("context") or "",
            "question": row.get("question") or "",
        }
        for role in ("baseline", "model"):
            example[role] = row.get(f"response_{role}")
            example[f"persona_{role}"] = row.get(f"persona_{role}")
            example[f"pmi_{role}"] = row.get(f"pmi_same_question_{role}")
        out.append(example)
    return out


def render_examples(report: Any, examples: list[dict[str, Any]], *, heading: str) -> None:
    """The examples of :func:`pick_examples` as a report section (long texts shortened)."""
    from mipo.evaluate.report import fmt_number

    if not examples:
        return

    def cell(example: dict[str, Any], role: str) -> str:
        text = _shorten(example.get(role) or "")
        flag = " [speaks as the user]" if example.get(f"persona_{role}") == 1.0 else ""
        pmi = example.get(f"pmi_{role}")
        return text + flag + (f" (PMI {fmt_number(pmi, 1)})" if pmi is not None else "")

    report.heading(heading)
    report.paragraph(
        f"{len(examples)} held-out prompts drawn at random with the evaluation seed (not "
        "chosen), the baseline's and the model's answers side by side; '[speaks as the user]' "
        "marks an answer that restates the user's context in the first person; PMI is the "
        "same-question contrast."
    )
    report.table(
        ["user context", "question", "baseline", "model"],
        [
            [_shorten(e["context"]), _shorten(e["question"]), cell(e, "baseline"), cell(e, "model")]
            for e in examples
        ],
    )


def _shorten(text: str) -> str:
    """A text on one line, cut to the examples' width."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= _EXAMPLE_CHARS else flat[: _EXAMPLE_CHARS - 1] + "…"


FLUENCY_FLOOR = -0.15
"""How far log π_ref(y|x) per token may fall (nats) before a gain is read as lost fluency."""
PERSONA_MARGIN = 0.05
"""How much more often than the baseline the model may speak as the user (share of answers)."""


def reader_criteria(
    headline: dict[str, Any], accuracy_differences: list[dict[str, Any] | None] = ()
) -> dict[str, bool]:
    """Whether a personalization gain is one a reader would call personal (the bar a default
    must clear): the same-question gain and its adjusted form (copying, context words, persona,
    length and fluency regressed out) both have intervals above 0; fluency falls by no more than
    :data:`FLUENCY_FLOOR` nats per token; persona adoption rises by at most
    :data:`PERSONA_MARGIN`; and no accuracy difference has an interval below 0.

    >>> ok = {"low": 1.0, "high": 2.0, "mean": 1.5, "n": 9}
    >>> h = {"gain": ok, "adjusted_gain": {"all": ok},
    ...      "logprob_per_token_change": {"mean": -0.4}, "persona_change": {"mean": 0.0}}
    >>> [name for name, met in reader_criteria(h).items() if not met]
    ['fluency change >= -0.15 nats/token']
    """

    def above(stat: dict[str, Any] | None) -> bool:
        return bool(stat and stat.get("n", 1) and (stat.get("low") or 0) > 0)

    def mean(stat: dict[str, Any] | None) -> float | None:
        value = (stat or {}).get("mean")
        return None if value is None else float(value)

    fluency = mean(headline.get("logprob_per_token_change"))
    persona = mean(headline.get("persona_change"))
    lost = [d for d in accuracy_differences if d and d.get("high") is not None and d["high"] < 0]
    return {
        "same-question gain above 0": above(headline.get("gain")),
        "adjusted gain above 0": above((headline.get("adjusted_gain") or {}).get("all")),
        f"fluency change >= {FLUENCY_FLOOR:g} nats/token": fluency is not None
        and fluency >= FLUENCY_FLOOR,
        f"persona adoption <= baseline + {PERSONA_MARGIN:g}": persona is not None
        and persona <= PERSONA_MARGIN,
        "no accuracy lost": not lost,
    }


def personalization_headline(pmi: dict[str, Any], k: int) -> dict[str, Any] | None:
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
            "persona_model": stats["model"]["persona"],
            "persona_baseline": stats["baseline"]["persona"],
            "persona_change": difference["persona"],
            "length_change": difference["num_tokens"],
            "logprob_per_token_change": difference["logprob_per_token"],
            "resampling": stats["resampling"],
        }
    return None


def _train_log_path(config: EvalConfig) -> Path | None:
    """The evaluated model's training log: ``train_log``, else the one beside the model."""
    if config.train_log:
        return Path(config.train_log)
    path = Path(config.model)
    for candidate in (path / "train_log.jsonl", path.parent / "train_log.jsonl"):
        if candidate.is_file():
            return candidate
    return None


def _stat_row(label: str, stats: dict[str, Any], key: str, has_baseline: bool) -> list[str]:
    """One table row: a value's interval for the model and, with a baseline, for the
    baseline and the paired difference."""
    from mipo.evaluate.report import fmt_ci

    row = [label, fmt_ci(stats["model"].get(key))]
    if has_baseline:
        row += [fmt_ci(stats["baseline"].get(key)), fmt_ci(stats.get("difference", {}).get(key))]
    return row


def _headers(has_baseline: bool) -> list[str]:
    """The headers of a section's table (model only, or model, baseline and difference)."""
    if has_baseline:
        return ["metric", "model", "baseline", "model − baseline (paired)"]
    return ["metric", "model"]


def _per_token(values: list[float | None], tokens: list[int]) -> list[float | None]:
    """Each value divided by its token count (None where either is missing or zero)."""
    return [None if v is None or t == 0 else v / t for v, t in zip(values, tokens, strict=True)]


def _share(mask: pl.Series) -> float:
    """The share of True in a boolean column (0 when it is empty)."""
    mean = mask.cast(pl.Float64).mean()
    return float(mean) if isinstance(mean, int | float) else 0.0


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


# --- the PMI section's parts ---------------------------------------------------------------------

_CONTRAST_NAMES = {
    "random": "random",
    "same_question": "same question, other users",
    "context_drop": "context drop",
}


def _pmi_keys(contrasts: list[str]) -> list[str]:
    """The per-row values a PMI section summarises: the controls, then each contrast's four
    estimates."""
    keys = ["logprob", "logprob_per_token", "num_tokens", "copy_share", "context_words", "persona"]
    for kind in contrasts:
        keys += [
            f"pmi_{kind}",
            f"pmi_{kind}_infonce",
            f"pmi_{kind}_mean_log",
            f"pmi_{kind}_per_token",
        ]
    return keys


def _contrast_counts(frame: pl.DataFrame, contrasts: list[str], k: int) -> dict[str, Any]:
    """Per contrast, how many rows got fewer contrast prompts than wanted, and how many none."""
    counts: dict[str, Any] = {"k": k}
    for kind in contrasts:
        got = frame[f"num_contrasts_{kind}_model"]
        wanted = 1 if kind == "context_drop" else k
        counts[kind] = {
            "fewer_than_wanted": int(((got > 0) & (got < wanted)).sum()),
            "none": int((got == 0).sum()),
            "wanted": wanted,
        }
    return counts


def _shortcut_control(
    frame: pl.DataFrame, kind: str, groups: dict[str, Any], config: EvalConfig
) -> dict[str, Any]:
    """Whether copying, context words, persona, length or fluency explain one contrast's gain
    (:func:`mipo.evaluate.controls.explain_gain`)."""
    from mipo.evaluate.controls import explain_gain

    deltas = {name: _difference(frame, column) for name, column in SHORTCUTS}
    for name in ("copying", "context words", "persona"):
        if all(v is None for v in deltas[name]):
            deltas.pop(name)  # no context anywhere: nothing to copy
    return explain_gain(
        _difference(frame, f"pmi_{kind}"),
        deltas,
        n_resamples=config.n_bootstrap,
        seed=config.seed,
        **groups,
    )


def _write_pmi_intro(
    report: Any,
    ds: EvalDataset,
    frame: pl.DataFrame,
    resampling: dict[str, Any],
    config: EvalConfig,
) -> None:
    """The PMI section's heading and the paragraph defining the estimates and intervals."""
    users, questions = resampling["users"], resampling["questions"]
    units = {
        "users and questions": f"{users} users crossed with {questions} questions",
        "users": f"{users} users",
        "questions": f"{questions} questions (no user column)",
        "prompts": f"{frame.height} prompts",
    }[resampling["units"]]
    title = f"Pointwise mutual information — {ds.name} ({frame.height} prompts"
    report.heading(title + (f", {users} users)" if users else ")"))
    report.paragraph(
        "PMI(x, y) = log π_ref(y|x) − log (1/k) Σ_j π_ref(y|x'_j), the log-mean-exp estimate "
        f"of log π_ref(y|x) − log E_x' π_ref(y|x'), k = {config.k}, in nats; higher means the "
        "response is more specific to its prompt. Contrasts x': 'random' — other held-out "
        "prompts; 'same question, other users' — the prompt's own question asked with k "
        "other users' contexts (isolates personalization); 'context drop' — the question "
        "without its context (one contrast: log π(y|c,q) − log π(y|q)). 'InfoNCE' is the "
        "bounded estimate log π(y|x) − log (π(y|x) + Σ_j π(y|x'_j))/(k+1) ≤ log(k+1); "
        "'mean of logs' subtracts the mean log-probability instead (never below the "
        "headline, unbounded: secondary). Intervals: 95% percentile cluster bootstrap over "
        f"{units} ({config.n_bootstrap} resamples); model − baseline is paired by prompt."
    )


def _pmi_table(stats: dict[str, Any], contrasts: list[str], has_baseline: bool) -> list[list[str]]:
    """The PMI section's table rows: each estimate for each contrast, then the controls."""
    from mipo.evaluate.controls import COPY_NGRAM

    estimates = (
        ("**PMI ({})**", ""),
        ("PMI InfoNCE ({})", "_infonce"),
        ("PMI per token ({})", "_per_token"),
        ("secondary: mean of logs ({})", "_mean_log"),
    )
    labels = [
        (label.format(_CONTRAST_NAMES[kind]), f"pmi_{kind}{suffix}")
        for label, suffix in estimates
        for kind in contrasts
    ]
    labels += [
        (f"share of response {COPY_NGRAM}-grams copied from the context", "copy_share"),
        ("share of response content words found in the context", "context_words"),
        ("share of responses that speak as the user (persona adoption)", "persona"),
        ("response tokens", "num_tokens"),
        ("log π_ref(y|x) per token", "logprob_per_token"),
        ("log π_ref(y|x)", "logprob"),
    ]
    return [_stat_row(label, stats, key, has_baseline) for label, key in labels]


def _contrast_counts_sentence(counts: dict[str, Any], contrasts: list[str]) -> str:
    """One sentence on the rows that got fewer contrasts than asked for."""
    short = [
        f"{_CONTRAST_NAMES[kind]}: {counts[kind]['fewer_than_wanted']} with fewer than "
        f"{counts[kind]['wanted']}, {counts[kind]['none']} with none"
        for kind in contrasts
    ]
    return "Rows with fewer contrasts than asked for — " + "; ".join(short) + "."


def _write_shortcut_check(report: Any, stats: dict[str, Any], contrasts: list[str]) -> list[str]:
    """The table of each contrast's gain, raw and adjusted for each shortcut, and the findings
    under it (returned, for ``metrics.json``)."""
    from mipo.evaluate.report import fmt_ci

    rows = []
    findings = []
    for kind in contrasts:
        control = stats["controls"][kind]
        adjusted = control["adjusted"]
        row = [_CONTRAST_NAMES[kind], fmt_ci(control["raw"])]
        for key in [name for name, _ in SHORTCUTS] + ["all"]:
            row.append(fmt_ci({"n": 1, **adjusted[key]}) if key in adjusted else "–")
        rows.append(row)
        findings.append(_gain_finding(_CONTRAST_NAMES[kind], control))
    report.paragraph(
        "Does the gain survive the shortcuts? Per prompt, ΔPMI (model − baseline) is "
        "regressed on the change in the 3-gram copy share ('copying'), in the share of "
        "content words found in the context ('context words', which also catches the "
        "context restated in other words), in whether the response speaks as the user "
        "('persona': a first-person sentence claiming the context's details, see "
        "mipo.evaluate.controls.persona_sentence), in response tokens ('length') and in "
        "log π_ref(y|x) per token ('fluency'), one at a time and all together, over the "
        "prompts where every measure exists; the intercept is the gain predicted for "
        "responses that copy as much, reuse as many context words, speak as the user as "
        "often, are as long and as fluent as the baseline's (same cluster bootstrap)."
    )
    report.table(
        ["contrast", "gain"]
        + [f"adjusted for {name}" for name, _ in SHORTCUTS]
        + ["adjusted for all"],
        rows,
    )
    findings += _side_effect_findings(stats["difference"])
    report.bullets(findings)
    return findings


def _side_effect_findings(difference: dict[str, Any]) -> list[str]:
    """Findings on what a reader would hold against a gain: more persona adoption, less
    fluency."""
    from mipo.evaluate.report import fmt_ci

    findings = []
    persona = difference["persona"]
    if persona.get("n") and persona.get("low", 0) > 0:
        findings.append(
            "the model speaks as the user (restates their context in the first person) "
            f"more often than the baseline ({fmt_ci(persona)} of responses): a reader "
            "would not call that more personal"
        )
    fluency = difference["logprob_per_token"]
    if fluency.get("high", 0) < 0:
        findings.append(
            "the model's responses are less likely under the reference per token "
            f"({fmt_ci(fluency)} nats): some fluency was lost, read the gain with that "
            "in mind"
        )
    return findings
