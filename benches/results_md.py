"""Shared by the bench scripts: replace one marked section of benches/RESULTS.md, keep the rest."""

from __future__ import annotations

import os
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def replace_section(block: str, begin: str, end: str, heading: str | None = None) -> None:
    """Put ``block`` (which starts with ``begin`` and ends with ``end``) where the old
    ``begin``..``end`` section was, or append it under ``heading``; written atomically."""
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.is_file() else "# Benchmark results\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        title = f"{heading}\n\n" if heading else ""
        text = text.rstrip() + f"\n\n{title}{block}\n"
    tmp = RESULTS.with_name(f".{RESULTS.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, RESULTS)


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), named beside every timing a section reports."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_note() -> str:
    """The 1-minute load average as a run ends, and what it means for the times beside it."""
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > cores + 0.5:
        return (
            f"1-minute load average {load:.1f} on {cores} cores as the run ended: other jobs shared "
            "the CPU, so times are slower than on an idle machine; ratios compare sides run "
            "alternately under the same load"
        )
    return f"1-minute load average {load:.1f} on {cores} cores as the run ended"
