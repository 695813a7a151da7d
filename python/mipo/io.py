"""Atomic writes, JSON records and locks: one policy for the whole package.

- **Writes**: every file mipo writes goes to a temporary name beside its target
  (``.NAME.tmp-`` plus a random suffix) and is renamed into place (:func:`atomic_path`, :func:`atomic_dir`), so a
  reader sees the old file or the new one, never half of one, and a failure leaves no temporary
  behind. A write that fails for lack of room or permission is one :class:`~mipo.errors.OutputError`
  naming the file (:func:`write_errors`).
- **Records**: :func:`read_json_record` reads a JSON object mipo wrote (``run.json``,
  ``stats.json``, ``manifest.json``, ``train_config.json``, ``metrics.json``...): an absent file
  is ``None``; an unreadable one, or one that is not a JSON object, is a typed error naming the
  file and the fix. A corrupt record is never read as "absent": a check that depends on it fails
  closed. A caller that may recompute what a record holds says so at its call site.
- **Locks**: :func:`output_lock` (refuse at once) and :func:`wait_lock` (wait up to a timeout)
  hold an OS lock (``flock``, through the ``filelock`` package) on a lock file, so a lock of a
  dead process is released by the kernel and never blocks a folder. Beside it, ``LOCK.owner``
  holds ``host:pid`` so a refusal can say who holds the lock.

Heavy imports (polars) stay out: the module is imported by the model resolver and the CLI.

Example:
    >>> import tempfile; from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = write_json_atomic({"status": "complete"}, folder / "run.json")
    >>> read_json_record(folder / "run.json", what="run record")
    {'status': 'complete'}
    >>> read_json_record(folder / "absent.json") is None
    True
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mipo.errors import MipoError, OutputError

if TYPE_CHECKING:
    import polars as pl

__all__ = [
    "atomic_dir",
    "atomic_path",
    "lock_owner",
    "output_lock",
    "read_json_record",
    "replace_dir",
    "wait_lock",
    "write_bytes_atomic",
    "write_errors",
    "write_json_atomic",
    "write_parquet_atomic",
    "write_text_atomic",
]

# --- write failures ----------------------------------------------------------------------------

# errno values that mean "no room": a full disk, an exhausted quota, a file-size limit (ulimit -f).
NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# Polars reports a failed file write as a ComputeError whose text carries the OS error, e.g.
# "parquet: File out of specification: underlying IO error: File too large (os error 27)".
_POLARS_IO = re.compile(
    r"io error: (?P<reason>.+?)(?: \(os error (?P<errno>\d+)\))?$", re.IGNORECASE | re.MULTILINE
)


def _polars_errors() -> tuple[type[BaseException], ...]:
    # Polars can only have raised if it is imported; this module never imports it itself.
    pl = sys.modules.get("polars")
    return (pl.exceptions.PolarsError,) if pl is not None else ()


def write_failure(exc: BaseException) -> tuple[str, int | None] | None:
    """``(reason, errno)`` when ``exc`` is a failed write to the file system, else None."""
    if isinstance(exc, MipoError):
        return None
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
        # pyarrow: "Error writing bytes to file. Detail: [errno 27] File too large"
        detail = re.search(r"\[errno (\d+)\] (.+)$", reason)
        if detail:
            return detail[2].strip(), exc.errno or int(detail[1])
        return reason, exc.errno
    if isinstance(exc, _polars_errors()):
        text = str(exc)
        match = _POLARS_IO.search(text)
        if match:
            code = match["errno"]
            return match["reason"].strip(), int(code) if code else None
        if "transport error" in text:  # older Polars: the thrift writer lost its file
            return text.strip().splitlines()[-1], None
    return None


@contextlib.contextmanager
def write_errors(target: str | os.PathLike[str], name: str | None = None) -> Iterator[None]:
    """Turn a failed write (full disk, quota, ``ulimit -f``, permissions) into one clear
    :class:`~mipo.errors.OutputError` naming the file and its folder.

    Other errors (a frame Polars cannot serialize, mipo's own errors) pass through unchanged.

    >>> with write_errors("/proc/no/such/dir/x.json"):  # doctest: +ELLIPSIS
    ...     open("/proc/no/such/dir/x.json", "w")
    Traceback (most recent call last):
    mipo.errors.OutputError: cannot write x.json in '/proc/no/such/dir' (No such file ...): ...
    """
    target = Path(target)
    try:
        yield
    except (OSError, *_polars_errors()) as exc:
        failure = write_failure(exc)
        if failure is None:
            raise
        reason, code = failure
        hint = (
            "check free space (df -h) and rerun the same command"
            if code in NO_ROOM or code is None
            else "check that the folder is writable and has free space (df -h), then rerun the "
            "same command"
        )
        raise OutputError(
            f"cannot write {name or target.name} in '{target.parent}' ({reason}): {hint}"
        ) from exc


# --- atomic files and folders ------------------------------------------------------------------


def _plain_permissions(path: Path, mode: int) -> None:
    # mkstemp/mkdtemp create private entries; give the output what a plain open()/mkdir() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename) to disk; best effort, some file systems refuse."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], *, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only on success.

    A crash or an exception (Ctrl-C included) leaves ``target`` as it was (absent or the previous
    version), never half written, and removes the temporary file. A write that fails for lack of
    room (or permission) raises one clear :class:`~mipo.errors.OutputError` (see
    :func:`write_errors`). ``durable`` also fsyncs the file before the rename and the folder
    after it, so the file survives a power loss (generation chunks: GPU hours each).
    """
    target = Path(target)
    with write_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        try:
            _plain_permissions(tmp_path, 0o666)
            yield tmp_path
            if durable:
                fd = os.open(tmp_path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            os.replace(tmp_path, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp_path.unlink()
    if durable:
        fsync_dir(target.parent)


def replace_dir(staging: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Move the finished folder ``staging`` onto ``target`` (an existing ``target`` is removed
    first; both sit in one folder, so the final step is one rename)."""
    target = Path(target)
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif target.exists() or target.is_symlink():
        target.unlink()
    os.replace(staging, target)
    return target


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; it replaces ``target`` only on success.

    A failure removes the temporary folder and leaves ``target`` as it was.

    >>> import tempfile; from pathlib import Path
    >>> base = Path(tempfile.mkdtemp())
    >>> with atomic_dir(base / "model") as tmp:
    ...     _ = (tmp / "config.json").write_text("{}")
    >>> sorted(p.name for p in base.iterdir()), (base / "model" / "config.json").is_file()
    (['model'], True)
    """
    target = Path(target)
    with write_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        _plain_permissions(staging, 0o777)  # the folder may be shared (the model cache)
        yield staging
        with write_errors(target):
            replace_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_bytes_atomic(
    data: bytes, target: str | os.PathLike[str], *, durable: bool = False
) -> Path:
    """Write ``data`` to ``target`` through a temporary file and a rename."""
    with atomic_path(target, durable=durable) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
    return Path(target)


def write_text_atomic(text: str, target: str | os.PathLike[str]) -> Path:
    """Write ``text`` (UTF-8) to ``target`` through a temporary file and a rename."""
    return write_bytes_atomic(text.encode("utf-8"), target)


def write_json_atomic(
    data: Any,
    target: str | os.PathLike[str],
    *,
    sort_keys: bool = False,
    default: Any = None,
    durable: bool = False,
) -> Path:
    """Write ``data`` as indented JSON through a temporary file and a rename."""
    text = json.dumps(data, indent=2, sort_keys=sort_keys, default=default) + "\n"
    return write_bytes_atomic(text.encode("utf-8"), target, durable=durable)


def write_parquet_atomic(frame: pl.DataFrame, target: str | os.PathLike[str]) -> Path:
    """Write ``frame`` to ``target`` (zstd Parquet) through a temporary file and a rename."""
    with atomic_path(target) as tmp:
        frame.write_parquet(tmp, compression="zstd", statistics=False)
    return Path(target)


# --- JSON records ------------------------------------------------------------------------------

OVERWRITE_FIX = "rerun with --overwrite to start over"


def read_json_record(
    path: str | os.PathLike[str],
    *,
    what: str = "mipo record",
    fix: str = OVERWRITE_FIX,
    error: type[MipoError] = OutputError,
) -> dict[str, Any] | None:
    """The JSON object at ``path`` (a record mipo or a model folder wrote), or None if absent.

    An unreadable file, invalid JSON, or a value that is not a JSON object raises ``error`` (an
    :class:`~mipo.errors.OutputError` unless the caller names another class) with one line naming
    the file and ``fix``: a corrupt record is never taken for a missing one.

    >>> read_json_record("/no/such/run.json") is None
    True
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise error(f"{what} '{path}' is a folder, not a file: {fix}") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise error(f"{what} '{path}' is unreadable ({reason}): {fix}") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise error(f"{what} '{path}' is not valid JSON ({exc}): {fix}") from exc
    if not isinstance(data, dict):
        raise error(f"{what} '{path}' is not a JSON object: {fix}")
    return data


# --- locks -------------------------------------------------------------------------------------


def _owner_path(lock_path: Path) -> Path:
    return lock_path.with_name(lock_path.name + ".owner")


def lock_owner(lock_path: str | os.PathLike[str]) -> tuple[str, int | None] | None:
    """``(host, pid)`` recorded by the holder of ``lock_path``, None when nobody recorded one."""
    try:
        text = _owner_path(Path(lock_path)).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        return ("?", None)
    host, _, pid = text.strip().rpartition(":")
    return (host, int(pid) if pid.isdigit() else None)


def _holder(lock_path: Path) -> str:
    owner = lock_owner(lock_path)
    if owner is None:
        return "another mipo run"
    host, pid = owner
    where = "" if host == socket.gethostname() else f" on {host}"
    return f"another mipo run (pid {pid}{where})"


@contextlib.contextmanager
def _held(lock_path: Path, timeout_s: float) -> Iterator[bool]:
    """Hold ``lock_path``, yielding True, or yield False when it stays held for ``timeout_s``."""
    from filelock import FileLock, Timeout

    lock = FileLock(lock_path, timeout=timeout_s, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        acquired = False
    except OSError as exc:
        raise OutputError(
            f"cannot create lock file {lock_path}: {exc.strerror or exc}; check that the folder "
            "is writable"
        ) from exc
    else:
        acquired = True
    if not acquired:
        yield False
        return
    owner = _owner_path(lock_path)
    try:
        with contextlib.suppress(OSError):  # the owner note is a diagnostic, not the lock
            owner.write_text(f"{socket.gethostname()}:{os.getpid()}", encoding="utf-8")
        yield True
    finally:
        # Remove the names while still holding the lock: a process that opened the old file
        # and gets it after us finds it unlinked and tries again (filelock checks st_nlink).
        with contextlib.suppress(OSError):
            owner.unlink()
        with contextlib.suppress(OSError):
            lock_path.unlink()
        lock.release()


@contextlib.contextmanager
def output_lock(lock_path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the lock of an output folder (or shard) for a run; a held lock refuses at once.

    The refusal names the holder (``host:pid`` from ``LOCK.owner``). A lock whose process died
    is free (the kernel released it), so a killed run never blocks its folder.

    >>> import tempfile; from pathlib import Path
    >>> lock = Path(tempfile.mkdtemp()) / ".lock"
    >>> with output_lock(lock):
    ...     lock.exists()
    True
    >>> lock.exists()
    False
    """
    lock_path = Path(lock_path)
    with _held(lock_path, 0) as held:
        if not held:
            raise OutputError(
                f"{_holder(lock_path)} is writing to '{lock_path.parent}'; wait for it to finish "
                f"or stop it (if no such run exists, delete {lock_path})"
            )
        yield


@contextlib.contextmanager
def wait_lock(
    lock_path: str | os.PathLike[str],
    *,
    timeout_s: float,
    what: str,
    error: type[MipoError] = OutputError,
) -> Iterator[None]:
    """Hold ``lock_path``, waiting up to ``timeout_s`` seconds for its holder to finish ``what``.

    A timeout raises ``error`` naming the holder and the lock file.
    """
    lock_path = Path(lock_path)
    with _held(lock_path, timeout_s) as held:
        if not held:
            raise error(
                f"timed out waiting ({timeout_s:g}s) for {_holder(lock_path)} {what} "
                f"({lock_path}); if no such process runs, delete that file"
            )
        yield
