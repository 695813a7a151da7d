"""An exclusive ``host:pid`` lock file for an output folder (one writer per folder or shard).

A second run is refused with a clear :class:`~mipo.errors.OutputError`; a lock left by a dead
process on this host is taken over, so a crash never leaves a folder stuck.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from mipo.errors import OutputError


@contextlib.contextmanager
def run_lock(lock_path: Path) -> Iterator[None]:
    """Hold ``lock_path`` (content ``host:pid``) for the run; take over locks of dead pids."""
    me = f"{socket.gethostname()}:{os.getpid()}"
    for _attempt in range(3):
        try:
            fd = os.open(lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = lock_owner(lock_path)
            if owner is None:  # the holder just released it, or it was stale and removed
                continue
            host, pid = owner
            if host == socket.gethostname() and pid is not None and not pid_alive(pid):
                # Rename first: of two processes taking over at once, only one succeeds.
                stale = lock_path.with_name(f"{lock_path.name}.stale-{os.getpid()}")
                with contextlib.suppress(FileNotFoundError):
                    os.replace(lock_path, stale)
                    stale.unlink()
                continue
            holder = f"pid {pid}" if host == socket.gethostname() else f"pid {pid} on {host}"
            raise OutputError(
                f"another mipo run ({holder}) is writing to '{lock_path.parent}'; wait for it to "
                f"finish or stop it (if no such run exists, delete {lock_path})"
            ) from None
        except OSError as exc:
            raise OutputError(f"cannot create lock file {lock_path}: {exc.strerror}") from exc
        with os.fdopen(fd, "w") as handle:
            handle.write(me)
        break
    else:
        raise OutputError(f"could not take the lock {lock_path}; delete it if no run is active")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if lock_path.read_text() == me:
                lock_path.unlink()


def lock_owner(lock_path: Path) -> tuple[str, int | None] | None:
    try:
        text = lock_path.read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return ("?", None)
    host, _, pid = text.strip().rpartition(":")
    return (host, int(pid) if pid.isdigit() else None)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


__all__ = ["lock_owner", "pid_alive", "run_lock"]
