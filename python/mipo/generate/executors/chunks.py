"""The chunk folder every executor writes: one public API for checking requests, the manifest,
the shard lock, resume, and writing and reading chunk files.

Layout of an output folder::

    out_dir/
      manifest.json            run hash (config + model fingerprint + requests), chunk count
      chunk-000000.parquet     results of requests 0 .. chunk_size-1 (in request_id order)
      chunk-000001.parquet     ...
      .lock-shard-0-of-1       present while a run of that shard is writing (holds host:pid)

Guarantees, whichever executor writes the folder (:mod:`mipo.generate.executors`):
    - a chunk file exists only complete: written to a temporary file, fsynced, then renamed;
    - rerunning the same command skips finished chunks, so a crash (even SIGKILL) loses at most
      the chunks in progress, and the final results equal an uninterrupted run's;
    - a run with different settings, model or requests is refused unless ``overwrite``;
    - shard ``(i, N)`` takes chunks ``k`` with ``k % N == i``; shards may run at once into the
      same folder (each holds its own lock) or on different machines, then be merged;
    - a second run of the same shard is refused while the first is alive; a lock left by a dead
      process is taken over.

An executor opens its shard with :func:`open_shard`, generates the chunks of
:attr:`ShardRun.todo` (each with :func:`generate_chunk`, or :func:`generate_chunks` for a
streaming backend), hands each finished one to :meth:`ShardRun.write`, and returns
:meth:`ShardRun.results`.

Example:
    >>> import tempfile
    >>> import polars as pl
    >>> from mipo.generate.config import GenerationConfig
    >>> requests = pl.DataFrame(
    ...     {"request_id": [0, 1, 2], "input_ids": [[5], [6, 7], [8]], "seed": [1, 2, 3]},
    ...     schema=REQUEST_SCHEMA,
    ... )
    >>> config = GenerationConfig(backend="hf", device="cpu", dtype="float32", chunk_size=2)
    >>> # needs a resolved model: its fingerprint is part of the run's identity
    >>> with open_shard(requests, tempfile.mkdtemp(), model=model, config=config) as run:  # doctest: +SKIP
    ...     run.todo, run.rows(1)["request_id"].to_list()
    ([0, 1], [2])
    >>> check_shard((1, 2))
    (1, 2)
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from mipo.errors import ConfigError, GenerationError, OutputError
from mipo.generate.config import comparable_options
from mipo.io import NO_ROOM, output_lock, read_json_record, write_bytes_atomic, write_json_atomic

if TYPE_CHECKING:
    from mipo.generate.backend import Backend, BatchCallback, GenerationResult
    from mipo.generate.config import GenerationConfig
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


# --- a shard's run -----------------------------------------------------------------------------


@dataclass
class ShardRun:
    """One shard of a generation folder, locked and checked: what is done and what is left.

    Built by :func:`open_shard`; valid while its ``with`` block holds the shard's lock.

    Attributes:
        out: the output folder.
        table: the requests, checked and sorted by ``request_id``.
        config: the generation settings.
        manifest: what identifies the run (:func:`build_manifest`), as written to the folder.
        mine: this shard's chunk indices.
        done: finished chunks by index (read back on resume, then added by :meth:`write`).
        todo: the chunks of this shard left to generate when the run opened, lowest first.
    """

    out: Path
    table: pl.DataFrame
    config: GenerationConfig
    manifest: dict[str, Any]
    mine: list[int]
    done: dict[int, pl.DataFrame] = field(default_factory=dict)
    todo: list[int] = field(default_factory=list)

    def rows(self, index: int) -> pl.DataFrame:
        """The requests of chunk ``index``."""
        return chunk_rows(self.table, index, self.config.chunk_size)

    def write(self, index: int, results: pl.DataFrame) -> None:
        """Write a finished chunk atomically and count it done."""
        write_chunk(self.out, index, results, finished=len(self.done))
        self.done[index] = results

    def progress(self, *, enabled: bool) -> Any:
        """A progress task over this shard's rows (those already done counted as done)."""
        return generation_progress(
            enabled=enabled,
            total_rows=sum(self.rows(k).height for k in self.mine),
            done_rows=sum(df.height for df in self.done.values()),
        )

    def results(self) -> pl.DataFrame:
        """This shard's results sorted by ``request_id`` (what every executor returns)."""
        if not self.done:
            return pl.DataFrame(schema=RESULT_SCHEMA)
        return pl.concat([self.done[k] for k in sorted(self.done)]).sort("request_id")


