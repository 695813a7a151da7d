"""mipo.io: atomic writes, the one policy for JSON records, and the output locks."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest

from mipo.errors import CorpusError, OutputError
from mipo.io import (
    atomic_dir,
    atomic_path,
    lock_owner,
    output_lock,
    read_json_record,
    wait_lock,
    write_json_atomic,
    write_parquet_atomic,
    write_text_atomic,
)

# --- atomic writes -------------------------------------------------------------------------------


def test_atomic_writes_leave_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.parquet"
    frame = pl.DataFrame({"x": [1, 2]})
    write_parquet_atomic(frame, target)
    assert pl.read_parquet(target).equals(frame)
    mode = stat.S_IMODE(target.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
    unwritable = pl.DataFrame({"x": [object()]}, schema={"x": pl.Object})
    with pytest.raises(Exception):  # noqa: B017 - polars' own error type for Object columns
        write_parquet_atomic(unwritable, target)
    assert pl.read_parquet(target).equals(frame)  # the previous version is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.parquet"]
    write_json_atomic({"a": 1}, tmp_path / "x.json")
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}


def test_atomic_path_keeps_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    target = write_text_atomic("old", tmp_path / "report.md")
    with pytest.raises(KeyboardInterrupt), atomic_path(target, durable=True) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


def test_atomic_dir_replaces_a_folder_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "config.json").write_text("{}")
    assert (target / "config.json").is_file()
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "weights").write_text("partial")
        raise RuntimeError("crashed while saving")
    assert sorted(p.name for p in target.iterdir()) == ["config.json"]  # the old folder
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("full")
    assert sorted(p.name for p in target.iterdir()) == ["weights"]  # replaced, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_failed_write_is_one_output_error_naming_the_file(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with pytest.raises(OutputError, match=r"cannot write run\.json in '.*file'"):
        write_json_atomic({}, blocked / "run.json")


# --- JSON records --------------------------------------------------------------------------------


def test_missing_record_is_none(tmp_path: Path) -> None:
    assert read_json_record(tmp_path / "run.json") is None


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"status": "comp', "is not valid JSON"),
        ("[1, 2]", "is not a JSON object"),
        (b"\xff\xfe{}", "is unreadable"),
    ],
)
def test_corrupt_record_is_a_typed_error_naming_file_and_fix(
    tmp_path: Path, content: str | bytes, problem: str
) -> None:
    path = tmp_path / "train_config.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(OutputError) as raised:
        read_json_record(path, what="training record")
    message = str(raised.value)
    assert message.startswith(f"training record '{path}' {problem}")
    assert message.endswith("rerun with --overwrite to start over")
    assert "\n" not in message


def test_record_errors_take_the_callers_class_and_fix(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text("{")
    with pytest.raises(CorpusError, match=r"'.*run\.json' is not valid JSON .*: restore it$"):
        read_json_record(path, fix="restore it", error=CorpusError)
    folder = tmp_path / "metrics.json"
    folder.mkdir()
    with pytest.raises(OutputError, match="is a folder, not a file"):
        read_json_record(folder)


# --- locks ---------------------------------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys, time
    from mipo.io import output_lock
    with output_lock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(60)
    """
)


def _hold_in_subprocess(lock: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_held_lock_refuses_and_names_its_holder(tmp_path: Path) -> None:
    lock = tmp_path / ".lock-shard-0-of-1"
    holder = _hold_in_subprocess(lock)
    try:
        assert lock_owner(lock) == (socket.gethostname(), holder.pid)
        with pytest.raises(OutputError) as raised, output_lock(lock):
            pass
        message = str(raised.value)
        assert f"another mipo run (pid {holder.pid}) is writing to '{tmp_path}'" in message
        assert f"delete {lock}" in message
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout:
            holder.stdout.close()
    # Killed without cleaning up: the kernel released its lock, and the next run takes it.
    assert lock.exists()
    with output_lock(lock):
        assert lock_owner(lock) == (socket.gethostname(), os.getpid())
    assert not lock.exists() and not lock.with_name(lock.name + ".owner").exists()


def test_a_lock_is_exclusive_within_one_process_too(tmp_path: Path) -> None:
    lock = tmp_path / ".lock"
    with output_lock(lock):
        with pytest.raises(OutputError, match="another mipo run"), output_lock(lock):
            pass
        started = time.monotonic()
        with (
            pytest.raises(OutputError, match=r"timed out waiting .* converting"),
            wait_lock(lock, timeout_s=0.3, what="converting a model"),
        ):
            pass
        assert time.monotonic() - started >= 0.25
    with wait_lock(lock, timeout_s=0.3, what="converting a model"):
        assert lock.exists()
    assert not lock.exists()


def test_an_unwritable_lock_folder_is_an_output_error(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(OutputError, match="cannot create lock file"), output_lock(blocked / "x"):
        pass
