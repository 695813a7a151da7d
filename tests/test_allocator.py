"""mipo._allocator: glibc malloc settings for CPU work, checked by what glibc then does.

Each case runs in a fresh interpreter (malloc settings are per process and cannot be undone), and
reads glibc's own accounting (``mallinfo2``): a 64 MiB block is mmapped under glibc's defaults
(counted in ``hblkhd``) and served from the heap (``uordblks``) once the settings are in effect,
and after it is freed the heap keeps its pages (``arena`` does not shrink).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from mipo import _allocator
from mipo.errors import ConfigError

pytestmark = pytest.mark.skipif(
    _allocator._glibc() is None, reason="the allocator settings exist only with glibc on Linux"
)

_PROBE = textwrap.dedent(
    """
    import ctypes, json, sys
    from mipo._allocator import tune_cpu_allocator

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    applied = tune_cpu_allocator(sys.argv[1])
    again = tune_cpu_allocator(sys.argv[1])
    before = libc.mallinfo2()
    block = libc.malloc(64 << 20)
    during = libc.mallinfo2()
    libc.free(block)
    after = libc.mallinfo2()
    print(json.dumps({
        "applied": applied,
        "again": again,
        "mmapped_for_block": during.hblkhd - before.hblkhd,
        "heap_in_use_growth": during.uordblks - before.uordblks,
        "heap_given_back_after_free": during.arena - after.arena,
    }))
    """
)


def _probe(device: str, *, env: dict[str, str] | None = None) -> dict[str, int | bool]:
    environ = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", _allocator.ENV)}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, device],
        env={**environ, **(env or {})},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def test_cpu_serves_large_blocks_from_the_heap_and_keeps_it() -> None:
    got = _probe("cpu")
    assert got["applied"] is True and got["again"] is True
    assert got["mmapped_for_block"] == 0
    assert got["heap_in_use_growth"] >= 64 << 20
    assert got["heap_given_back_after_free"] == 0  # no trim: the pages are reused next step


@pytest.mark.parametrize(
    ("device", "env"), [("cuda", None), ("cuda:1", None), ("cpu", {_allocator.ENV: "0"})]
)
def test_glibc_defaults_where_not_applied(device: str, env: dict[str, str] | None) -> None:
    got = _probe(device, env=env)
    assert got["applied"] is False
    assert got["mmapped_for_block"] >= 64 << 20  # glibc's default: its own mmap
    assert got["heap_in_use_growth"] < 1 << 20


def test_refused_setting_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    class RefusingLibc:
        @staticmethod
        def mallopt(option: int, value: int) -> int:
            return 0

    monkeypatch.setattr(_allocator, "_applied", None)
    monkeypatch.setattr(_allocator, "_glibc", lambda: RefusingLibc())
    monkeypatch.delenv(_allocator.ENV, raising=False)
    with pytest.raises(ConfigError, match=r"glibc refused mallopt\(-3, 1073741824\).*MIPO_MALLOC"):
        _allocator.tune_cpu_allocator("cpu")