@contextlib.contextmanager
def open_shard(
    requests: pl.DataFrame,
    out_dir: str | os.PathLike[str],
    *,
    model: ResolvedModel,
    config: GenerationConfig,
    shard: tuple[int, int] = (0, 1),
    overwrite: bool = False,
) -> Iterator[ShardRun]:
    """Check the requests and the shard, take the shard's lock, write or check the manifest,
    and read back the chunks a previous run finished.

    Raises GenerationError for bad requests, ConfigError for a bad shard, and OutputError when
    ``out_dir`` holds another run (pass ``overwrite=True``), is locked by a live run, or cannot
    be written.
    """
    shard_index, num_shards = check_shard(shard)
    table = check_requests(requests)
    out = make_folder(out_dir)
    manifest = build_manifest(table, model, config)
    mine = shard_chunks(int(manifest["num_chunks"]), (shard_index, num_shards))
    # One lock file per shard, whatever the executor: a local and a Ray run of one shard
    # exclude each other.
    with output_lock(out / f".lock-shard-{shard_index}-of-{num_shards}"):
        prepare_folder(out, manifest, overwrite=overwrite)
        remove_temp_files(out, mine)
        run = ShardRun(out=out, table=table, config=config, manifest=manifest, mine=mine)
        for k in mine:
            finished = read_chunk(out, k, table, config)
            if finished is None:
                run.todo.append(k)
            else:
                run.done[k] = finished
        yield run


def load_results(out_dir: str | os.PathLike[str], *, require_complete: bool = True) -> pl.DataFrame:
    """Read every finished chunk of an output folder (all shards), sorted by ``request_id``.

    With ``require_complete`` an OutputError names the missing chunks (a shard still running or
    never run) instead of returning partial results.
    """
    out = Path(out_dir)
    manifest = read_manifest(out)
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


def check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    """``(index, count)`` as ints, or a ConfigError saying what a shard must be.

    >>> check_shard((0, 1))
    (0, 1)
    >>> check_shard((2, 2))
    Traceback (most recent call last):
    mipo.errors.ConfigError: shard 2/2 is invalid: the count must be >= 1 and the index in 0..count-1 (e.g. --shard 0/2)
    """
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


def check_requests(requests: pl.DataFrame) -> pl.DataFrame:
    """The requests as :data:`REQUEST_SCHEMA`, sorted by ``request_id``; a GenerationError
    names a missing column, a wrong type, a null, a repeated id or an empty prompt."""
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


def make_folder(out_dir: str | os.PathLike[str]) -> Path:
    """Create the output folder (and its parents); an OutputError when it cannot be one."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder '{out}': {exc.strerror}") from exc
    if not out.is_dir():
        raise OutputError(f"output path '{out}' exists and is not a folder")
    return out


# --- manifest and hashing ----------------------------------------------------------------------


def build_manifest(
    table: pl.DataFrame, model: ResolvedModel, config: GenerationConfig
) -> dict[str, Any]:
    """The manifest of a generation folder: what identifies its output (config, model, requests).

    Every executor writes the same one, so each can resume the others' folders.
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


def read_manifest(out: Path) -> dict[str, Any] | None:
    """The folder's manifest, or None when it has none (a corrupt one is an error)."""
    return read_json_record(out / MANIFEST, what="mipo manifest")


def prepare_folder(out: Path, manifest: dict[str, Any], *, overwrite: bool) -> None:
    """Write ``manifest`` into ``out``, or check that the folder holds the same run.

    A folder of another run is refused unless ``overwrite`` (then its chunks are deleted).
    """
    existing = read_manifest(out)
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
    """Whether a manifest written before an option became ignored (``NOT_OUTPUT_AFFECTING``,
    vLLM-only options under hf) describes the same run: same model, requests and chunking, and
    its settings equal today's once compared as today's are."""
    config = existing.get("config")
    return (
        isinstance(config, dict)
        and existing.get("model_fingerprint") == manifest["model_fingerprint"]
        and existing.get("requests_hash") == manifest["requests_hash"]
        and existing.get("chunk_size") == manifest["chunk_size"]
        and comparable_options(config) == manifest["config"]
    )


