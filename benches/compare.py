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


def render(rows: list[dict], quick: bool, elapsed: float) -> str:
    lines = [
        BEGIN,
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} with {os.cpu_count()} "
        f"cores, Python {platform.python_version()}{' (quick mode)' if quick else ''}; "
        f"total {elapsed:.0f} s.",
        "",
        "| comparison | mipo (s) | baseline | baseline (s) | speedup | target | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            "| "
            + " | ".join(
                _fmt(r.get(k))
                for k in ("name", "mipo_s", "baseline", "baseline_s", "speedup", "target", "notes")
            )
            + " |"
        )
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
    for key in args.which or list(MODULES):
        module = importlib.import_module(MODULES[key])
        print(f"== {key}", flush=True)
        for row in module.compare(quick=args.quick):
            print("   ", row, flush=True)
            rows.append(row)
    block = render(rows, args.quick, time.perf_counter() - start)
    print(block)
    if not args.no_write:
        replace_section(block, BEGIN, END, "## Engine and stage comparisons")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
