"""The resumable, shardable generation runner.

Layout of an output folder::

    out_dir/
      manifest.json            run hash (config + model fingerprint + requests), chunk count
      chunk-000000.parquet     results of requests 0 .. chunk_size-1 (in request_id order)
      chunk-000001.parquet     ...
      .lock-shard-0-of-1       present while a run of that shard is writing (holds host:pid)

Guarantees:
    - a chunk file exists only complete: written to a temporary file, fsynced, then renamed;
    - rerunning the same command skips finished chunks, so a crash (even SIGKILL) loses at most
      the chunk in progress, and the final results equal an uninterrupted run's;
    - a run with different settings, model or requests is refused unless ``overwrite``;
    - shard ``(i, N)`` takes chunks ``k`` with ``k % N == i``; shards may run at once into the
      same folder (each holds its own lock) or on different machines, then be merged;
    - a second run of the same shard is refused while the first is alive; a lock left by a dead
      process is taken over.

Example:
    >>> results = run_generation(requests, "out/gen", model=model, config=config)  # doctest: +SKIP
    >>> results.columns  # doctest: +SKIP
    ['request_id', 'response', 'num_prompt_tokens', 'num_response_tokens', 'finish_reason', 'seed']
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from mipo.errors import ConfigError, GenerationError, OutputError
from mipo.generate import Backend, GenerationConfig, create_backend
from mipo.io import NO_ROOM, read_json_record, write_bytes_atomic, write_json_atomic
from mipo.io import output_lock as _run_lock

if TYPE_CHECKING:
    from mipo.models import ResolvedModel

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1

REQUEST_SCHEMA = {"request_id": pl.UInt64, "input_ids": pl.List(pl.UInt32), "seed": pl.UInt64}
RESULT_SCHEMA = {
    "request_id": pl.UInt64,
    "response": pl.String,
    "num_prompt_tokens": pl.UInt32,
    "num_response_tokens": pl.UInt32,
    "finish_reason": pl.String,
    "seed": pl.UInt64,
}


def chunk_path(out_dir: str | os.PathLike[str], index: int) -> Path:
    """Path of chunk ``index`` in an output folder.

    >>> chunk_path("out", 3).name
    'chunk-000003.parquet'
    """
    return Path(out_dir) / f"chunk-{index:06d}.parquet"


def run_generation(
    requests: pl.DataFrame,
    out_dir: str | os.PathLike[str],
    *,
    model: ResolvedModel,
    config: GenerationConfig,
    shard: tuple[int, int] = (0, 1),
    overwrite: bool = False,
    progress: bool = True,
    backend: Backend | None = None,
) -> pl.DataFrame:
    """Generate one response per request into ``out_dir``, resuming finished chunks.

    ``requests`` has columns ``request_id`` (unique), ``input_ids`` (token ids of the rendered
    prompt) and ``seed``. Returns this shard's results sorted by ``request_id``, with columns
    ``request_id, response, num_prompt_tokens, num_response_tokens, finish_reason, seed``.
    ``backend`` reuses an already loaded backend (it is built lazily otherwise, and only when
    some chunk is left to generate).

    Raises OutputError when ``out_dir`` holds another run (pass ``overwrite=True``), is locked by
    a live run, or cannot be written (disk full: finished chunks are kept; rerun to resume).
    KeyboardInterrupt abandons the chunk in progress cleanly and propagates.
    """
    shard_index, num_shards = _check_shard(shard)
    table = _check_requests(requests)
    out = Path(out_dir)
    if backend is None and _runs_elsewhere(config):
        # vLLM lives in another environment: the whole stage runs there, into this folder.
        from mipo.generate.remote import run_remote

        run_remote(
            table, out, model=model, config=config, shard=shard, overwrite=overwrite,
            progress=progress,
        )  # fmt: skip
        results = load_results(out, require_complete=False)
        mine = _chunk_ids_of(table, config, shard_index, num_shards)
        return results.filter(pl.col("request_id").is_in(mine.implode())).sort("request_id")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder '{out}': {exc.strerror}") from exc
    if not out.is_dir():
        raise OutputError(f"output path '{out}' exists and is not a folder")

    manifest = build_manifest(table, model, config)
    num_chunks = manifest["num_chunks"]
    mine = [k for k in range(num_chunks) if k % num_shards == shard_index]

    with _run_lock(out / f".lock-shard-{shard_index}-of-{num_shards}"):
        _prepare_folder(out, manifest, overwrite=overwrite)
        _remove_temp_files(out, mine)
        done = {k: df for k in mine if (df := _read_chunk(out, k, table, config)) is not None}
        todo = [k for k in mine if k not in done]
        if todo:
            if backend is None:
                backend = create_backend(model, config)
            with generation_progress(
                enabled=progress,
                total_rows=sum(_chunk_rows(table, k, config).height for k in mine),
                done_rows=sum(df.height for df in done.values()),
            ) as bar:
                chunks = ((k, _chunk_rows(table, k, config)) for k in todo)
                for k, results in _generate_chunks(backend, chunks, bar.advance):
                    _write_chunk_atomically(out, k, results, finished=len(done))
                    done[k] = results
    if not done:
        return pl.DataFrame(schema=RESULT_SCHEMA)
    return pl.concat([done[k] for k in sorted(done)]).sort("request_id")


def load_results(out_dir: str | os.PathLike[str], *, require_complete: bool = True) -> pl.DataFrame:
    """Read every finished chunk of an output folder (all shards), sorted by ``request_id``.

    With ``require_complete`` an OutputError names the missing chunks (a shard still running or
    never run) instead of returning partial results.
    """
    out = Path(out_dir)
    manifest = _read_manifest(out)
    if manifest is None:
        raise OutputError(f"'{out}' holds no generation run ({MANIFEST} missing)")
    num_chunks = int(manifest["num_chunks"])
    present = [k for k in range(num_chunks) if chunk_path(out, k).is_file()]
    missing = sorted(set(range(num_chunks)) - set(present))
    if missing and require_complete:
        shown = ", ".join(str(k) for k in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise OutputError(
            f"generation in '{out}' is incomplete: {len(missing)} of {num_chunks} chunks missing "
            f"({shown}); rerun the same command (every shard) to finish it"
        )
    if not present:
        return pl.DataFrame(schema=RESULT_SCHEMA)
    frames = [pl.read_parquet(chunk_path(out, k)) for k in present]
    return pl.concat(frames).cast(RESULT_SCHEMA).sort("request_id")


# --- validation --------------------------------------------------------------------------------


def build_manifest(
    table: pl.DataFrame, model: ResolvedModel, config: GenerationConfig
) -> dict[str, Any]:
    """The manifest of a generation folder: what identifies its output (config, model, requests).

    Shared by the local runner and the Ray executor, so either can resume the other's folder.
    """
    fields = config.output_fields()
    manifest: dict[str, Any] = {
        "version": MANIFEST_VERSION,
        "run_hash": "",
        "config_hash": _hash_json(fields),
        "model_fingerprint": model.fingerprint,
        "requests_hash": _hash_requests(table),
        "num_requests": table.height,
        "chunk_size": config.chunk_size,
        "num_chunks": -(-table.height // config.chunk_size),
        "model": model.name,
        "config": fields,
    }
    manifest["run_hash"] = _hash_json(
        [manifest["config_hash"], manifest["model_fingerprint"], manifest["requests_hash"]]
    )
    return manifest


def _check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in shard)
    except (TypeError, ValueError):
        raise ConfigError(f"shard must be a pair (index, count), got {shard!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ConfigError(
            f"shard {index}/{count} is invalid: the count must be >= 1 and the index in "
            f"0..count-1 (e.g. --shard 0/{max(count, 2)})"
        )
    return index, count


def _check_requests(requests: pl.DataFrame) -> pl.DataFrame:
    missing = [c for c in REQUEST_SCHEMA if c not in requests.columns]
    if missing:
        raise GenerationError(
            f"generation requests lack column(s) {', '.join(missing)}; they have: "
            f"{', '.join(requests.columns) or '(none)'}"
        )
    try:
        table = requests.select(list(REQUEST_SCHEMA)).cast(REQUEST_SCHEMA, strict=True)
    except pl.exceptions.PolarsError as exc:
        raise GenerationError(
            f"generation requests have wrong column types ({exc.__class__.__name__}); expected "
            "request_id: UInt64, input_ids: List(UInt32), seed: UInt64"
        ) from exc
    nulls = [c for c in REQUEST_SCHEMA if table[c].null_count()]
    if nulls:
        raise GenerationError(f"generation requests have nulls in {', '.join(nulls)}")
    if table["request_id"].is_duplicated().any():
        raise GenerationError("generation requests repeat a request_id; ids must be unique")
    if table.height and table["input_ids"].list.len().min() == 0:
        raise GenerationError("a generation request has no input ids; every prompt needs tokens")
    return table.sort("request_id")


# --- manifest and hashing ----------------------------------------------------------------------


def _hash_json(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _hash_requests(table: pl.DataFrame) -> str:
    """A hash of ids, token ids and seeds from their little-endian bytes (stable across versions
    of polars, unlike its row hashes)."""
    digest = hashlib.sha256()
    digest.update(table["request_id"].to_numpy().astype("<u8").tobytes())
    digest.update(table["seed"].to_numpy().astype("<u8").tobytes())
    ids = table["input_ids"]
    digest.update(ids.list.len().to_numpy().astype("<u4").tobytes())
    if table.height:
        digest.update(ids.explode().to_numpy().astype("<u4").tobytes())
    return digest.hexdigest()[:16]


def _read_manifest(out: Path) -> dict[str, Any] | None:
    return read_json_record(out / MANIFEST, what="mipo manifest")


def _prepare_folder(out: Path, manifest: dict[str, Any], *, overwrite: bool) -> None:
    existing = _read_manifest(out)
    chunks = sorted(out.glob("chunk-*.parquet"))
    if existing is not None and existing.get("run_hash") == manifest["run_hash"]:
        return
    if existing is not None and _same_run_recorded_before(existing, manifest):
        write_json_atomic(
            manifest, out / MANIFEST, sort_keys=True, durable=True
        )  # today's hashes for the same run
        return
    if existing is None and not chunks:
        write_json_atomic(manifest, out / MANIFEST, sort_keys=True, durable=True)
        return
    if not overwrite:
        if existing is None:
            what = "chunk files without a manifest"
        else:
            changed = [
                label
                for key, label in (
                    ("config_hash", "generation settings"),
                    ("model_fingerprint", "model"),
                    ("requests_hash", "prompts or seeds"),
                )
                if existing.get(key) != manifest[key]
            ]
            what = "a run with different " + (" and ".join(changed) or "settings")
        raise OutputError(
            f"'{out}' holds {what}; pass --overwrite to discard it, or choose another output folder"
        )
    for chunk in chunks:
        chunk.unlink(missing_ok=True)
    write_json_atomic(manifest, out / MANIFEST, sort_keys=True, durable=True)


def _same_run_recorded_before(existing: dict[str, Any], manifest: dict[str, Any]) -> bool:
    """Whether a manifest written before an option became ignored (:data:`NOT_OUTPUT_AFFECTING`,
    vLLM-only options under hf) describes the same run: same model, requests and chunking, and
    its settings equal today's once compared as today's are."""
    from mipo.generate import comparable_options

    config = existing.get("config")
    return (
        isinstance(config, dict)
        and existing.get("model_fingerprint") == manifest["model_fingerprint"]
        and existing.get("requests_hash") == manifest["requests_hash"]
        and existing.get("chunk_size") == manifest["chunk_size"]
        and comparable_options(config) == manifest["config"]
    )


# --- chunks ------------------------------------------------------------------------------------


def _chunk_rows(table: pl.DataFrame, index: int, config: GenerationConfig) -> pl.DataFrame:
    return table.slice(index * config.chunk_size, config.chunk_size)


def _read_chunk(
    out: Path, index: int, table: pl.DataFrame, config: GenerationConfig
) -> pl.DataFrame | None:
    """A finished chunk, or None when it is missing or does not match its rows (then redone)."""
    path = chunk_path(out, index)
    if not path.is_file():
        return None
    try:
        df = pl.read_parquet(path).cast(RESULT_SCHEMA)
    except Exception:  # unreadable: regenerate rather than trust it
        return None
    expected = _chunk_rows(table, index, config)["request_id"]
    if df.height != expected.len() or not df["request_id"].equals(expected):
        return None
    return df


def _runs_elsewhere(config: GenerationConfig) -> bool:
    from mipo.generate import resolve_backend_name, vllm_available

    return (
        resolve_backend_name(config.backend, config.vllm_python) == "vllm" and not vllm_available()
    )


def _chunk_ids_of(
    table: pl.DataFrame, config: GenerationConfig, shard_index: int, num_shards: int
) -> pl.Series:
    """The request ids of this shard's chunks."""
    chunk = pl.int_range(0, table.height, eager=True) // config.chunk_size
    return table["request_id"].filter(chunk % num_shards == shard_index)


