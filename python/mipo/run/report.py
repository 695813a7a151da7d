"""The report of a ``mipo run``: one table of metrics per round, a plot across rounds, metrics.json.

It reads what the stages wrote (each round's ``eval/metrics.json`` and per-prompt
``eval/pmi_eval.parquet``, ``pairs/stats.json``, ``model/train_config.json`` and
``model/train_log.jsonl``), so it can be rebuilt at any time from a run folder.

The base model's column comes from round 1's evaluation (the baseline there); every round is
compared with the base (the paired intervals of its own evaluation) and with the round before
(a paired bootstrap over the two rounds' per-prompt values: same prompts, same seeds, same
reference, so the pairing is exact).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import polars as pl

from mipo.errors import OutputError
from mipo.evaluate.report import finite_json
from mipo.io import atomic_path, read_json_record, write_text_atomic

__all__ = ["round_metrics", "write_run_report"]

EVAL_NAME = "eval"
"""Stem of data/eval.parquet: it names the PMI section of every round's evaluation."""
# Per-prompt PMI-section values compared round against round (suffix _model in the parquet).
_PAIRED_KEYS = (
    "pmi_same_question",
    "pmi_random",
    "pmi_context_drop",
    "logprob",
    "copy_share",
    "context_words",
    "persona",
    "judge_expected",
)


def _train_summary(train_dir: Path) -> dict[str, Any]:
    """One round's training, from its train_config.json and train_log.jsonl: pairs, steps,
    learning rate, runtime, the model trained from, first/final loss and reward statistics."""
    from mipo.evaluate.report import read_train_log

    record = read_json_record(train_dir / "train_config.json") or {}
    resolved = record.get("resolved", {})
    summary: dict[str, Any] = {
        "pairs": record.get("num_pairs"),
        "steps": resolved.get("global_steps"),
        "learning_rate": resolved.get("learning_rate"),
        "runtime_s": record.get("train_runtime_s"),
        "trained_from": resolved.get("model"),
    }
    log = train_dir / "train_log.jsonl"
    steps = [e for e in read_train_log(log) if "loss" in e] if log.is_file() else []
    if steps:
        summary.update(
            first_loss=steps[0].get("loss"),
            final_loss=steps[-1].get("loss"),
            final_reward_margin=steps[-1].get("rewards/margins"),
            final_reward_accuracy=steps[-1].get("rewards/accuracies"),
            mean_reward_accuracy=_mean([e.get("rewards/accuracies") for e in steps]),
        )
    return summary


def _mean(values: list[Any]) -> float | None:
    """The mean of the finite numbers among ``values`` (None when there are none)."""
    clean = [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]
    return sum(clean) / len(clean) if clean else None


def _per_prompt(eval_dir: Path) -> pl.DataFrame | None:
    """A round's per-prompt PMI results (its evaluation's parquet), if written."""
    path = eval_dir / f"pmi_{EVAL_NAME}.parquet"
    return pl.read_parquet(path) if path.is_file() else None


def _paired(
    current: pl.DataFrame, previous: pl.DataFrame, previous_role: str, ci: dict[str, Any]
) -> dict[str, Any]:
    """Paired bootstrap of this round's model against ``previous_role`` of another evaluation
    (clustered as the evaluation's own intervals: users, crossed with repeated questions)."""
    from mipo.evaluate.stats import paired_bootstrap_ci, prompt_clusters

    if current["id"].to_list() != previous["id"].to_list():
        raise OutputError(
            "two rounds were evaluated on different held-out prompts; rerun with --overwrite"
        )
    users = current["user_id"].to_list() if "user_id" in current.columns else None
    ci = {**ci, **prompt_clusters(users, current["question"].to_list())}
    out = {}
    for key in _PAIRED_KEYS:
        mine, theirs = f"{key}_model", f"{key}_{previous_role}"
        if mine in current.columns and theirs in previous.columns:
            out[key] = paired_bootstrap_ci(
                current[mine].to_list(), previous[theirs].to_list(), **ci
            )
    return out


