"""``mipo merge``: join the generation chunks of a sharded build-pairs run (``--shard I/N``, run
in several folders or on several machines) and build its pairs.

>>> from mipo.pairs.merge import merge_shards
>>> # needs the output folders of a sharded build-pairs run: see tests/test_pairs_merge.py
>>> merge_shards("out-0", ["out-1", "out-2"])  # doctest: +SKIP
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from mipo.errors import ModelError, OutputError
from mipo.io import atomic_path, output_lock, read_json_record, write_json_atomic
from mipo.pairs.build import (
    BuildPairsConfig,
    BuildPairsResult,
    StageTimes,
    pairs_stage,
    refuse_linked_folder,
)
from mipo.pairs.manifest import (
    GENERATIONS_DIR,
    PAIRS_FILE,
    PLAN_FILE,
    RUN_FILE,
    STATS_FILE,
    shard_identity,
)
from mipo.pairs.plan import read_plan

__all__ = ["merge_shards"]


def merge_shards(
    out_dir: str | Path,
    shard_dirs: list[str | Path] | None = None,
    *,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> BuildPairsResult:
    """Join the generation chunks of shards run in other folders into ``out_dir`` and build the
    pairs there.

    ``out_dir`` is a build-pairs output folder (e.g. shard 0's); each of ``shard_dirs`` must hold
    a run with the same options (plan, model, generation settings). Chunk files ``out_dir``
    lacks are copied in (temporary file + rename); when chunks are still missing the error lists
    them.
    """
    from mipo.generate import load_results

    out = Path(out_dir)
    record = read_json_record(out / RUN_FILE)
    if record is None or not (out / PLAN_FILE).is_file():
        raise OutputError(
            f"'{out}' holds no build-pairs run (run.json and plan.parquet): pass the output "
            "folder of one of the shards first"
        )
    gen_dir = out / GENERATIONS_DIR
    refuse_linked_folder(gen_dir)
    manifest = read_json_record(gen_dir / "manifest.json")
    for other in map(Path, shard_dirs or []):
        if other.resolve() != out.resolve():
            manifest = _copy_shard_chunks(other, out, record, manifest)
    if manifest is None:
        raise OutputError(
            f"no generations found in '{out}' or the given shard folders: run the shards first"
        )
    responses = load_results(gen_dir, require_complete=True)
    model = _recorded_model(record, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    config = _recorded_config(record, out)
    stats = read_json_record(out / STATS_FILE) or {}
    stats.pop("pairs", None)
    stages = StageTimes(out, stats)
    with output_lock(out / ".mipo-merge.lock"):
        if (out / PAIRS_FILE).exists():
            (out / PAIRS_FILE).unlink()
        plan = read_plan(out / PLAN_FILE)
        return pairs_stage(config, out, model, plan, responses, stats, stages)


def _copy_shard_chunks(
    other: Path, out: Path, record: dict[str, Any], manifest: dict[str, Any] | None
) -> dict[str, Any] | None:
    """Copy the chunk files of the shard in ``other`` that ``out`` lacks (temporary file +
    rename), after checking it is a shard of the same run; returns ``out``'s manifest (taken
    from ``other`` when ``out`` had none)."""
    gen_dir = out / GENERATIONS_DIR
    theirs = read_json_record(other / RUN_FILE)
    if theirs is None:
        raise OutputError(f"'{other}' holds no build-pairs run (run.json missing)")
    if shard_identity(theirs) != shard_identity(record):
        raise OutputError(
            f"'{other}' was built with other options than '{out}' (plan or generation "
            "settings differ): only shards of one run can be merged"
        )
    their_manifest = read_json_record(other / GENERATIONS_DIR / "manifest.json")
    if their_manifest is None:
        return manifest  # that shard never started generating; its chunks are reported missing
    if manifest is None:
        gen_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(their_manifest, gen_dir / "manifest.json")
        manifest = their_manifest
    elif their_manifest.get("run_hash") != manifest.get("run_hash"):
        raise OutputError(f"the generations in '{other}' belong to another run than '{out}'")
    for chunk in sorted((other / GENERATIONS_DIR).glob("chunk-*.parquet")):
        target = gen_dir / chunk.name
        if not target.exists():
            with atomic_path(target) as tmp:
                shutil.copyfile(chunk, tmp)
    return manifest


def _recorded_model(record: dict[str, Any], *, trust_remote_code: bool, allow_pickle: bool) -> Any:
    """The run's model, refused when its weights are not the ones the run was built with."""
    from mipo.models import resolve_model

    model = resolve_model(
        record["model"]["name"], trust_remote_code=trust_remote_code, allow_pickle=allow_pickle
    )
    if model.fingerprint != record["model"]["fingerprint"]:
        raise ModelError(
            f"model '{model.name}' now has fingerprint {model.fingerprint}, but the run was built "
            f"with {record['model']['fingerprint']}: merge on a machine with the same model"
        )
    return model


def _recorded_config(record: dict[str, Any], out: Path) -> BuildPairsConfig:
    """The pairs stage's options as the run recorded them (run.json)."""
    options = record["stages"]
    gen_options = options["generate"]["options"]
    pair_options = options["pairs"]["options"]
    return BuildPairsConfig(
        input=record["input"],
        out_dir=out,
        model=record["model"]["name"],
        negatives=record["negatives"],
        independent_negatives=gen_options["independent_negatives"],
        seed=record["seed"],
        keep_truncated=pair_options["keep_truncated"],
        score=pair_options["score"],
        min_margin=pair_options["min_margin"],
        drop_persona=pair_options.get("drop_persona", False),
        progress=False,
    )
