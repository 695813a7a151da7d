"""Side-by-side comparisons of mipo against the tools a user would otherwise reach for.

Each ``benches/compare_*.py`` / ``bench_*.py`` module exposes ``compare(quick: bool) -> list[dict]``
and measures mipo and its baseline in the same run on the same data (the machine is shared and
noisy, so only ratios measured together mean anything). This script runs the chosen ones and
writes their rows into the "Engine and stage comparisons" table of ``benches/RESULTS.md``.

    python benches/compare.py                 # all, full size
    python benches/compare.py --quick dedup   # one, small size
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
from pathlib import Path

from results_md import replace_section

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
MODULES = {
    "tokenize": "compare_tokenize",
    "dedup": "compare_dedup",
    "derange": "compare_derange",
    "generate": "bench_generate",
    "plan": "bench_plan",
}
BEGIN, END = "<!-- compare:begin -->", "<!-- compare:end -->"


def _fmt(x: object) -> str:
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"
    return "" if x is None else str(x)


COLUMNS = ("name", "script", "measured", "mipo_s", "baseline", "baseline_s", "speedup", "target")
HEADER = "| comparison | script | measured | mipo (s) | baseline | baseline (s) | speedup | target | notes |"


def kept_rows(rerun: set[str]) -> list[str]:
    """Table rows of the current RESULTS.md written by scripts not rerun now (partial runs keep
    the others' rows, each with the date it was measured); rows without a script column (an
    older table layout) are dropped."""
    if not RESULTS.is_file():
        return []
    text = RESULTS.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        return []
    block = text.split(BEGIN, 1)[1].split(END, 1)[0]
    if HEADER not in block:
        return []
    rows = block.split(HEADER, 1)[1].splitlines()[2:]
    scripts = {f"{name}.py" for name in MODULES.values()}
    kept = []
    for line in rows:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 1 and cells[1] in scripts and cells[1] not in rerun:
            kept.append(line)
    return kept


def render(rows: list[dict], kept: list[str], quick: bool, elapsed: float) -> str:
    lines = [
        BEGIN,
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}. The rows of one script are measured together, side by "
        f"side, on the date in their row (this run: {elapsed:.0f} s"
        f"{', quick mode' if quick else ''}). Each row comes from `python benches/<script>`.",
        "",
        HEADER,
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [_fmt(r.get(k)) for k in COLUMNS] + [_fmt(r.get("notes"))]
        lines.append("| " + " | ".join(cells) + " |")
    lines.extend(kept)
    lines.append(END)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", nargs="*", help=f"any of {sorted(MODULES)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.which) - set(MODULES))
    if unknown:
        parser.error(f"unknown comparison {unknown}; choose from {sorted(MODULES)}")
    sys.path.insert(0, str(HERE))
    rows: list[dict] = []
    start = time.perf_counter()
    chosen = args.which or list(MODULES)
    today = time.strftime("%Y-%m-%d")
    for key in chosen:
        module = importlib.import_module(MODULES[key])
        print(f"== {key}", flush=True)
        for row in module.compare(quick=args.quick):
            print("   ", row, flush=True)
            measured = f"{today} (quick)" if args.quick else today
            rows.append({**row, "script": f"{MODULES[key]}.py", "measured": measured})
    kept = kept_rows({f"{MODULES[k]}.py" for k in chosen})
    block = render(rows, kept, args.quick, time.perf_counter() - start)
    print(block)
    if not args.no_write:
        replace_section(block, BEGIN, END, "## Engine and stage comparisons")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
