"""The records of a build-pairs output folder: what each stage's output depends on, and what a
rerun may reuse.

``run.json`` holds, per stage, the options its output depends on and a hash chained over the
stages before it (so a changed plan option invalidates the generations and the pairs too). A rerun
compares its record with the folder's: :func:`first_changed_stage` names the first stage whose
options differ (and how), and every stage from there on is redone (or the run refused without
``overwrite``). Shards of one run that ran on other machines are recognised by
:func:`shard_identity`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from mipo import __version__
from mipo.configfile import to_mapping
from mipo.corpus import input_file_stamps

if TYPE_CHECKING:
    from mipo.pairs.config import BuildPairsConfig
    from mipo.pairs.plan import PlanConfig

__all__ = [
    "GENERATIONS_DIR",
    "PAIRS_FILE",
    "PLAN_FILE",
    "RUN_FILE",
    "STAGES",
    "STAGE_OUTPUTS",
    "STATS_FILE",
    "first_changed_stage",
    "run_record",
    "shard_identity",
    "stage_options",
]

STAGES = ("plan", "generate", "pairs")
RUN_FILE = "run.json"
PLAN_FILE = "plan.parquet"
GENERATIONS_DIR = "generations"
PAIRS_FILE = "pairs.parquet"
STATS_FILE = "stats.json"
# Everything mipo writes into OUTDIR; --overwrite removes these and nothing else.
STAGE_OUTPUTS = {
    "plan": (PLAN_FILE,),
    "generate": (GENERATIONS_DIR,),
    "pairs": (PAIRS_FILE,),
}


def _hash(value: Any) -> str:
    data = json.dumps(value, sort_keys=True, default=str).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def _diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [
        _files_diff(old.get(k) or [], new.get(k) or [])
        if k == "input_files"
        else f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in keys
        if old.get(k) != new.get(k)
    ]


def _files_diff(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> str:
    """Which input files changed, by name (a corpus may have thousands of shards)."""
    before = {f.get("name"): f for f in old}
    after = {f.get("name"): f for f in new}
    parts = []
    for label, names in (
        ("modified", [n for n in after if n in before and after[n] != before[n]]),
        ("added", [n for n in after if n not in before]),
        ("removed", [n for n in before if n not in after]),
    ):
        if names:
            shown = ", ".join(str(n) for n in names[:3]) + (", ..." if len(names) > 3 else "")
            parts.append(f"{label} {shown}")
    return "input files: " + (", ".join(parts) or "changed")


def stage_options(
    config: BuildPairsConfig, corpus: Any, model: Any, plan: PlanConfig, gen: Any
) -> dict[str, dict[str, Any]]:
    """The options each stage's output depends on (``shard`` and progress do not count)."""
    from mipo.pairs.ray_plan import executor_options

    plan_options = {
        # Name, size and mtime: an in-place edit of the corpus is a changed plan option.
        "input_files": input_file_stamps(corpus.files),
        "columns": corpus.columns.as_dict(),
        "model_fingerprint": model.fingerprint,
        **{k: v for k, v in asdict(plan).items() if k not in ("batch_rows", "row_group_rows")},
        # Past one derangement block the Ray plan's negatives are not the local plan's.
        **executor_options(corpus, config.executor),
    }
    from mipo.generate import comparable_options

    gen_options = {
        "independent_negatives": config.independent_negatives,
        # Settings that cannot change the text (memory, caching, where vLLM runs, vLLM's options
        # under the hf backend) may change between a run and its continuation.
        **comparable_options(asdict(gen)),
    }
    pairs_options = {
        "keep_truncated": config.keep_truncated,
        "score": config.score,
        "min_margin": config.min_margin,
        # Only when on: the runs written before the filter existed keep their hash.
        **({"drop_persona": True} if config.drop_persona else {}),
    }
    return {"plan": plan_options, "generate": gen_options, "pairs": pairs_options}


def run_record(
    config: BuildPairsConfig, model: Any, options: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    chained = ""
    stages = {}
    for name in STAGES:
        chained = _hash([chained, options[name]])
        stages[name] = {"hash": chained, "options": options[name]}
    return {
        "mipo_version": __version__,
        "command": "build-pairs",
        "input": str(config.input),
        "model": {
            "name": model.name,
            "source": model.source,
            "path": str(model.path),
            "fingerprint": model.fingerprint,
        },
        "seed": config.seed,
        "negatives": config.negatives,
        "stages": stages,
        # The whole resolved config, in its own schema: `mipo build-pairs --config run.json`
        # repeats the run (the stages' options above decide what a rerun reuses).
        "config": to_mapping(config),
    }


def shard_identity(record: dict[str, Any]) -> list[Any]:
    """The plan and generation options of a run, input mtimes left out: shards that ran on other
    machines read their own copy of the corpus (same names and sizes, other mtimes), and the
    generation manifest's hash (which covers every request) still proves they made one run."""
    stages = record.get("stages", {})
    plan = dict(stages.get("plan", {}).get("options", {}))
    plan["input_files"] = [
        {k: v for k, v in f.items() if k != "mtime_ns"} for f in plan.get("input_files", [])
    ]
    return [plan, stages.get("generate", {}).get("options")]


def first_changed_stage(
    old: dict[str, Any] | None, new: dict[str, Any]
) -> tuple[str | None, list[str]]:
    if old is None:
        return None, []
    from mipo.generate import comparable_options

    old_stages = old.get("stages", {})
    chained = ""
    for name in STAGES:
        before = old_stages.get(name, {})
        old_options, new_options = before.get("options", {}), new["stages"][name]["options"]
        if before.get("hash") != new["stages"][name]["hash"]:
            # A record written before an option became ignored: its options, compared as
            # today's are, may still be the same run.
            if name == "generate" and isinstance(old_options, dict):
                old_options = comparable_options(old_options)
            chained = _hash([chained, old_options])
            if chained != new["stages"][name]["hash"]:
                return name, _diff(before.get("options", {}), new_options)
        chained = new["stages"][name]["hash"]
    return None, []