def round_metrics(out: Path, rounds: int, n_bootstrap: int, seed: int) -> list[dict[str, Any]]:
    """Metrics of each finished round of the run in ``out``: pairs, training, evaluation, and
    paired differences to the base and to the previous round."""
    ci = {"n_resamples": n_bootstrap, "seed": seed}
    found: list[dict[str, Any]] = []
    previous_rows: pl.DataFrame | None = None
    for number in range(1, rounds + 1):
        folder = out / f"round-{number}"
        evaluation = read_json_record(folder / "eval" / "metrics.json")
        if evaluation is None:
            break
        rows = _per_prompt(folder / "eval")
        pairs_stats = read_json_record(folder / "pairs" / "stats.json") or {}
        pmi = evaluation.get("pmi", {}).get(EVAL_NAME, {})
        judge = evaluation.get("judge", {}).get(EVAL_NAME)
        entry: dict[str, Any] = {
            "round": number,
            "pairs": {
                "written": pairs_stats.get("pairs", {}).get("pairs_written"),
                "generated_tokens": pairs_stats.get("generate", {}).get("new_tokens"),
                "prompts_planned": pairs_stats.get("plan", {}).get("prompts_planned"),
            },
            "train": _train_summary(folder / "model"),
            "pmi": pmi.get("model", {}),
            "base_pmi": pmi.get("baseline", {}),
            "vs_base": dict(pmi.get("difference", {})),
            "judge": judge,
            "personalization": evaluation.get("personalization"),
            "findings": pmi.get("findings", []),
            "examples": pmi.get("examples", []),
            "accuracy": {
                name: stats
                for section in ("multiple_choice", "math")
                for name, stats in evaluation.get(section, {}).items()
            },
            "eval_report": f"round-{number}/eval/report.md",
        }
        if entry["personalization"]:
            from mipo.evaluate.sections import reader_criteria

            entry["reader_criteria"] = reader_criteria(
                entry["personalization"],
                [
                    stats.get("difference", {}).get("accuracy")
                    for stats in entry["accuracy"].values()
                ],
            )
        if rows is not None:
            if number == 1:
                entry["vs_previous"] = _paired(rows, rows, "baseline", ci)
            elif previous_rows is not None:
                entry["vs_previous"] = _paired(rows, previous_rows, "model", ci)
        previous_rows = rows
        found.append(entry)
    return found


# --- rendering -----------------------------------------------------------------------------------


def _interval_points(ax: Any, points: list[tuple[int, dict[str, Any]]], **style: Any) -> None:
    """Means with their 95% interval as error bars, at the given x positions."""
    ax.errorbar(
        [i for i, _ in points],
        [s["mean"] for _, s in points],
        yerr=[
            [s["mean"] - s["low"] for _, s in points],
            [s["high"] - s["mean"] for _, s in points],
        ],
        marker="o",
        capsize=4,
        **style,
    )


