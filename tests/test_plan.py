"""The plan stage (mipo.pairs.plan): validation, dedup, tokenization, negatives, plan.parquet."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from mipo import engine
from mipo.corpus import ColumnOptions, open_corpus
from mipo.errors import ConfigError, CorpusError, DerangementError
from mipo.pairs.plan import PLAN_STEPS, PlanConfig, build_plan, read_plan
from mipo.prompt_format import PromptFormat

LONG = (
    "I am a retired teacher living in a small flat by the sea with my old dog and I like to "
    "cook simple food from the market every morning before it gets too hot outside in summer "
    "and I read history books in the afternoon while listening to the radio and drinking tea "
    "with lemon and a little honey from the farm up the hill where my friend keeps bees"
)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> engine.ChatTokenizer:
    return engine.ChatTokenizer.from_pretrained(tiny_model_dir)


def _corpus(tmp_path: Path, rows: list[dict], name: str = "c.jsonl", **columns: str):  # type: ignore[no-untyped-def]
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return open_corpus(path, ColumnOptions(**columns))


def _rows(n: int, users: int = 4) -> list[dict]:
    return [
        {
            "id": f"p{i}",
            "user_id": f"u{i % users}",
            "context": f"I am person {i} and I like topic {i * 7}.",
            "question": f"Question number {i}: how do I do thing {i * 3}?",
        }
        for i in range(n)
    ]


def test_plan_has_prompts_token_ids_and_valid_negatives(
    tmp_path: Path, tokenizer: engine.ChatTokenizer, tiny_model_dir: Path
) -> None:
    corpus = _corpus(tmp_path, _rows(12))
    stats = build_plan(corpus, tokenizer, tmp_path / "plan.parquet", PlanConfig(seed=3))
    plan = read_plan(tmp_path / "plan.parquet")
    assert stats.rows_in == 12 and stats.prompts_planned == 12 and stats.users == 4
    assert set(stats.step_seconds) == set(PLAN_STEPS)
    assert plan["plan_index"].to_list() == list(range(12))
    assert plan["id"].to_list() == [f"p{i}" for i in range(12)]
    sigma = plan["negative_index"]
    assert sorted(sigma.to_list()) == list(range(12))
    assert all(s != i for i, s in enumerate(sigma.to_list()))
    assert (plan["user_id"].gather(sigma) != plan["user_id"]).all()
    assert plan["negative_id"].to_list() == plan["id"].gather(sigma).to_list()

    # The token ids are the chat template rendered and encoded as transformers does it.
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(tiny_model_dir)
    first = plan["prompt"][0].to_list()
    expected = reference.apply_chat_template(first, add_generation_prompt=True, tokenize=True)
    if isinstance(expected, dict) or hasattr(expected, "keys"):
        expected = expected["input_ids"]
    assert plan["input_ids"][0].to_list() == list(expected)
    assert plan["num_prompt_tokens"][0] == len(expected)


def test_same_seed_same_bytes_whatever_the_batch_size(
    tmp_path: Path, tokenizer: engine.ChatTokenizer
) -> None:
    corpus = _corpus(tmp_path, [*_rows(30), {"question": None}, {"question": "  "}])
    build_plan(corpus, tokenizer, tmp_path / "a.parquet", PlanConfig(seed=1, batch_rows=4))
    build_plan(corpus, tokenizer, tmp_path / "b.parquet", PlanConfig(seed=1, batch_rows=1000))
    build_plan(corpus, tokenizer, tmp_path / "c.parquet", PlanConfig(seed=2, batch_rows=1000))
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    assert (tmp_path / "a.parquet").read_bytes() != (tmp_path / "c.parquet").read_bytes()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # part files are removed


def test_null_and_empty_prompts_are_dropped_and_counted(
    tmp_path: Path, tokenizer: engine.ChatTokenizer
) -> None:
    rows = [*_rows(4), {"question": None, "user_id": "x"}, {"question": " \t", "user_id": "y"}]
    stats = build_plan(_corpus(tmp_path, rows), tokenizer, tmp_path / "p.parquet", PlanConfig())
    assert (stats.rows_in, stats.empty_dropped, stats.prompts_planned) == (6, 2, 4)


def test_only_empty_prompts_is_an_error(tmp_path: Path, tokenizer: engine.ChatTokenizer) -> None:
    corpus = _corpus(tmp_path, [{"question": None}, {"question": ""}])
    with pytest.raises(CorpusError, match="no usable prompts: all 2 rows"):
        build_plan(corpus, tokenizer, tmp_path / "p.parquet", PlanConfig())
    assert not (tmp_path / "p.parquet").exists()


def test_exact_and_near_duplicates_are_removed_and_counted(
    tmp_path: Path, tokenizer: engine.ChatTokenizer
) -> None:
    rows = [
        {"question": LONG + " today"},
        {"question": "  " + LONG.upper() + "   TODAY "},  # exact after normalization
        {"question": LONG + " tomorrow"},  # one word differs: a near duplicate
        {"question": "Something else entirely, about gardens."},
        {"question": "And a fourth, unrelated question about trains?"},
    ]
    stats = build_plan(_corpus(tmp_path, rows), tokenizer, tmp_path / "p.parquet", PlanConfig())
    plan = read_plan(tmp_path / "p.parquet")
    assert (stats.exact_duplicates, stats.near_duplicates, stats.prompts_planned) == (1, 1, 3)
    assert plan["row"].to_list() == [0, 3, 4]


def test_without_dedup_duplicates_stay_but_are_never_paired(
    tmp_path: Path, tokenizer: engine.ChatTokenizer
) -> None:
    rows = [{"question": LONG + " today"}, {"question": LONG + " today"}]
    rows += [{"question": f"Distinct question {i} about {i * 13} apples"} for i in range(6)]
    stats = build_plan(
        _corpus(tmp_path, rows), tokenizer, tmp_path / "p.parquet", PlanConfig(dedup=False)
    )
    plan = read_plan(tmp_path / "p.parquet")
    assert stats.prompts_planned == 8 and stats.exact_duplicates == 0
    assert plan["cluster"][0] == plan["cluster"][1]
    cluster = plan["cluster"]
    assert (cluster.gather(plan["negative_index"]) != cluster).all()


def test_all_duplicates_is_an_error(tmp_path: Path, tokenizer: engine.ChatTokenizer) -> None:
    rows = [{"question": "Same question?"}, {"question": "same   QUESTION?"}] * 3
    with pytest.raises(CorpusError, match=r"only 1 distinct prompt left of 6 rows .*5 exact"):
        build_plan(_corpus(tmp_path, rows), tokenizer, tmp_path / "p.parquet", PlanConfig())


def test_one_row_is_an_error_for_random_but_fine_for_context_drop(
    tmp_path: Path, tokenizer: engine.ChatTokenizer
) -> None:
    corpus = _corpus(tmp_path, _rows(1))
    with pytest.raises(CorpusError, match="the corpus has 1 row"):
        build_plan(corpus, tokenizer, tmp_path / "p.parquet", PlanConfig())
    stats = build_plan(
        corpus, tokenizer, tmp_path / "p.parquet", PlanConfig(negatives="context-drop")
    )
    assert stats.prompts_planned == 1
    assert "negative_index" not in read_plan(tmp_path / "p.parquet").columns


def test_one_user_with_most_rows(tmp_path: Path, tokenizer: engine.ChatTokenizer) -> None:
    rows = _rows(10)
    for row in rows[:6]:
        row["user_id"] = "alice"
    corpus = _corpus(tmp_path, rows)
    with pytest.raises(
        DerangementError, match=r"'alice' holds 6 of 10.*--set user_constraint=false"
    ):
        build_plan(corpus, tokenizer, tmp_path / "p.parquet", PlanConfig())
    assert not (tmp_path / "p.parquet").exists()
    stats = build_plan(corpus, tokenizer, tmp_path / "p.parquet", PlanConfig(user_constraint=False))
    assert stats.prompts_planned == 10


def test_over_length_prompts_are_dropped_and_counted(
    tmp_path: Path, tokenizer: engine.ChatTokenizer
) -> None:
    rows = [*_rows(5), {"question": "word " * 400, "user_id": "z"}]
    stats = build_plan(
        _corpus(tmp_path, rows),
        tokenizer,
        tmp_path / "p.parquet",
        PlanConfig(max_prompt_tokens=120),
    )
    assert (stats.over_length, stats.prompts_planned) == (1, 5)
    assert read_plan(tmp_path / "p.parquet")["num_prompt_tokens"].max() <= 120  # type: ignore[operator]
    with pytest.raises(
        CorpusError, match=r"no prompt left after dropping 6 over max_prompt_tokens=3"
    ):
        build_plan(
            _corpus(tmp_path, rows),
            tokenizer,
            tmp_path / "q.parquet",
            PlanConfig(max_prompt_tokens=3),
        )


def test_context_drop_prompts(tmp_path: Path, tokenizer: engine.ChatTokenizer) -> None:
    rows = _rows(4)
    rows[2]["context"] = None
    stats = build_plan(
        _corpus(tmp_path, rows), tokenizer, tmp_path / "p.parquet", PlanConfig(negatives="both")
    )
    plan = read_plan(tmp_path / "p.parquet")
    assert (stats.with_context, stats.without_context) == (3, 1)
    assert plan["input_ids_nocontext"].is_null().to_list() == [False, False, True, False]
    assert plan["prompt_nocontext"][0].to_list() == [
        {"role": "user", "content": rows[0]["question"]}
    ]
    shorter = plan["num_prompt_tokens_nocontext"] < plan["num_prompt_tokens"]
    assert shorter.drop_nulls().all()
    expected = tokenizer.encode_chat(plan["prompt_nocontext"].slice(0, 1))["input_ids"][0]
    assert plan["input_ids_nocontext"][0].to_list() == expected.to_list()


def _swap_rows() -> list[dict]:
    """Six users; "How do I sleep?" asked by four of them (users 0-3), the rest unique."""
    rows = []
    for u in range(6):
        rows.append(
            {
                "id": f"u{u}-own",
                "user_id": f"u{u}",
                "context": f"I am user {u}, I work as job {u * 11} and live in town {u * 5}.",
                "question": f"What should user {u} do about project {u * 13}?",
            }
        )
        if u < 4:
            rows.append(
                {
                    "id": f"u{u}-sleep",
                    "user_id": f"u{u}",
                    "context": f"I am user {u}, I work as job {u * 11} and live in town {u * 5}.",
                    "question": "How do I sleep better at night?",
                }
            )
    rows.append({"id": "bare", "user_id": "u5", "context": None, "question": "Hi there?"})
    return rows


def test_context_swap_plan(tmp_path: Path, tokenizer: engine.ChatTokenizer) -> None:
    rows = _swap_rows()
    stats = build_plan(
        _corpus(tmp_path, rows),
        tokenizer,
        tmp_path / "p.parquet",
        PlanConfig(negatives="random,context-swap", seed=3),
    )
    plan = read_plan(tmp_path / "p.parquet")
    by_id = {r["id"]: r for r in plan.iter_rows(named=True)}
    assert stats.question_clusters == 8  # 6 own questions + the shared one + "Hi there?"
    assert (stats.swaps_reused, stats.swaps_generated, stats.swaps_no_context) == (4, 6, 1)
    # The shared question: each asker takes another asker's own prompt (reused response).
    for u in range(4):
        row = by_id[f"u{u}-sleep"]
        partner = plan.row(row["swap_index"], named=True)
        assert row["swap_source"] == "reused" and partner["id"].endswith("-sleep")
        assert partner["user_id"] != row["user_id"] and row["swap_id"] == partner["id"]
        assert row["input_ids_swap"] is None
    # Unique questions: the same question with another user's context, rendered and encoded.
    contexts = {r["user_id"]: r["context"] for r in rows if r["context"]}
    for u in range(6):
        row = by_id[f"u{u}-own"]
        assert row["swap_source"] == "generated" and row["swap_index"] is None
        donor = by_id[row["swap_id"]]
        assert donor["user_id"] != row["user_id"]
        # The donor's context where the corpus's format puts every context (the default).
        swapped = PromptFormat().messages(
            contexts[donor["user_id"]],
            [{"role": "user", "content": row["prompt_nocontext"][0]["content"]}],
        )
        expected = tokenizer.encode_chat(pl.Series([swapped]))["input_ids"][0].to_list()
        assert row["input_ids_swap"] == expected
        assert row["num_prompt_tokens_swap"] == len(expected)
    assert by_id["bare"]["swap_source"] is None
    # Same seed, same bytes; another seed, other swaps.
    again = tmp_path / "q.parquet"
    build_plan(
        _corpus(tmp_path, rows),
        tokenizer,
        again,
        PlanConfig(negatives="random,context-swap", seed=3),
    )
    assert again.read_bytes() == (tmp_path / "p.parquet").read_bytes()
    other = tmp_path / "r.parquet"
    build_plan(
        _corpus(tmp_path, rows),
        tokenizer,
        other,
        PlanConfig(negatives="random,context-swap", seed=4),
    )
    assert read_plan(other)["swap_id"].to_list() != plan["swap_id"].to_list()


def test_context_swap_over_length_and_without_context(
    tmp_path: Path, tokenizer: engine.ChatTokenizer
) -> None:
    question = "Please tell me, " + LONG[:200] + "?"
    rows = [
        {"id": "a", "user_id": "u0", "context": LONG[:240], "question": "Ok?"},
        {"id": "b", "user_id": "u1", "context": "Short.", "question": question},
        {
            "id": "c",
            "user_id": "u2",
            "context": "Tiny.",
            "question": "Could you explain, " + LONG[40:240] + "?",
        },
    ]

    def length(context: str, text: str) -> int:
        messages = PromptFormat().messages(context, [{"role": "user", "content": text}])
        return int(tokenizer.encode_chat(pl.Series([messages]))["num_tokens"][0])

    limit = max(length(r["context"], r["question"]) for r in rows)
    assert length(LONG[:240], question) > limit  # borrowing u0's context does not fit
    config = PlanConfig(negatives="context-swap", seed=0, max_prompt_tokens=limit)
    stats = build_plan(_corpus(tmp_path, rows), tokenizer, tmp_path / "p.parquet", config)
    plan = read_plan(tmp_path / "p.parquet")
    # The users form one 3-cycle of donors: exactly one of u1, u2 borrows u0's long context.
    assert (stats.over_length, stats.swaps_over_length, stats.swaps_generated) == (0, 1, 2)
    dropped = plan.filter(pl.col("swap_source").is_null())
    assert dropped["id"].to_list() in (["b"], ["c"]) and dropped["swap_id"].to_list() == [None]
    generated = plan.filter(pl.col("swap_source") == "generated")
    assert (generated["num_prompt_tokens_swap"] <= limit).all()
    no_column = _corpus(tmp_path, [{"question": "a?"}, {"question": "b?"}], name="a.jsonl")
    with pytest.raises(ConfigError, match="has no context column"):
        build_plan(
            no_column, tokenizer, tmp_path / "x.parquet", PlanConfig(negatives="context-swap")
        )


def test_context_drop_without_any_context(tmp_path: Path, tokenizer: engine.ChatTokenizer) -> None:
    no_column = _corpus(tmp_path, [{"question": "a?"}, {"question": "b?"}], name="a.jsonl")
    with pytest.raises(ConfigError, match="has no context column"):
        build_plan(
            no_column, tokenizer, tmp_path / "p.parquet", PlanConfig(negatives="context-drop")
        )
    empty = _corpus(
        tmp_path,
        [{"question": "a?", "context": ""}, {"question": "b?", "context": None}],
        name="b.jsonl",
    )
    with pytest.raises(ConfigError, match="none of the 2 prompts has one"):
        build_plan(empty, tokenizer, tmp_path / "p.parquet", PlanConfig(negatives="both"))


def test_messages_without_role_are_an_error(
    tmp_path: Path, tokenizer: engine.ChatTokenizer
) -> None:
    rows = [
        {"messages": [{"role": "user", "content": "hi"}]},
        {"messages": [{"content": "who am I?"}]},
    ]
    with pytest.raises(CorpusError, match="input row 1: a chat message has no role or no content"):
        build_plan(_corpus(tmp_path, rows), tokenizer, tmp_path / "p.parquet", PlanConfig())


def test_messages_column_plan(tmp_path: Path, tokenizer: engine.ChatTokenizer) -> None:
    rows = [
        {
            "messages": [
                {"role": "system", "content": f"I am {i}."},
                {"role": "user", "content": f"Q{i}?"},
            ]
        }
        for i in range(4)
    ]
    corpus = _corpus(tmp_path, rows, context_format="raw-system")
    build_plan(corpus, tokenizer, tmp_path / "p.parquet", PlanConfig(negatives="both"))
    plan = read_plan(tmp_path / "p.parquet")
    assert plan["prompt"][1].to_list() == rows[1]["messages"]
    assert plan["prompt_nocontext"][1].to_list() == [rows[1]["messages"][1]]


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="max_prompt_tokens must be >= 1, got 0"):
        PlanConfig(max_prompt_tokens=0)
    with pytest.raises(ConfigError, match="near_dup_threshold"):
        PlanConfig(near_dup_threshold=1.5)
    with pytest.raises(ConfigError, match="--seed"):
        PlanConfig(seed=-1)


def test_plan_reads_parquet_directories(tmp_path: Path, tokenizer: engine.ChatTokenizer) -> None:
    frame = pl.DataFrame(_rows(8))
    (tmp_path / "in").mkdir()
    frame.slice(0, 5).write_parquet(tmp_path / "in" / "a.parquet")
    frame.slice(5).write_parquet(tmp_path / "in" / "b.parquet")
    stats = build_plan(
        open_corpus(tmp_path / "in"), tokenizer, tmp_path / "p.parquet", PlanConfig(batch_rows=3)
    )
    assert stats.prompts_planned == 8
    assert read_plan(tmp_path / "p.parquet")["id"].to_list() == frame["id"].to_list()


def test_parquet_shards_and_gzip_jsonl_give_the_plan_of_the_plain_jsonl(
    tmp_path: Path, tokenizer: engine.ChatTokenizer
) -> None:
    import gzip

    rows = [*_rows(40, users=5), {"id": "e1", "question": None}, {"id": "e2", "question": " "}]
    rows += [dict(r, id=f"dup{i}") for i, r in enumerate(_rows(6, users=5))]  # exact duplicates
    frame = pl.DataFrame(rows, schema={k: pl.String for k in rows[0]})
    plain = tmp_path / "c.jsonl"
    plain.write_text("".join(json.dumps(r) + "\n" for r in frame.to_dicts()))
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(plain.read_bytes()))
    shards = tmp_path / "shards"
    shards.mkdir()
    frame.slice(0, 17).write_parquet(shards / "a.parquet", row_group_size=3)
    frame.slice(17).write_parquet(shards / "b.parquet", row_group_size=11)

    def plan_bytes(spec: Path, name: str, batch_rows: int) -> bytes:
        config = PlanConfig(seed=4, batch_rows=batch_rows)
        stats = build_plan(open_corpus(spec), tokenizer, tmp_path / name, config)
        assert stats.exact_duplicates == 6 and stats.empty_dropped == 2
        return (tmp_path / name).read_bytes()

    expected = plan_bytes(plain, "plain.parquet", 1000)
    assert plan_bytes(tmp_path / "c.jsonl.gz", "gz.parquet", 7) == expected
    for batch_rows in (2, 5, 1000):
        assert plan_bytes(shards, f"shards-{batch_rows}.parquet", batch_rows) == expected
