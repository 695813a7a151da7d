"""Generation requests and pair assembly (mipo.pairs) on a hand-made plan."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from mipo.corpus import MESSAGE_DTYPE
from mipo.errors import ConfigError, GenerationError
from mipo.generate import request_seeds
from mipo.pairs import (
    KIND_FULL,
    KIND_NEGATIVE,
    KIND_NOCONTEXT,
    KIND_SWAP,
    PairFilterConfig,
    PairStats,
    assemble_pairs,
    build_requests,
    filter_pairs,
)
from mipo.pairs.assemble import SENTENCE_DROP_OFFSET, filter_verdict

SIGMA = [2, 0, 3, 1]


def _plan(with_context: tuple[bool, ...] = (True, True, False, True)) -> pl.DataFrame:
    n = len(SIGMA)
    prompts = [
        ([{"role": "system", "content": f"ctx {i}"}] if with_context[i] else [])
        + [{"role": "user", "content": f"question {i}"}]
        for i in range(n)
    ]
    return pl.DataFrame(
        {
            "plan_index": list(range(n)),
            "id": [f"p{i}" for i in range(n)],
            "user_id": [f"u{i}" for i in range(n)],
            "prompt": prompts,
            "input_ids": [[10 + i, 20 + i] for i in range(n)],
            "num_prompt_tokens": [2] * n,
            "input_ids_nocontext": [[30 + i] if with_context[i] else None for i in range(n)],
            "negative_index": SIGMA,
            "negative_id": [f"p{s}" for s in SIGMA],
        },
        schema={
            "plan_index": pl.UInt32,
            "id": pl.String,
            "user_id": pl.String,
            "prompt": MESSAGE_DTYPE,
            "input_ids": pl.List(pl.UInt32),
            "num_prompt_tokens": pl.UInt32,
            "input_ids_nocontext": pl.List(pl.UInt32),
            "negative_index": pl.UInt32,
            "negative_id": pl.String,
        },
    )


def _responses(requests: pl.DataFrame, **overrides: str) -> pl.DataFrame:
    """One response per request: 'r<request id>' unless overridden; finish reason stop."""
    ids = requests["request_id"].to_list()
    texts = [overrides.get(f"r{i}", f"r{i}") for i in ids]
    return pl.DataFrame(
        {
            "request_id": ids,
            "response": texts,
            "num_prompt_tokens": [2] * len(ids),
            "num_response_tokens": [len(t) for t in texts],
            "finish_reason": ["length" if t.endswith("...") else "stop" for t in texts],
            "seed": requests["seed"],
        },
        schema_overrides={"request_id": pl.UInt64, "seed": pl.UInt64},
    )


def test_random_requests_one_per_prompt_with_derived_seeds() -> None:
    requests = build_requests(_plan(), strategy="random", independent_negatives=False, seed=5)
    assert requests.columns == ["request_id", "input_ids", "seed"]
    assert requests.schema["request_id"] == pl.UInt64 and requests.schema["seed"] == pl.UInt64
    assert requests["request_id"].to_list() == [4 * i + KIND_FULL for i in range(4)]
    assert requests["input_ids"].to_list() == [[10 + i, 20 + i] for i in range(4)]
    assert requests["seed"].to_list() == request_seeds(requests["request_id"].to_list(), 5)
    other = build_requests(_plan(), strategy="random", independent_negatives=False, seed=6)
    assert other["seed"].to_list() != requests["seed"].to_list()


def test_context_drop_and_independent_requests() -> None:
    plan = _plan()
    both = build_requests(plan, strategy="both", independent_negatives=True, seed=0)
    by_id = dict(zip(both["request_id"].to_list(), both["input_ids"].to_list(), strict=True))
    # Context-dropped prompts only where there is a context (prompt 2 has none).
    assert sorted(k for k in by_id if k % 4 == KIND_NOCONTEXT) == [1, 5, 13]
    assert by_id[4 * 1 + KIND_NOCONTEXT] == [31]
    # Independent negatives: prompt σ(i)'s token ids, under a request (and seed) of i's own.
    for i, s in enumerate(SIGMA):
        assert by_id[4 * i + KIND_NEGATIVE] == [10 + s, 20 + s]
    assert both["request_id"].is_sorted() and both["seed"].n_unique() == both.height


def test_reused_random_negatives() -> None:
    plan = _plan()
    requests = build_requests(plan, strategy="random", independent_negatives=False, seed=0)
    stats = PairStats()
    pairs = assemble_pairs(
        plan,
        _responses(requests),
        strategy="random",
        independent_negatives=False,
        seed=0,
        stats=stats,
    )
    assert pairs.schema["prompt"] == MESSAGE_DTYPE
    assert pairs.schema["chosen"] == MESSAGE_DTYPE and pairs.schema["rejected"] == MESSAGE_DTYPE
    for i, row in enumerate(pairs.iter_rows(named=True)):
        # The prompt is i's own (with its context); chosen answers i; rejected answers σ(i).
        assert row["prompt"] == plan["prompt"][i].to_list()
        assert row["chosen"] == [{"role": "assistant", "content": f"r{4 * i}"}]
        assert row["rejected"] == [{"role": "assistant", "content": f"r{4 * SIGMA[i]}"}]
        assert row["negative_id"] == f"p{SIGMA[i]}" and row["strategy"] == "random"
    # Each response is used twice: chosen for its own prompt, rejected for the one it negates.
    chosen = {c[0]["content"] for c in pairs["chosen"].to_list()}
    rejected = {c[0]["content"] for c in pairs["rejected"].to_list()}
    assert chosen == rejected
    assert stats.pairs_built == {"random": 4}
    seeds = dict(zip(requests["request_id"].to_list(), requests["seed"].to_list(), strict=True))
    assert pairs["rejected_seed"][0] == seeds[4 * SIGMA[0]]


def test_independent_negatives_use_their_own_samples() -> None:
    plan = _plan()
    requests = build_requests(plan, strategy="random", independent_negatives=True, seed=0)
    pairs = assemble_pairs(
        plan, _responses(requests), strategy="random", independent_negatives=True, seed=0
    )
    assert [r[0]["content"] for r in pairs["rejected"].to_list()] == [
        f"r{4 * i + KIND_NEGATIVE}" for i in range(4)
    ]


def test_both_strategies_and_prompts_without_context() -> None:
    plan = _plan()
    requests = build_requests(plan, strategy="both", independent_negatives=False, seed=0)
    stats = PairStats()
    pairs = assemble_pairs(
        plan,
        _responses(requests),
        strategy="both",
        independent_negatives=False,
        seed=0,
        stats=stats,
    )
    assert pairs["strategy"].to_list() == [
        "random", "context-drop", "random", "context-drop", "random", "random", "context-drop"
    ]  # fmt: skip
    drop = pairs.filter(pl.col("strategy") == "context-drop")
    assert [r[0]["content"] for r in drop["rejected"].to_list()] == ["r1", "r5", "r13"]
    assert [r[0]["content"] for r in drop["chosen"].to_list()] == ["r0", "r4", "r12"]
    # The prompt of a context-drop pair keeps the context: y- is scored under the full x.
    assert drop["prompt"][0].to_list()[0] == {"role": "system", "content": "ctx 0"}
    assert stats.no_context_skipped == 1
    assert stats.pairs_built == {"random": 4, "context-drop": 3}


def test_filters_count_each_dropped_pair_once() -> None:
    plan = _plan()
    requests = build_requests(plan, strategy="random", independent_negatives=False, seed=0)
    # r0 empty (pairs 0 and 1 use it), r8 == r12 (pair 2: chosen r8, rejected r12), r4 truncated.
    responses = _responses(requests, r0="  ", r8="same", r12="same", r4="cut...")
    pairs = assemble_pairs(plan, responses, strategy="random", independent_negatives=False, seed=0)
    stats = PairStats()
    kept = filter_pairs(pairs, PairFilterConfig(), stats=stats)
    assert stats.filtered == {
        "empty_response": 2, "identical": 1, "near_identical": 0, "truncated": 1, "persona": 0,
        "low_margin": 0,
    }  # fmt: skip
    assert kept.height == 0 and stats.pairs_written == 0

    stats = PairStats()
    kept = filter_pairs(pairs, PairFilterConfig(keep_truncated=True), stats=stats)
    assert stats.filtered["truncated"] == 0 and kept.height == 1
    assert kept["rejected_finish_reason"][0] == "length"
    assert stats.pairs_written_by_strategy == {"random": 1}


def test_pairs_whose_chosen_answer_speaks_as_the_user_are_dropped() -> None:
    context = "I'm a retired teacher in Chicago with arthritis."
    plan = _plan().with_columns(
        pl.Series(
            "prompt",
            [[{"role": "user", "content": f"{context}\n\nquestion {i}"}] for i in range(4)],
            dtype=MESSAGE_DTYPE,
        ),
        pl.Series(
            "prompt_nocontext",
            [[{"role": "user", "content": f"question {i}"}] for i in range(4)],
            dtype=MESSAGE_DTYPE,
        ),
    )
    requests = build_requests(plan, strategy="random", independent_negatives=False, seed=0)
    # Pair 0's chosen (r0) becomes the user; pair 1's (r4) answers them (its rejected is r0:
    # only a chosen answer that speaks as the user is dropped).
    responses = _responses(
        requests,
        r0="I'm a retired teacher in Chicago, and I garden.",
        r4="As a retired teacher with arthritis, you might enjoy gardening.",
    )
    pairs = assemble_pairs(plan, responses, strategy="random", independent_negatives=False, seed=0)
    stats = PairStats()
    kept = filter_pairs(pairs, PairFilterConfig(drop_persona=True), stats=stats, plan=plan)
    assert stats.filtered["persona"] == 1
    assert pairs.height == 4 and kept.height == 3
    assert "p0" not in kept["id"].to_list() and "p1" in kept["id"].to_list()
    # Off by default; and the filter needs the plan.
    assert filter_pairs(pairs, PairFilterConfig()).height == 4
    with pytest.raises(ConfigError, match="needs the plan"):
        filter_pairs(pairs, PairFilterConfig(drop_persona=True))


def test_near_identical_pairs_are_dropped_and_length_ratios_reported() -> None:
    plan = _plan()
    requests = build_requests(plan, strategy="random", independent_negatives=False, seed=0)
    # Pair 0: chosen r0, rejected r8 — equal after normalization (case, spacing).
    # Pair 1: chosen r4, rejected r0 — 12 of 13 words shared (Jaccard 0.92 >= 0.9).
    # Pair 2: chosen r8, rejected r12 — 10 of 14 (0.71); pair 3: r12 vs r4, 10 of 15: kept.
    words = " ".join(f"w{i}" for i in range(10))
    responses = _responses(
        requests,
        r0=f"Hello   World {words}",
        r8=f"hello world {words}",
        r4=f"hello world {words} extra",
        r12=f"hello world {' '.join(f'w{i}' for i in range(8))} x y",
    )
    pairs = assemble_pairs(plan, responses, strategy="random", independent_negatives=False, seed=0)
    stats = PairStats()
    kept = filter_pairs(pairs, PairFilterConfig(keep_truncated=True), stats=stats)
    assert stats.filtered["identical"] == 0
    assert stats.filtered["near_identical"] == 2
    assert kept["id"].to_list() == ["p2", "p3"]
    ratio = stats.length_ratio["random"]
    assert ratio["share_ratio_ge_1.5"] == 0.0 and ratio["median_ratio"] >= 1.0


def _swap_plan() -> pl.DataFrame:
    """Rows 0 and 1 ask one question (other users: reused), row 2 gets a generated swap, row 3
    has no swap."""
    return _plan().with_columns(
        pl.Series("swap_index", [1, 0, None, None], dtype=pl.UInt32),
        pl.Series("swap_id", ["p1", "p0", "p3", None]),
        pl.Series("swap_source", ["reused", "reused", "generated", None]),
        pl.Series("input_ids_swap", [None, None, [90, 91], None], dtype=pl.List(pl.UInt32)),
    )


def test_context_swap_requests_and_pairs() -> None:
    plan = _swap_plan()
    requests = build_requests(plan, strategy="context-swap", independent_negatives=False, seed=1)
    # One full request per prompt plus the single generated swap (row 2, kind 3).
    assert requests["request_id"].to_list() == [0, 4, 8, 11, 12]
    assert requests.filter(pl.col("request_id") == 4 * 2 + KIND_SWAP)["input_ids"].to_list() == [
        [90, 91]
    ]
    stats = PairStats()
    pairs = assemble_pairs(
        plan, _responses(requests), strategy="context-swap", independent_negatives=False,
        seed=1, stats=stats,
    )  # fmt: skip
    assert pairs["id"].to_list() == ["p0", "p1", "p2"] and stats.no_swap_skipped == 1
    rejected = [r[0]["content"] for r in pairs["rejected"].to_list()]
    # Reused: rows 0 and 1 take each other's own responses; row 2 its generated swap.
    assert rejected == ["r4", "r0", "r11"]
    assert pairs["negative_id"].to_list() == ["p1", "p0", "p3"]
    assert stats.swap_sources == {"reused": 2, "generated": 1}
    # Independent negatives: the reused ones are sampled again from the partner's prompt.
    independent = build_requests(plan, strategy="context-swap", independent_negatives=True, seed=1)
    swap_rows = independent.filter(pl.col("request_id") % 4 == KIND_SWAP)
    assert swap_rows["request_id"].to_list() == [3, 7, 11]
    assert swap_rows["input_ids"].to_list() == [[11, 21], [10, 20], [90, 91]]
    again = assemble_pairs(
        plan, _responses(independent), strategy="context-swap", independent_negatives=True, seed=1
    )
    assert [r[0]["content"] for r in again["rejected"].to_list()] == ["r3", "r7", "r11"]


def test_missing_responses_are_reported() -> None:
    plan = _plan()
    requests = build_requests(plan, strategy="random", independent_negatives=False, seed=0)
    partial = _responses(requests).filter(pl.col("request_id") != 8)
    with pytest.raises(GenerationError, match=r"1 of 4 responses are missing.*rerun the same"):
        assemble_pairs(plan, partial, strategy="random", independent_negatives=False, seed=0)


def test_score_adds_margins_and_drops_low_ones(tiny_model_dir: Path) -> None:
    plan = _plan()
    requests = build_requests(plan, strategy="random", independent_negatives=False, seed=0)
    pairs = assemble_pairs(
        plan,
        _responses(requests, r0="Sure, here you go.", r4="No.", r8="Maybe later.", r12="Yes!"),
        strategy="random",
        independent_negatives=False,
        seed=0,
    )
    stats = PairStats()
    scored = filter_pairs(
        pairs, PairFilterConfig(score=True, min_margin=-1e9), model_path=tiny_model_dir, stats=stats
    )
    assert scored.height == 4
    margin = scored["chosen_logprob"] - scored["rejected_logprob"]
    assert (scored["margin"] - margin).abs().max() < 1e-9  # type: ignore[operator]
    threshold = float(scored["margin"].median())  # type: ignore[arg-type]
    stats = PairStats()
    kept = filter_pairs(
        pairs,
        PairFilterConfig(score=True, min_margin=threshold),
        model_path=tiny_model_dir,
        stats=stats,
    )
    assert kept.height == int((scored["margin"] >= threshold).sum())
    assert stats.filtered["low_margin"] == 4 - kept.height
    with pytest.raises(ConfigError, match="score batch size"):
        PairFilterConfig(score_batch_size=0)


def _math_plan() -> pl.DataFrame:
    """Three math prompts, one of them a single sentence (no sentence-drop negative)."""
    questions = [
        "Ann has 3.5 kg of rice. She cooks 0.5 kg a day. How many days does it last?",
        "What is 12 times 4?",
        "Mr. Lee buys 4 pens. Each costs $2. He pays with $10. How much change is there?",
    ]
    plan = _plan((False, False, False, False)).head(3)
    return plan.with_columns(
        pl.Series("prompt", [[{"role": "user", "content": q}] for q in questions], MESSAGE_DTYPE),
        pl.Series("negative_index", [1, 2, 0], pl.UInt32),
        pl.Series("negative_id", ["p1", "p2", "p0"]),
    )


def test_sentence_drop_requests_and_pairs(tiny_model_dir: Path) -> None:
    from mipo.engine import ChatTokenizer
    from mipo.pairs.negatives import drop_sentence, split_sentences

    tokenizer = ChatTokenizer.from_pretrained(tiny_model_dir)
    plan = _math_plan()
    with pytest.raises(ValueError, match="tokenizer"):
        build_requests(plan, strategy="sentence-drop", independent_negatives=False, seed=1)
    requests = build_requests(
        plan, strategy="random,sentence-drop", independent_negatives=False, seed=1,
        tokenizer=tokenizer,
    )  # fmt: skip
    drop_ids = [SENTENCE_DROP_OFFSET + 0, SENTENCE_DROP_OFFSET + 2]
    # Full prompts keep their ids (4 i); prompt 1 is one sentence: no sentence-drop request.
    assert requests["request_id"].to_list() == [0, 4, 8, *drop_ids]
    by_id = dict(
        zip(requests["request_id"].to_list(), requests["input_ids"].to_list(), strict=True)
    )
    for i, request in zip((0, 2), drop_ids, strict=True):
        question = plan["prompt"][i][0]["content"]
        kept, dropped = drop_sentence(question, seed=1, key=f"p{i}")  # type: ignore[misc]
        assert dropped != split_sentences(question)[-1].strip()
        bare = [{"role": "user", "content": kept}]
        assert (
            by_id[request]
            == tokenizer.encode_chat(pl.Series([bare], dtype=MESSAGE_DTYPE))["input_ids"][
                0
            ].to_list()
        )
    assert requests["seed"].to_list() == request_seeds(requests["request_id"].to_list(), 1)

    stats = PairStats()
    pairs = assemble_pairs(
        plan, _responses(requests), strategy="random,sentence-drop",
        independent_negatives=False, seed=1, stats=stats,
    )  # fmt: skip
    assert pairs["strategy"].to_list() == [
        "random", "sentence-drop", "random", "random", "sentence-drop"
    ]  # fmt: skip
    drop = pairs.filter(pl.col("strategy") == "sentence-drop")
    assert [r[0]["content"] for r in drop["rejected"].to_list()] == [f"r{k}" for k in drop_ids]
    # The pair's prompt is the full question: y- is scored under x.
    assert drop["prompt"].to_list() == [plan["prompt"][0].to_list(), plan["prompt"][2].to_list()]
    assert drop["negative_id"].to_list() == ["p0", "p2"]
    assert stats.no_sentence_skipped == 1
    assert stats.pairs_built == {"random": 3, "sentence-drop": 2}


def test_no_sentence_to_drop_is_a_clear_verdict() -> None:
    stats = PairStats(pairs_built={"sentence-drop": 0}, no_sentence_skipped=4)
    error, _ = filter_verdict(stats)
    assert error is not None and error.startswith("0 pairs built: every question is a single")
    assert "--negatives random" in error


CONTEXT = "I teach maths. I am 52. I prefer short answers."


def _math_plan_with_context(keep_nocontext: bool = True) -> pl.DataFrame:
    """_math_plan's prompts, the first two with a context of three sentences opening the user's
    turn (the default user-turn format), the third without; ``prompt_nocontext`` as a
    context-drop plan writes it (null for a prompt without context)."""
    from mipo.prompt_format import PromptFormat

    plan = _math_plan()
    questions = [p[0]["content"] for p in plan["prompt"].to_list()]
    bare = [[{"role": "user", "content": q}] for q in questions]
    fmt = PromptFormat("user-turn")
    prompts = [fmt.messages(CONTEXT, bare[0]), fmt.messages(CONTEXT, bare[1]), bare[2]]
    plan = plan.with_columns(
        pl.Series("prompt", prompts, MESSAGE_DTYPE),
        pl.Series("has_context", [True, True, False]),
    )
    if keep_nocontext:
        nocontext = pl.Series("prompt_nocontext", [bare[0], bare[1], None], MESSAGE_DTYPE)
        plan = plan.with_columns(nocontext)
    return plan


def test_sentence_drop_keeps_the_context_whole_under_user_turn(tiny_model_dir: Path) -> None:
    """The context shares the user's turn: the rejected prompt keeps the whole context and lacks
    exactly one non-final sentence of the question."""
    from mipo.engine import ChatTokenizer
    from mipo.pairs.negatives import split_sentences

    tokenizer = ChatTokenizer.from_pretrained(tiny_model_dir)
    plan = _math_plan_with_context()
    for seed in range(4):
        requests = build_requests(
            plan, strategy="sentence-drop", independent_negatives=False, seed=seed,
            tokenizer=tokenizer,
        )  # fmt: skip
        drop_ids = [SENTENCE_DROP_OFFSET + 0, SENTENCE_DROP_OFFSET + 2]  # row 1: one sentence
        assert requests["request_id"].to_list() == [0, 4, 8, *drop_ids]
        by_id = dict(
            zip(requests["request_id"].to_list(), requests["input_ids"].to_list(), strict=True)
        )
        for i, request in zip((0, 2), drop_ids, strict=True):
            prompt = plan["prompt"][i].to_list()
            question = _math_plan()["prompt"][i][0]["content"]
            sentences = split_sentences(question)
            context = f"{CONTEXT}\n\n" if i == 0 else ""
            # Exactly one candidate: the whole context, then the question without one of its
            # non-final sentences; never the prompt with a context sentence gone.
            candidates = [
                [
                    {
                        "role": "user",
                        "content": context + "".join(sentences[:k] + sentences[k + 1 :]).strip(),
                    }
                ]
                for k in range(len(sentences) - 1)
            ]
            encoded = tokenizer.encode_chat(pl.Series(candidates, dtype=MESSAGE_DTYPE))
            matches = [
                k for k, ids in enumerate(encoded["input_ids"].to_list()) if ids == by_id[request]
            ]
            assert len(matches) == 1, (seed, i, prompt)
    stats = PairStats()
    pairs = assemble_pairs(
        plan, _responses(requests), strategy="sentence-drop", independent_negatives=False,
        seed=3, stats=stats,
    )  # fmt: skip
    assert pairs["id"].to_list() == ["p0", "p2"] and stats.no_sentence_skipped == 1
    # y- is scored under the full prompt, context included.
    assert pairs["prompt"].to_list() == [plan["prompt"][0].to_list(), plan["prompt"][2].to_list()]


def test_sentence_drop_refuses_a_plan_that_cannot_tell_question_from_context(
    tiny_model_dir: Path,
) -> None:
    from mipo.engine import ChatTokenizer

    tokenizer = ChatTokenizer.from_pretrained(tiny_model_dir)
    plan = _math_plan_with_context(keep_nocontext=False)
    with pytest.raises(ConfigError, match=r"prompt_nocontext.*--overwrite"):
        build_requests(
            plan, strategy="sentence-drop", independent_negatives=False, seed=0,
            tokenizer=tokenizer,
        )  # fmt: skip
    # Without any context the plan needs no prompt_nocontext: the question is the prompt.
    no_context = plan.with_columns(
        pl.lit(False).alias("has_context"), prompt=_math_plan()["prompt"]
    )
    requests = build_requests(
        no_context, strategy="sentence-drop", independent_negatives=False, seed=0,
        tokenizer=tokenizer,
    )  # fmt: skip
    assert requests.height == 3 + 2


def test_sentence_drop_on_a_built_plan_with_a_context_column(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """A real plan (context column, user-turn format, sentence-drop alone: the plan keeps
    prompt_nocontext for it): every sentence-drop prompt holds the whole context."""
    import json

    from mipo.engine import ChatTokenizer
    from mipo.generate import GenerationConfig
    from mipo.pairs.build import build_pairs
    from mipo.pairs.config import BuildPairsConfig
    from mipo.pairs.negatives import sentence_drops, split_sentences
    from mipo.pairs.plan import read_plan

    questions = [p[0]["content"] for p in _math_plan()["prompt"].to_list()]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(
        "".join(
            json.dumps({"id": f"m{i}", "question": q, "context": CONTEXT if i < 2 else ""}) + "\n"
            for i, q in enumerate(questions)
        )
    )
    config = BuildPairsConfig(
        str(corpus), tmp_path / "out", model=str(tiny_model_dir),
        negatives="sentence-drop", plan_only=True, progress=False,
        generation=GenerationConfig(backend="hf", max_new_tokens=6),
    )  # fmt: skip
    assert build_pairs(config).completed == "plan"
    plan = read_plan(tmp_path / "out" / "plan.parquet")
    assert plan["prompt"][0][0]["content"].startswith(CONTEXT)  # the context opens the turn
    drops = sentence_drops(plan["prompt"], plan["id"], seed=0, questions=plan["prompt_nocontext"])
    index = {k: row for row, k in enumerate(plan["id"].to_list())}
    for key, question in (("m0", questions[0]), ("m2", questions[2])):
        row = index[key]
        content = drops["prompt_sentence_drop"][row][0]["content"]
        if key == "m0":
            assert content.startswith(f"{CONTEXT}\n\n")
            content = content.removeprefix(f"{CONTEXT}\n\n")
        sentences = split_sentences(question)
        dropped = drops["dropped_sentence"][row]
        assert dropped in [s.strip() for s in sentences[:-1]]
        k = [s.strip() for s in sentences].index(dropped)
        assert content == "".join(sentences[:k] + sentences[k + 1 :]).strip()
    assert drops["prompt_sentence_drop"][index["m1"]] is None  # one sentence
    requests = build_requests(
        plan, strategy="sentence-drop,context-drop", independent_negatives=False, seed=0,
        tokenizer=ChatTokenizer.from_pretrained(tiny_model_dir),
    )  # fmt: skip
    assert (requests["request_id"] >= SENTENCE_DROP_OFFSET).sum() == 2
