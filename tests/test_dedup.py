"""Dedup: the native engine (rust/dedup.rs) against the pure-Python reference, bad input, streaming."""

from __future__ import annotations

import doctest
import os
import subprocess
import sys

import polars as pl
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mipo import _engine, engine
from mipo import _reference as ref
from mipo.errors import InvalidInputError, InvalidParameterError

# Characters assigned in Python's Unicode database (Cn excluded), so that the Rust crates' newer
# Unicode tables and Python's 14.0 agree; plus the whole whitespace set and some NFKC/casefold
# favourites, drawn often.
SPECIAL = sorted(ref.DEDUP_WHITESPACE) + list("ẞßﬁＡＢｃ①Å\u0301İıςΣǅ㎒ＨＩ ")
unicode_text = st.text(
    alphabet=st.one_of(
        st.characters(exclude_categories=("Cs", "Cn", "Co")),
        st.sampled_from(SPECIAL),
    ),
    max_size=40,
)

VOCAB = [f"w{i}" for i in range(40)] + ["Apple", "APPLE", "straße", "STRASSE", "ﬁne", "café"]


def native(texts: list[str], **kw: object) -> tuple[list[bool], list[int], list[bool]]:
    keep, cluster, exact = _engine.dedup(pl.Series(texts, dtype=pl.String), **kw)
    return (
        pl.Series(keep).to_list(),
        pl.Series(cluster).to_list(),
        pl.Series(exact).to_list(),
    )


@st.composite
def corpora(draw: st.DrawFn) -> list[str]:
    """Random word texts with planted exact copies (case/space variants) and near copies."""
    n = draw(st.integers(0, 30))
    texts: list[str] = []
    for _ in range(n):
        kind = draw(st.sampled_from(["new", "new", "exact", "near"])) if texts else "new"
        if kind == "new":
            length = draw(st.integers(0, 60))
            words = draw(st.lists(st.sampled_from(VOCAB), min_size=length, max_size=length))
            sep = draw(st.sampled_from([" ", "  ", "\t", "\u3000"]))
            texts.append(sep.join(words))
        else:
            src = draw(st.sampled_from(texts))
            if kind == "exact":
                texts.append(draw(st.sampled_from([src, src.upper(), f"  {src}\n"])))
            else:
                words = src.split()
                for _ in range(draw(st.integers(1, 3))):
                    if not words:
                        break
                    i = draw(st.integers(0, len(words) - 1))
                    op = draw(st.sampled_from(["replace", "delete", "insert"]))
                    w = draw(st.sampled_from(VOCAB))
                    if op == "replace":
                        words[i] = w
                    elif op == "delete":
                        del words[i]
                    else:
                        words.insert(i, w)
                texts.append(" ".join(words))
    return texts


dedup_params = st.fixed_dictionaries(
    {
        "ngram": st.integers(1, 6),
        "shape": st.sampled_from([(112, 14), (16, 8), (16, 16), (12, 3), (8, 1)]),
        "threshold": st.sampled_from([0.3, 0.5, 0.7, 0.8, 0.9, 1.0]),
        "seed": st.integers(0, 2**64 - 1),
        "near": st.sampled_from([True, True, True, False]),
    }
)


def _unpack(p: dict) -> dict:
    num_perm, bands = p["shape"]
    return {
        "ngram": p["ngram"],
        "num_perm": num_perm,
        "bands": bands,
        "threshold": p["threshold"],
        "seed": p["seed"],
        "near": p["near"],
    }


# --- normalization ---------------------------------------------------------------------------


def test_whitespace_set_is_pythons_isspace() -> None:
    assert {chr(c) for c in range(0x110000) if chr(c).isspace()} == ref.DEDUP_WHITESPACE


@settings(max_examples=300, deadline=None)
@given(st.lists(unicode_text, max_size=8))
def test_normalize_equals_reference(texts: list[str]) -> None:
    got = pl.Series(_engine.normalize(pl.Series(texts, dtype=pl.String))).to_list()
    assert got == [ref.normalize_text(t) for t in texts]


