"""Hashing a file's bytes in bounded memory (shared by model stamps, pairs provenance and the
evaluation cache): :func:`hashlib.file_digest` does the reading; this module only lets several
files feed one running digest.

>>> import hashlib, tempfile
>>> from pathlib import Path
>>> path = Path(tempfile.mkdtemp()) / "a.txt"
>>> _ = path.write_bytes(b"abc")
>>> update_from_file(hashlib.sha256(), path).hexdigest() == hashlib.sha256(b"abc").hexdigest()
True
>>> both = update_from_file(update_from_file(hashlib.sha256(), path), path)
>>> both.hexdigest() == hashlib.sha256(b"abcabc").hexdigest()
True
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any


def update_from_file(digest: Any, path: str | Path) -> Any:
    """Feed ``path``'s bytes to ``digest`` (a hashlib object, which may already hold other
    files' bytes); return it."""
    with Path(path).open("rb") as handle:
        # file_digest calls its second argument for the object to update: ours, not a new one.
        return hashlib.file_digest(handle, lambda: digest)
