"""The evaluation report: ``report.md`` and ``report.html`` from one list of blocks, plus plots.

Plots use matplotlib's Agg backend (no display needed) and are written as PNG files beside the
report, which links them by relative path.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mipo.errors import CorpusError
from mipo.io import atomic_path

__all__ = [
    "Report",
    "fmt_ci",
    "plot_distributions",
    "plot_training",
    "read_train_log",
]


def finite_json(value: Any) -> Any:
    """NaN/inf as null (recursively), so metrics.json is strict JSON.

    >>> finite_json({"a": [1.0, float("nan")]})
    {'a': [1.0, None]}
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    return value


def fmt_number(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def fmt_ci(stat: dict[str, Any] | None, digits: int = 3) -> str:
    """``mean [low, high]`` of a bootstrap result."""
    if not stat or stat.get("n", 0) == 0:
        return "–"
    return (
        f"{fmt_number(stat['mean'], digits)} "
        f"[{fmt_number(stat['low'], digits)}, {fmt_number(stat['high'], digits)}]"
    )


@dataclass
class Report:
    """An ordered list of blocks rendered identically to Markdown and HTML."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.blocks.append(("h2", text))

    def paragraph(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.blocks.append(("table", (list(headers), [[str(c) for c in r] for r in rows])))

    def image(self, filename: str, alt: str) -> None:
        self.blocks.append(("img", (filename, alt)))

    def bullets(self, items: Sequence[str]) -> None:
        if items:
            self.blocks.append(("ul", list(items)))

    def to_markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, value in self.blocks:
            if kind == "h2":
                out += [f"## {value}", ""]
            elif kind == "p":
                out += [value, ""]
            elif kind == "ul":
                out += [f"- {item}" for item in value] + [""]
            elif kind == "img":
                out += [f"![{value[1]}]({value[0]})", ""]
            elif kind == "table":
                headers, rows = value
                out.append("| " + " | ".join(headers) + " |")
                out.append("|" + "|".join("---" for _ in headers) + "|")
                out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
                out.append("")
        return "\n".join(out)

    def to_html(self) -> str:
        e = html.escape
        out = [
            "<!doctype html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{e(self.title)}</title>",
            "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
            "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
            "padding:.3em .6em;text-align:left}th{background:#f3f3f3}img{max-width:100%}</style>",
            "</head><body>",
            f"<h1>{e(self.title)}</h1>",
        ]
        for kind, value in self.blocks:
            if kind == "h2":
                out.append(f"<h2>{e(value)}</h2>")
            elif kind == "p":
                out.append(f"<p>{e(value)}</p>")
            elif kind == "ul":
                out.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in value) + "</ul>")
            elif kind == "img":
                out.append(f'<p><img src="{e(value[0])}" alt="{e(value[1])}"></p>')
            elif kind == "table":
                headers, rows = value
                head = "".join(f"<th>{e(h)}</th>" for h in headers)
                body = "".join(
                    "<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows
                )
                out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        out.append("</body></html>")
        return "\n".join(out)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    return plt


def plot_distributions(
    series: dict[str, Sequence[float | None]], path: Path, *, title: str, xlabel: str
) -> Path:
    """Overlaid histograms (one per model) with each mean marked; written to ``path``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    try:
        cleaned = {
            name: [float(v) for v in values if v is not None and not math.isnan(float(v))]
            for name, values in series.items()
        }
        everything = [v for values in cleaned.values() for v in values]
        bins: Any = 20
        if everything and min(everything) < max(everything):
            lo, hi = min(everything), max(everything)
            bins = [lo + (hi - lo) * i / 20 for i in range(21)]
        for (name, values), color in zip(cleaned.items(), ("C0", "C1", "C2", "C3"), strict=False):
            if not values:
                continue
            ax.hist(values, bins=bins, alpha=0.5, color=color, label=f"{name} (n={len(values)})")
            ax.axvline(sum(values) / len(values), color=color, linestyle="--")
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("prompts")
        ax.legend()
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
    return path


def read_train_log(path: str | Path) -> list[dict[str, Any]]:
    """The entries of a ``train_log.jsonl`` written by ``mipo train``."""
    path = Path(path)
    if path.is_dir():
        path = path / "train_log.jsonl"
    if not path.is_file():
        raise CorpusError(
            f"training log {path} not found: pass OUTDIR/train_log.jsonl of mipo train"
        )
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except ValueError as e:
            raise CorpusError(f"{path}:{number} is not JSON ({e})") from e
    return entries


def plot_training(entries: list[dict[str, Any]], path: Path) -> Path | None:
    """Loss, reward margin and reward accuracy against the optimizer step; None if no entries."""
    steps = [e for e in entries if "loss" in e and "step" in e]
    if not steps:
        return None
    plt = _pyplot()
    panels = [
        ("loss", "DPO loss"),
        ("rewards/margins", "reward margin (chosen − rejected)"),
        ("rewards/accuracies", "reward accuracy"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(12, 3.5))
    try:
        for ax, (key, label) in zip(axes, panels, strict=True):
            points = [(e["step"], e[key]) for e in steps if key in e]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker=".")
            ax.set_title(label)
            ax.set_xlabel("step")
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
    return path