def _generate_chunks(
    backend: Backend, chunks: Iterator[tuple[int, pl.DataFrame]], on_batch: Any
) -> Iterator[tuple[int, pl.DataFrame]]:
    """``(chunk index, results)`` as chunks finish. A backend with ``generate_chunks`` (vLLM)
    keeps several chunks in flight and yields each as soon as its rows are done, in any order;
    others generate one chunk at a time."""
    streaming = getattr(backend, "generate_chunks", None)
    if streaming is None:
        for k, rows in chunks:
            yield k, _generate_chunk(backend, rows, on_batch)
        return
    frames: dict[int, pl.DataFrame] = {}

    def work() -> Iterator[tuple[int, list[list[int]], list[int]]]:
        for k, rows in chunks:
            frames[k] = rows
            yield k, rows["input_ids"].to_list(), rows["seed"].to_list()

    for k, results in streaming(work(), on_batch=on_batch):
        yield k, _chunk_frame(backend, frames.pop(k), results)


def _generate_chunk(backend: Backend, rows: pl.DataFrame, on_batch: Any) -> pl.DataFrame:
    """One chunk's results (the Ray executor's unit of work)."""
    results = backend.generate(
        rows["input_ids"].to_list(), rows["seed"].to_list(), on_batch=on_batch
    )
    return _chunk_frame(backend, rows, results)