def test_normalize_examples_and_nulls() -> None:
    s = pl.Series(["  Ｈello\tWORLD ", "Straße\u00a0\u2003ﬁne", None, "", "Cafe\u0301"])
    assert engine.normalize(s).to_list() == ["hello world", "strasse fine", None, "", "café"]
    assert engine.normalize(s).dtype == pl.String


# --- reference internals pinned to the Rust constants --------------------------------------------


def test_reference_hashes_match_rust_known_values() -> None:
    # Published XXH64 vectors, the same as rust/dedup.rs `xxh64_known_values`; lengths cover
    # every branch (stripes of 32, lanes of 8, a word of 4, single bytes).
    assert ref.xxh64(b"") == 0xEF46DB3751D8E999
    assert ref.xxh64(b"a") == 0xD24EC4F1A98C6E5B
    assert ref.xxh64(b"abc") == 0x44BC2CF5AD770999
    # a_k, b_k are consecutive xoshiro256++ outputs.
    rng = ref.Xoshiro256pp(1)
    assert ref.minhash_params(2, seed=1) == [(rng.next_u64(), rng.next_u64()) for _ in range(2)]
    assert ref.shingle_set("a b c", 2) == {ref.xxh64(b"a b") >> 32, ref.xxh64(b"b c") >> 32}


# --- native == reference -----------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corpora(), dedup_params)
def test_dedup_equals_reference(texts: list[str], p: dict) -> None:
    kw = _unpack(p)
    assert native(texts, **kw) == ref.dedup_reference(texts, **kw)


@settings(max_examples=40, deadline=None)
@given(st.lists(unicode_text, max_size=12), st.integers(1, 3))
def test_dedup_equals_reference_on_unicode(texts: list[str], ngram: int) -> None:
    kw = {"ngram": ngram, "num_perm": 16, "bands": 8, "threshold": 0.5, "seed": 7}
    assert native(texts, **kw) == ref.dedup_reference(texts, **kw)


def test_planted_near_duplicates_are_found() -> None:
    # 200-word texts with one word replaced: Jaccard ~0.95 on 5-gram shingles.
    import random

    rng = random.Random(0)
    base = [" ".join(rng.choice(VOCAB[:40]) for _ in range(200)) for _ in range(60)]
    near = []
    for t in base:
        words = t.split()
        words[rng.randrange(200)] = "planted"
        near.append(" ".join(words))
    out = engine.dedup(pl.Series(base + near))
    assert out["keep"].to_list() == [True] * 60 + [False] * 60
    assert out["cluster"].to_list() == list(range(60)) * 2
    assert not out["exact"].any()
    assert native(base + near) == ref.dedup_reference(base + near)


# --- streaming ---------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(corpora(), dedup_params, st.lists(st.integers(0, 10), max_size=6))
def test_streaming_equals_one_shot(texts: list[str], p: dict, cuts: list[int]) -> None:
    kw = _unpack(p)
    cfg = engine.DedupConfig(**kw)
    whole = engine.dedup(pl.Series(texts, dtype=pl.String), cfg)
    d = engine.Deduper(cfg)
    parts, start = [], 0
    for c in [*cuts, len(texts)]:
        end = min(len(texts), start + c) if c != len(texts) else len(texts)
        parts.append(d.add(pl.Series(texts[start:end], dtype=pl.String)))
        start = end
    assert pl.concat(parts).equals(whole)
    assert d.rows_seen == len(d) == len(texts)
    assert d.clusters == whole["keep"].sum()


def test_deduper_state_is_compact_and_grows_with_kept_rows() -> None:
    d = engine.Deduper()
    d.add(pl.Series([f"text number {i} " * 10 for i in range(2000)]))
    assert d.clusters == 2000
    # ~0.5 KB per kept row (see rust/dedup.rs); generous bound, catches keeping the text etc.
    assert d.state_bytes < 2000 * 1500
    before = d.state_bytes
    d.add(pl.Series(["text number 5 " * 10] * 500))
    assert d.state_bytes <= before * 1.01 + 4096
    assert d.rows_seen == 2500