def _plot_rounds(rounds: list[dict[str, Any]], path: Path) -> Path:
    """PMI of the base and of each round with 95% intervals, and the judged win rate."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    labels = ["base"] + [f"round {r['round']}" for r in rounds]
    x = list(range(len(labels)))
    with_judge = any(r.get("judge") for r in rounds)
    fig, axes = plt.subplots(1, 2 if with_judge else 1, figsize=(11 if with_judge else 6, 3.8))
    axes = list(axes) if with_judge else [axes]
    try:
        ax = axes[0]
        for key, label, color in (
            ("pmi_same_question", "PMI (same question, other users)", "C1"),
            ("pmi_random", "PMI (random contrasts)", "C0"),
            ("pmi_context_drop", "PMI (context drop)", "C2"),
        ):
            stats = [rounds[0]["base_pmi"].get(key)] + [r["pmi"].get(key) for r in rounds]
            points = [(i, s) for i, s in zip(x, stats, strict=True) if s and s.get("n")]
            if not points:
                continue
            _interval_points(ax, points, color=color, label=label)
        ax.set_xticks(x, labels)
        ax.set_ylabel("nats (mean, 95% CI)")
        ax.set_title("held-out PMI under the base model")
        ax.legend(fontsize=8)
        if with_judge:
            ax = axes[1]
            points = [
                (i + 1, r["judge"]["win_rate_ties_as_half_ci"])
                for i, r in enumerate(rounds)
                if r.get("judge")
            ]
            _interval_points(ax, points, color="C2")
            ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
            ax.set_xticks(x, labels)
            ax.set_ylim(0, 1)
            ax.set_title("judged win rate vs base (ties as half)")
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
    return path


_PMI_ROWS = (
    ("pmi_same_question", "PMI, same question / other users (nats)"),
    ("pmi_random", "PMI, random contrasts (nats)"),
    ("pmi_context_drop", "PMI, context drop (nats)"),
    ("pmi_same_question_infonce", "PMI InfoNCE, same question / other users"),
    ("pmi_same_question_per_token", "PMI per token, same question / other users"),
    ("copy_share", "share of response 3-grams copied from the context"),
    ("context_words", "share of response content words found in the context"),
    ("persona", "share of responses that speak as the user (persona adoption)"),
    ("logprob_per_token", "log π_base(y|x) per token"),
    ("num_tokens", "response tokens"),
)
_VS_BASE_ROWS = (
    ("pmi_same_question", "PMI same question − base (paired)"),
    ("pmi_random", "PMI random − base (paired)"),
    ("pmi_context_drop", "PMI context drop − base (paired)"),
    ("copy_share", "copy share − base (paired)"),
    ("context_words", "context-word share − base (paired)"),
    ("persona", "persona adoption − base (paired)"),
    ("logprob_per_token", "log π_base(y|x) per token − base (paired)"),
    ("num_tokens", "response tokens − base (paired)"),
)
_VS_PREVIOUS_ROWS = (
    ("pmi_same_question", "PMI same question − previous round (paired)"),
    ("pmi_random", "PMI random − previous round (paired)"),
)


def _table(
    rounds: list[dict[str, Any]], seconds: dict[str, float]
) -> tuple[list[str], list[list[str]]]:
    """The per-round table: its headers and rows (metric, base, one column per round)."""
    headers = ["metric", "base"] + [f"round {r['round']}" for r in rounds]
    rows = [
        *_pmi_rows(rounds),
        *_comparison_rows(rounds),
        *_judge_rows(rounds),
        *_accuracy_rows(rounds),
        *_training_rows(rounds, seconds),
    ]
    return headers, rows


def _pmi_rows(rounds: list[dict[str, Any]]) -> list[list[str]]:
    """Each PMI-section value of the base model and of every round (those measured)."""
    from mipo.evaluate.report import fmt_ci

    base = rounds[0]["base_pmi"]
    return [
        [label, fmt_ci(base.get(key)), *[fmt_ci(r["pmi"].get(key)) for r in rounds]]
        for key, label in _PMI_ROWS
        if base.get(key) or any(r["pmi"].get(key) for r in rounds)
    ]


def _comparison_rows(rounds: list[dict[str, Any]]) -> list[list[str]]:
    """Each round's paired differences from the base model and, past round 1, from the round
    before."""
    from mipo.evaluate.report import fmt_ci

    rows = [
        [label, "", *[fmt_ci(r["vs_base"].get(key)) for r in rounds]]
        for key, label in _VS_BASE_ROWS
        if any(r["vs_base"].get(key) for r in rounds)
    ]
    if len(rounds) > 1:
        for key, label in _VS_PREVIOUS_ROWS:
            values = [
                fmt_ci(r.get("vs_previous", {}).get(key)) if r["round"] > 1 else "(= vs base)"
                for r in rounds
            ]
            rows.append([label, "", *values])
    return rows


def _judge_rows(rounds: list[dict[str, Any]]) -> list[list[str]]:
    """The judged win rates and expected scores of every round (none when nothing was judged)."""
    from mipo.evaluate.report import fmt_ci

    if not any(r.get("judge") for r in rounds):
        return []
    judged = [r.get("judge") or {} for r in rounds]
    return [
        [
            "judged win rate vs base, ties as wins",
            "",
            *[fmt_ci(j.get("win_rate_ties_as_wins_ci")) for j in judged],
        ],
        [
            "judged win rate vs base, ties as half",
            "",
            *[fmt_ci(j.get("win_rate_ties_as_half_ci")) for j in judged],
        ],
        [
            "judge expected score (1–5)",
            fmt_ci(judged[0].get("baseline_expected_score")),
            *[fmt_ci(j.get("model_expected_score")) for j in judged],
        ],
        [
            "judge expected score − base (paired)",
            "",
            *[fmt_ci(j.get("expected_score_difference")) for j in judged],
        ],
    ]


def _accuracy_rows(rounds: list[dict[str, Any]]) -> list[list[str]]:
    """The accuracy on each choice or math file, of the base model and of every round."""
    from mipo.evaluate.report import fmt_ci

    rows = []
    for name in rounds[0]["accuracy"]:
        first = rounds[0]["accuracy"][name]
        rows.append(
            [
                f"accuracy, {name}",
                fmt_ci(first.get("baseline", {}).get("accuracy")),
                *[
                    fmt_ci(r["accuracy"].get(name, {}).get("model", {}).get("accuracy"))
                    for r in rounds
                ],
            ]
        )
    return rows


def _training_rows(rounds: list[dict[str, Any]], seconds: dict[str, float]) -> list[list[str]]:
    """Each round's training (pairs, steps, loss, reward accuracy) and its stages' seconds."""
    from mipo.evaluate.report import fmt_number

    rows = [
        ["pairs trained on", "", *[fmt_number(r["train"].get("pairs")) for r in rounds]],
        ["optimizer steps", "", *[fmt_number(r["train"].get("steps")) for r in rounds]],
        ["DPO loss, first → final step", "", *[_arrow(r["train"]) for r in rounds]],
        [
            "reward accuracy, mean over steps",
            "",
            *[fmt_number(r["train"].get("mean_reward_accuracy")) for r in rounds],
        ],
    ]
    for stage in ("pairs", "train", "eval"):
        rows.append(
            [
                f"seconds: {stage}",
                "",
                *[fmt_number(seconds.get(f"round-{r['round']}/{stage}"), 0) for r in rounds],
            ]
        )
    return rows


def _arrow(train: dict[str, Any]) -> str:
    """The DPO loss of the first and final step, as 'first → final'."""
    from mipo.evaluate.report import fmt_number

    if train.get("first_loss") is None:
        return "–"
    return f"{fmt_number(train['first_loss'])} → {fmt_number(train.get('final_loss'))}"


def write_run_report(
    out: Path,
    config: Any,
    record: dict[str, Any],
    split: dict[str, Any],
    base: Any,
    wall_seconds: float,
) -> tuple[Path, Path, Path]:
    """Write ``metrics.json``, ``report.md``, ``report.html`` and ``rounds.png`` into ``out``;
    returns the paths of the first three."""
    from mipo.evaluate.report import Report

    rounds = round_metrics(out, config.rounds, config.n_bootstrap, config.seed)
    if not rounds:
        raise OutputError(f"no finished round in '{out}': nothing to report")
    seconds = record.get("stage_seconds", {})
    report = Report("mipo run report")
    _write_setup(report, config, split, base, len(rounds))
    _write_rounds(report, config, rounds, seconds, out)
    _write_findings(report, rounds)
    report.heading("Per-round reports")
    report.bullets(
        [f"round {r['round']}: {r['eval_report']} (responses, distributions, training curves)"
         for r in rounds]
    )  # fmt: skip
    total = _write_time(report, seconds)
    metrics = {
        "mipo_version": record.get("mipo_version"),
        "base_model": record.get("base_model"),
        "options": record.get("options"),
        "split": split,
        "base": {"pmi": rounds[0]["base_pmi"]},
        "personalization": rounds[-1].get("personalization"),
        "rounds": rounds,
        "stage_seconds": seconds,
        "total_stage_seconds": round(total, 3),
        "wall_seconds_this_invocation": round(wall_seconds, 3),
        "plots": ["rounds.png"],
    }
    paths = []
    for name, text in (
        ("metrics.json", json.dumps(finite_json(metrics), indent=2, default=str) + "\n"),
        ("report.md", report.to_markdown()),
        ("report.html", report.to_html()),
    ):
        paths.append(write_text_atomic(text, out / name))
    return paths[0], paths[1], paths[2]


def _write_setup(report: Any, config: Any, split: dict[str, Any], base: Any, n_rounds: int) -> None:
    """The report's opening: base model, corpus and training setup, and the data split."""
    report.paragraph(
        f"Base model {base.name} ({base.path}); corpus {config.corpus}; {n_rounds} round(s); "
        f"negatives '{config.negatives}'; "
        f"{'LoRA' if config.train.lora else 'full fine-tuning'} at learning rate "
        f"{config.train.resolved_learning_rate():g}, beta {config.train.beta}, "
        f"{config.train.resolved_epochs():g} epoch(s); seed {config.seed}."
    )
    report.table(
        ["data", "prompts", "users"],
        [
            ["training", str(split["train_prompts"]), str(split.get("train_users") or "–")],
            [
                f"held out (by {split['held_out_by']})",
                str(split["eval_prompts"]),
                str(split.get("eval_users") or "–"),
            ],
        ],
    )


