"""The Rust error enum maps exhaustively onto mipo.errors."""

from __future__ import annotations

import re
from pathlib import Path

import mipo.errors as errors

ROOT = Path(__file__).resolve().parents[1]


def test_every_engine_error_kind_has_a_python_class() -> None:
    source = (ROOT / "rust" / "error.rs").read_text()
    variants = re.findall(r"^\s{4}([A-Z][A-Za-z]+)\(String\),", source, flags=re.M)
    kinds = re.findall(r'=> "([A-Za-z]+)"', source)
    assert variants, "no variants parsed from rust/error.rs"
    assert len(kinds) == len(variants), "kind() must name every variant"
    for kind in kinds:
        cls = getattr(errors, kind, None)
        assert cls is not None, f"mipo.errors lacks {kind}"
        assert issubclass(cls, errors.EngineError)
        assert issubclass(cls, errors.MipoError)


def test_all_exports_exist() -> None:
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), Exception)