def test_result_does_not_depend_on_thread_count() -> None:
    code = (
        "import polars as pl; from mipo import engine;"
        "t=[' '.join(f'w{(i*7+j)%50}' for j in range(20+i%9)) for i in range(3000)];"
        "print(engine.dedup(pl.Series(t))['cluster'].to_list())"
    )
    outs = []
    for threads in ("1", "2"):
        env = {**os.environ, "RAYON_NUM_THREADS": threads}
        res = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        outs.append(res.stdout)
    assert outs[0] == outs[1]
    assert len(set(eval(outs[0]))) < 3000  # some near duplicates were found


# --- input layouts, empty input, bad input -----------------------------------------------------


def test_all_string_layouts_and_chunked_input() -> None:
    texts = ["a b c", "A  B C", "x"]
    want = engine.dedup(pl.Series(texts))
    for arr in (
        pa.array(texts, pa.string()),
        pa.array(texts, pa.large_string()),
        pa.array(texts, pa.string_view()),
        pa.chunked_array([texts[:1], texts[1:]], pa.string()),
        pl.concat([pl.Series(texts[:2]), pl.Series(texts[2:])], rechunk=False),
    ):
        assert engine.dedup(arr).equals(want)
    assert want["keep"].to_list() == [True, False, True]


def test_empty_input_gives_empty_frame() -> None:
    out = engine.dedup(pl.Series([], dtype=pl.String))
    assert out.shape == (0, 3)
    assert out.schema == pl.Schema({"keep": pl.Boolean, "cluster": pl.UInt32, "exact": pl.Boolean})


def test_null_is_an_input_error_naming_the_row() -> None:
    with pytest.raises(InvalidInputError, match=r"null at row 2.*drop or fill"):
        engine.dedup(pl.Series(["a", "b", None]))
    d = engine.Deduper()
    with pytest.raises(InvalidInputError, match="row 0"):
        d.add(pl.Series([None, "a"], dtype=pl.String))
    assert d.rows_seen == 0  # a failed add leaves the state untouched


@pytest.mark.parametrize(
    "bad", [pl.Series([1, 2, 3]), pl.Series([[1], [2]]), pa.array([1.5]), pl.Series([None, None])]
)
def test_non_string_column_is_an_input_error(bad: object) -> None:
    with pytest.raises(InvalidInputError):
        engine.dedup(bad)


def test_native_rejects_non_arrow_objects() -> None:
    with pytest.raises(InvalidInputError, match="__arrow_c_stream__"):
        _engine.dedup(["a", "b"])
    with pytest.raises(InvalidInputError, match="must be a Polars Series"):
        engine.dedup(42)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"ngram": 0}, "ngram"),
        ({"ngram": -2}, "ngram"),
        ({"num_perm": 100, "bands": 14}, "multiple of bands"),
        ({"bands": 0}, "bands"),
        ({"num_perm": 8192, "bands": 8}, "num_perm"),
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": 1.01}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**64}, "seed"),
    ],
)
def test_bad_parameters_raise_invalid_parameter(kw: dict, match: str) -> None:
    texts = pl.Series(["a"])
    with pytest.raises(InvalidParameterError, match=match):
        _engine.dedup(texts, **kw)
    with pytest.raises(InvalidParameterError, match=match):
        _engine.Deduper(**kw)
    with pytest.raises(InvalidParameterError, match=match):
        engine.DedupConfig(**kw)


def test_unknown_override_is_rejected() -> None:
    with pytest.raises(InvalidParameterError, match="unknown dedup option"):
        engine.dedup(pl.Series(["a"]), treshold=0.5)


# --- documentation ------------------------------------------------------------------------------


@pytest.mark.parametrize("obj", [engine.normalize, engine.dedup, engine.Deduper])
def test_docstring_examples(obj: object) -> None:
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = finder.find(obj, globs={"pl": pl, **vars(engine)})
    assert tests and tests[0].examples
    for t in tests:
        runner.run(t)
    assert runner.summarize(verbose=False).failed == 0