def _write_rounds(
    report: Any,
    config: Any,
    rounds: list[dict[str, Any]],
    seconds: dict[str, float],
    out: Path,
) -> None:
    """The 'Metrics per round' section: what the numbers mean, the table and the plot across
    rounds (written to ``out/rounds.png``)."""
    report.heading("Metrics per round")
    report.paragraph(
        "Held-out prompts only (never trained on). PMI = log π_base(y|x) − log of the mean of "
        f"π_base(y|x') over {config.eval_k} contrast prompts x' (log-mean-exp), scored under the "
        "base model for every round, so rounds are comparable; higher means the response is "
        "more specific to its prompt (what MIPO maximizes). 'Same question, other users' asks "
        "the prompt's question with other users' contexts: it isolates personalization. Values "
        "are means with 95% cluster-bootstrap intervals (users, crossed with questions when a "
        "question repeats); differences are paired by prompt (same prompts and sampling seeds "
        "for every model). Round r generates its pairs with, and trains from, round r−1's model."
    )
    headers, rows = _table(rounds, seconds)
    report.table(headers, rows)
    _plot_rounds(rounds, out / "rounds.png")
    report.image("rounds.png", "held-out PMI and judged win rate across rounds")


def _write_findings(report: Any, rounds: list[dict[str, Any]]) -> None:
    """What the last round changed (PMI verdicts, shortcut checks), a warning when the judge
    could not separate the models, and the last round's examples."""
    from mipo.evaluate.report import fmt_ci

    last = rounds[-1]
    for key, name in (
        ("pmi_same_question", "same-question (personalization)"),
        ("pmi_random", "random-contrast"),
    ):
        verdict = last["vs_base"].get(key)
        if not verdict or not verdict.get("n"):
            continue
        report.paragraph(
            f"Round {last['round']} {_verdict(name, verdict)}: {fmt_ci(verdict)} nats per response."
        )
    if last.get("findings"):
        report.paragraph(
            f"Shortcut checks of round {last['round']} (its evaluation report has the table):"
        )
        report.bullets(last["findings"])
    single = [r["round"] for r in rounds if (r.get("judge") or {}).get("single_score") is not None]
    if single:
        report.paragraph(
            f"The judge gave every response the same score in round(s) "
            f"{', '.join(map(str, single))}: those win rates are all ties by construction and say "
            "nothing about the models; pass a stronger judge (--set judge=MODEL)."
        )
    if last.get("examples"):
        from mipo.evaluate.sections import render_examples

        render_examples(
            report, last["examples"], heading=f"Examples — round {last['round']} vs base"
        )


def _verdict(name: str, verdict: dict[str, Any]) -> str:
    """Whether a round raised, lowered or did not detectably change one kind of PMI."""
    if verdict["low"] > 0:
        return f"raised held-out {name} PMI over the base model (the 95% interval excludes 0)"
    if verdict["high"] < 0:
        return f"lowered held-out {name} PMI below the base model (the 95% interval excludes 0)"
    return f"did not change held-out {name} PMI detectably (the 95% interval includes 0)"


def _write_time(report: Any, seconds: dict[str, float]) -> float:
    """The 'Time' section: seconds per stage and in all; returns the total."""
    report.heading("Time")
    total = sum(float(v) for v in seconds.values())
    report.table(
        ["stage", "seconds"],
        [[name, f"{float(value):.0f}"] for name, value in seconds.items()]
        + [["all stages", f"{total:.0f}"]],
    )
    return total