# --- chunks ------------------------------------------------------------------------------------


def shard_chunks(num_chunks: int, shard: tuple[int, int]) -> list[int]:
    """The chunk indices shard ``(index, count)`` takes: ``k % count == index``.

    >>> shard_chunks(7, (1, 3))
    [1, 4]
    """
    index, count = shard
    return [k for k in range(num_chunks) if k % count == index]


def shard_request_ids(table: pl.DataFrame, chunk_size: int, shard: tuple[int, int]) -> pl.Series:
    """The request ids of a shard's chunks (``table`` sorted by ``request_id``)."""
    index, count = shard
    chunk = pl.int_range(0, table.height, eager=True) // chunk_size
    return table["request_id"].filter(chunk % count == index)


def chunk_rows(table: pl.DataFrame, index: int, chunk_size: int) -> pl.DataFrame:
    """The requests of chunk ``index`` (``table`` sorted by ``request_id``)."""
    return table.slice(index * chunk_size, chunk_size)


def read_chunk(
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
    expected = chunk_rows(table, index, config.chunk_size)["request_id"]
    if df.height != expected.len() or not df["request_id"].equals(expected):
        return None
    return df


def generate_chunk(
    backend: Backend, rows: pl.DataFrame, on_batch: BatchCallback | None
) -> pl.DataFrame:
    """One chunk's results: the unit of work of every executor, so a chunk's batches and seeds
    are the same whoever generates it."""
    results = backend.generate(
        rows["input_ids"].to_list(), rows["seed"].to_list(), on_batch=on_batch
    )
    return chunk_frame(backend, rows, results)


def generate_chunks(
    backend: Backend,
    chunks: Iterable[tuple[int, pl.DataFrame]],
    on_batch: BatchCallback | None,
) -> Iterator[tuple[int, pl.DataFrame]]:
    """``(chunk index, results)`` as chunks finish. A backend with ``generate_chunks`` (vLLM)
    keeps several chunks in flight and yields each as soon as its rows are done, in any order;
    others generate one chunk at a time (:func:`generate_chunk`)."""
    streaming = getattr(backend, "generate_chunks", None)
    if streaming is None:
        for k, rows in chunks:
            yield k, generate_chunk(backend, rows, on_batch)
        return
    frames: dict[int, pl.DataFrame] = {}

    def work() -> Iterator[tuple[int, list[list[int]], list[int]]]:
        for k, rows in chunks:
            frames[k] = rows
            yield k, rows["input_ids"].to_list(), rows["seed"].to_list()

    for k, results in streaming(work(), on_batch=on_batch):
        yield k, chunk_frame(backend, frames.pop(k), results)


def chunk_frame(
    backend: Backend, rows: pl.DataFrame, results: list[GenerationResult]
) -> pl.DataFrame:
    """A chunk's results as :data:`RESULT_SCHEMA` rows (one result per request, in order)."""
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


def write_chunk(out: Path, index: int, df: pl.DataFrame, *, finished: int) -> None:
    """Write chunk ``index`` atomically and durably; a full disk is an OutputError saying that
    the ``finished`` chunks are kept and a rerun resumes."""
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


def remove_temp_files(out: Path, chunks: list[int]) -> None:
    """Temp files of these chunks left by a killed run (the caller holds the shard's lock)."""
    for k in chunks:
        for temp in out.glob(f".{chunk_path(out, k).name}.tmp-*"):
            with contextlib.suppress(OSError):
                temp.unlink()


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
    "ShardRun",
    "build_manifest",
    "check_requests",
    "check_shard",
    "chunk_frame",
    "chunk_path",
    "chunk_rows",
    "generate_chunk",
    "generate_chunks",
    "generation_progress",
    "load_results",
    "make_folder",
    "open_shard",
    "prepare_folder",
    "read_chunk",
    "read_manifest",
    "remove_temp_files",
    "shard_chunks",
    "shard_request_ids",
    "write_chunk",
]
