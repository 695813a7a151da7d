"""Hashing a file's bytes in bounded memory (shared by model stamps, pairs provenance and the
evaluation cache)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

BLOCK = 1 << 22


def update_from_file(digest: Any, path: str | Path) -> Any:
    """Feed ``path``'s bytes to ``digest`` (a hashlib object) block by block; return it."""
    with Path(path).open("rb") as handle:
        while block := handle.read(BLOCK):
            digest.update(block)
    return digest