def _chunk_frame(backend: Backend, rows: pl.DataFrame, results: list[Any]) -> pl.DataFrame:
    if len(results) != rows.height:
        raise GenerationError(
            f"the {backend.name} backend returned {len(results)} results for {rows.height} rows"
        )
    return pl.DataFrame(
        {
            "request_id": rows["request_id"],
            "response": [r.text for r in results],
            "num_prompt_tokens": rows["input_ids"].list.len(),
            "num_response_tokens": [r.num_response_tokens for r in results],
            "finish_reason": [r.finish_reason for r in results],
            "seed": rows["seed"],
        }
    ).cast(RESULT_SCHEMA)


def _write_chunk_atomically(out: Path, index: int, df: pl.DataFrame, *, finished: int) -> None:
    # Serialize in memory first (a chunk is small) so every write error is the file system's.
    buffer = io.BytesIO()
    df.write_parquet(buffer)
    path = chunk_path(out, index)
    try:
        write_bytes_atomic(buffer.getvalue(), path, durable=True)
    except OutputError as exc:
        cause = exc.__cause__
        if isinstance(cause, OSError) and cause.errno in NO_ROOM:
            raise OutputError(
                f"disk full while writing {path.name} in '{out}': free some space and rerun the "
                f"same command to resume ({finished} finished chunk(s) are kept)"
            ) from cause
        raise


def _remove_temp_files(out: Path, chunks: list[int]) -> None:
    """Temp files of this shard's chunks left by a killed run (we hold the shard's lock)."""
    for k in chunks:
        for temp in out.glob(f".{chunk_path(out, k).name}.tmp-*"):
            with contextlib.suppress(OSError):
                temp.unlink()


# --- lock --------------------------------------------------------------------------------------


# --- progress ----------------------------------------------------------------------------------


def generation_progress(*, enabled: bool, total_rows: int, done_rows: int) -> Any:
    """The progress of a generation run (:mod:`mipo.progress`): rows and new tokens per second,
    counting only this run's work; its task's ``advance`` is a backend's ``on_batch``."""
    from mipo.progress import track

    return track(
        "generating", total=total_rows, done=done_rows, tokens_label="new tok", enabled=enabled
    )


__all__ = [
    "MANIFEST",
    "REQUEST_SCHEMA",
    "RESULT_SCHEMA",
    "chunk_path",
    "load_results",
    "run_generation",
]
