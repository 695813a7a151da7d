"""Negative assignment (mipo.pairs.negatives) on the engine's derangements."""

from __future__ import annotations

import polars as pl
import pytest

from mipo import engine
from mipo.corpus import MESSAGE_DTYPE
from mipo.errors import ConfigError, CorpusError, DerangementError
from mipo.pairs.negatives import (
    ContextSwaps,
    assign_context_swaps,
    assign_negatives,
    check_negatives,
    drop_sentence,
    parse_strategy,
    sentence_drops,
    split_sentences,
    strategy_kinds,
)


def _valid(sigma: pl.Series, n: int) -> None:
    values = sigma.to_list()
    assert sorted(values) == list(range(n))
    assert all(s != i for i, s in enumerate(values))


@pytest.mark.parametrize("n", [2, 3, 10, 101])
def test_uniform_negatives_are_the_engine_derangement(n: int) -> None:
    sigma = assign_negatives(n, seed=7)
    _valid(sigma, n)
    # Unconstrained, σ is exactly the engine's uniform derangement for that seed.
    assert sigma.to_list() == engine.derangement(n, seed=7).to_list()
    assert assign_negatives(n, seed=7).equals(sigma)


def test_seeds_change_the_assignment() -> None:
    draws = {tuple(assign_negatives(50, seed=s).to_list()) for s in range(5)}
    assert len(draws) == 5


def test_user_constraint_is_respected() -> None:
    users = pl.Series(["u0", "u1", "u2", "u3"] * 10)
    for seed in range(5):
        sigma = assign_negatives(40, seed=seed, users=users)
        _valid(sigma, 40)
        assert (users.gather(sigma) != users).all()


def test_null_users_are_unconstrained() -> None:
    users = pl.Series(["a", "a", None, None, "b", "b"])
    sigma = assign_negatives(6, seed=1, users=users)
    _valid(sigma, 6)
    same = (users.gather(sigma) == users).fill_null(False)
    assert not same.any()


def test_near_duplicate_clusters_are_never_paired() -> None:
    clusters = pl.Series([0, 0, 0, 3, 4, 5, 6, 7, 8, 9], dtype=pl.UInt32)
    for seed in range(5):
        sigma = assign_negatives(10, seed=seed, clusters=clusters)
        _valid(sigma, 10)
        assert (clusters.gather(sigma) != clusters).all()


def test_one_user_with_more_than_half_the_rows_suggests_dropping_the_constraint() -> None:
    users = pl.Series(["big"] * 6 + ["a", "b", "c"])
    with pytest.raises(
        DerangementError, match=r"user 'big' holds 6 of 9.*--set user_constraint=false"
    ):
        assign_negatives(9, seed=0, users=users)
    # Exactly half is still feasible: every 'big' prompt takes another user's response.
    half = pl.Series(["big"] * 5 + ["a", "b", "c", "d", "e"])
    sigma = assign_negatives(10, seed=0, users=half)
    assert (half.gather(sigma) != half).all()


def test_too_many_near_duplicates() -> None:
    clusters = pl.Series([1, 1, 1, 2], dtype=pl.UInt32)
    with pytest.raises(CorpusError, match="near duplicates of one another"):
        assign_negatives(4, seed=0, clusters=clusters)


@pytest.mark.parametrize("n", [0, 1])
def test_fewer_than_two_prompts(n: int) -> None:
    with pytest.raises(CorpusError, match="at least 2 distinct prompts"):
        assign_negatives(n, seed=0)


def test_check_negatives_catches_invalid_assignments() -> None:
    with pytest.raises(Exception, match="own negative"):
        check_negatives(pl.Series([0, 2, 1], dtype=pl.UInt32))
    with pytest.raises(Exception, match="shares its prompt's user"):
        check_negatives(pl.Series([1, 0], dtype=pl.UInt32), users=pl.Series(["a", "a"]))


def test_strategies() -> None:
    assert strategy_kinds("random") == ("random",)
    assert strategy_kinds("both") == ("random", "context-drop")
    assert strategy_kinds("context-swap,random") == ("random", "context-swap")
    assert parse_strategy(" context-swap , context-drop ") == "context-drop,context-swap"
    assert parse_strategy("random,context-drop,context-swap") == "random,context-drop,context-swap"
    with pytest.raises(ConfigError, match="--negatives takes random, context-drop, context-swap"):
        parse_strategy("shuffle")
    with pytest.raises(ConfigError, match="takes"):
        parse_strategy("random,")
    with pytest.raises(ConfigError, match="twice"):
        parse_strategy("random,random")


def _swaps(questions: list, users: list, has_context: list, seed: int = 0) -> ContextSwaps:
    users_series = pl.Series(users)
    reps = users_series.filter(pl.Series(has_context)).unique(maintain_order=True)
    return assign_context_swaps(
        question_clusters=pl.Series(questions, dtype=pl.UInt32),
        has_context=pl.Series(has_context),
        groups=users_series,
        prompt_clusters=pl.Series(range(len(users)), dtype=pl.UInt32),
        representative_groups=reps,
        seed=seed,
    )


def test_context_swaps_reuse_other_users_answers_to_the_same_question() -> None:
    # q0 asked by a, b, c; q1 by a and a again (one user); q2 by d only; row 6 has no context.
    questions = [0, 0, 0, 1, 1, 2, 0]
    users = ["a", "b", "c", "a", "a", "d", "e"]
    has_context = [True, True, True, True, True, True, False]
    for seed in range(20):
        swaps = _swaps(questions, users, has_context, seed)
        partner, donor = swaps.partner.to_list(), swaps.donor.to_list()
        # q0's three users take each other's responses, each exactly once.
        assert sorted(partner[:3]) == [0, 1, 2] and all(partner[i] != i for i in range(3))
        assert all(users[partner[i]] != users[i] for i in range(3))
        # Rows 3-5 have no other user with their question: a donor user's context, not their own.
        assert partner[3:6] == [None, None, None]
        reps = ["a", "b", "c", "d"]
        for i in (3, 4, 5):
            assert donor[i] is not None and reps[donor[i]] != users[i]
        assert partner[6] is None and donor[6] is None  # no context: no swap
        assert (swaps.reused, swaps.generated, swaps.no_context, swaps.no_donor) == (3, 3, 1, 0)
        assert donor[:3] == [None, None, None]
    # The seed moves both draws: q0's two valid 3-cycles and the donor derangement both vary.
    drawn = [_swaps(questions, users, has_context, seed) for seed in range(20)]
    assert len({tuple(d.partner.to_list()[:3]) for d in drawn}) == 2
    assert len({tuple(d.donor.to_list()[3:6]) for d in drawn}) > 1


def test_context_swaps_without_another_user() -> None:
    swaps = _swaps([0, 0], ["a", "a"], [True, True])
    assert swaps.partner.to_list() == [None, None] and swaps.donor.to_list() == [None, None]
    assert swaps.no_donor == 2 and swaps.generated == 0


# --- sentence-drop ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "sentences"),
    [
        # Boundaries: . ! ? (and runs of them, closing quotes), then whitespace; a blank line.
        (
            "Ann has 3 apples. Bob has 2! How many?",
            ["Ann has 3 apples. ", "Bob has 2! ", "How many?"],
        ),
        ("Really?! Yes. Ok", ["Really?! ", "Yes. ", "Ok"]),
        ('She said "go." Then she left.', ['She said "go." ', "Then she left."]),
        ("Wait... Why? Fine.", ["Wait... ", "Why? ", "Fine."]),
        ("Givens here\n\nWhat is asked?", ["Givens here\n\n", "What is asked?"]),
        ("Is it 5? is it 6?", ["Is it 5? ", "is it 6?"]),  # ? ends one even before lowercase
        ("It rained. 3 cats ran.", ["It rained. ", "3 cats ran."]),
        ("  One. Two.  ", ["  One. ", "Two.  "]),
        # No boundary: decimals, abbreviations, initials, a period before a lowercase word.
        ("A pen costs $3.50 and a pad 0.5 more.", ["A pen costs $3.50 and a pad 0.5 more."]),
        ("Mr. Lee met Dr. Ng and Mrs. Ito.", ["Mr. Lee met Dr. Ng and Mrs. Ito."]),
        ("Fruit, e.g. Apples, costs 2.", ["Fruit, e.g. Apples, costs 2."]),
        ("J. K. Rowling lives in the U.S. Today.", ["J. K. Rowling lives in the U.S. Today."]),
        ("It costs approx. three dollars.", ["It costs approx. three dollars."]),
        ("Wait... what? Fine.", ["Wait... what? ", "Fine."]),
        ("What is 2.5 + 1.25?", ["What is 2.5 + 1.25?"]),
        ("no punctuation at all", ["no punctuation at all"]),
        ("", []),
        ("   ", []),
    ],
)
def test_split_sentences(text: str, sentences: list[str]) -> None:
    assert split_sentences(text) == sentences
    assert "".join(sentences) == text or not text.strip()


def test_drop_sentence_drops_one_non_final_sentence_by_a_seeded_hash() -> None:
    text = "Tom has 4.5 kg of flour. Mr. Smith gives him 2 kg. He bakes 3 loaves. How much is left?"
    sentences = split_sentences(text)
    assert len(sentences) == 4
    seen = set()
    for key in (f"row{k}" for k in range(40)):
        kept, dropped = drop_sentence(text, seed=0, key=key)  # type: ignore[misc]
        index = [s.strip() for s in sentences].index(dropped)
        assert index < 3  # never the final sentence (the question)
        assert kept == "".join(sentences[:index] + sentences[index + 1 :]).strip()
        assert drop_sentence(text, seed=0, key=key) == (kept, dropped)  # deterministic
        seen.add(index)
    assert seen == {0, 1, 2}  # every non-final sentence is chosen for some row
    picks = [drop_sentence(text, seed=s, key="row0")[1] for s in range(20)]  # type: ignore[index]
    assert len(set(picks)) > 1  # the seed changes the choice
    assert drop_sentence("How much flour is left?", seed=0, key="row0") is None
    assert drop_sentence("Mr. Smith has 2.5 kg. ", seed=0, key="row0") is None


def test_sentence_drops_edit_the_last_user_turn_and_skip_single_sentences() -> None:
    prompts = pl.Series(
        [
            [{"role": "system", "content": "Be brief. Show work."},
             {"role": "user", "content": "Ann has 3 apples. She eats 1. How many are left?"}],
            [{"role": "user", "content": "What is 3.5 times 2?"}],
            [{"role": "assistant", "content": "Hi. Ask me."}],
        ],
        dtype=MESSAGE_DTYPE,
    )  # fmt: skip
    ids = pl.Series(["a", "b", "c"])
    drops = sentence_drops(prompts, ids, seed=3)
    assert drops.columns == ["prompt_sentence_drop", "dropped_sentence"]
    assert drops["prompt_sentence_drop"][1] is None and drops["prompt_sentence_drop"][2] is None
    first = drops["prompt_sentence_drop"][0].to_list()
    assert first[0] == {"role": "system", "content": "Be brief. Show work."}  # untouched
    dropped = drops["dropped_sentence"][0]
    assert dropped in ("Ann has 3 apples.", "She eats 1.")
    assert first[1]["content"] == drop_sentence(prompts[0][1]["content"], seed=3, key="a")[0]  # type: ignore[index]
    # A row's choice depends on its id and the seed only, not on the other rows.
    alone = sentence_drops(prompts[:1], ids[:1], seed=3)
    assert alone["prompt_sentence_drop"][0].to_list() == first


def test_sentence_drop_is_a_strategy() -> None:
    assert strategy_kinds("sentence-drop, random") == ("random", "sentence-drop")
    with pytest.raises(ConfigError, match="sentence-drop"):
        strategy_kinds("sentence-dorp")


CONTEXT = "I am a nurse. I work nights. I have two kids."
QUESTION = "Ann has 3 apples. She buys 4 more. Then she eats 2. How many are left?"


@pytest.mark.parametrize(
    "spec", ["user-turn", "paper", "about-user", "Notes: {context} Q: {question}"]
)
def test_sentence_drops_keep_the_context_whole(spec: str) -> None:
    """The dropped sentence is one of the question's non-final ones, never the context's, under
    every format (in the user's turn or a system message)."""
    from mipo.prompt_format import PromptFormat

    fmt = PromptFormat(spec)
    bare = [{"role": "user", "content": QUESTION}]
    prompts = pl.Series([fmt.messages(CONTEXT, bare)] * 30, dtype=MESSAGE_DTYPE)
    questions = pl.Series([bare] * 30, dtype=MESSAGE_DTYPE)
    ids = pl.Series([f"row{k}" for k in range(30)])
    drops = sentence_drops(prompts, ids, seed=0, questions=questions)
    sentences = [s.strip() for s in split_sentences(QUESTION)]
    seen = set()
    for k, (prompt, dropped) in enumerate(drops.iter_rows()):
        assert dropped in sentences[:-1]  # a non-final sentence of the question
        kept = drop_sentence(QUESTION, seed=0, key=f"row{k}")
        assert kept is not None and kept[1] == dropped
        # The rejected prompt is the same format with the same, whole context and the question
        # lacking exactly that sentence.
        assert prompt == fmt.messages(CONTEXT, [{"role": "user", "content": kept[0]}])
        seen.add(dropped)
    assert seen == set(sentences[:-1])  # context sentences are never candidates
    # Without the questions the context-sharing turn was split whole (the old behaviour):
    # the questions are what keeps the context out of the choice.
    if fmt.in_user_turn:
        old = sentence_drops(prompts, ids, seed=0)["dropped_sentence"].to_list()
        assert set(old) & {s.strip() for s in split_sentences(CONTEXT)}


def test_sentence_drops_of_messages_with_system_context_and_several_turns() -> None:
    """A messages corpus: the system messages are the context (in the first user turn under
    user-turn); the question is the last user turn, and only it loses a sentence."""
    from mipo.prompt_format import PromptFormat

    conversation = [
        {"role": "user", "content": "Hi there. I need help."},
        {"role": "assistant", "content": "Sure. Ask away."},
        {"role": "user", "content": QUESTION},
    ]
    single = [{"role": "user", "content": QUESTION}]
    fmt = PromptFormat("user-turn")
    prompts = pl.Series(
        [fmt.messages(CONTEXT, conversation), fmt.messages(CONTEXT, single)], dtype=MESSAGE_DTYPE
    )
    drops = sentence_drops(
        prompts,
        pl.Series(["a", "b"]),
        seed=7,
        questions=pl.Series([conversation, single], dtype=MESSAGE_DTYPE),
    )
    for row, (key, bare) in enumerate([("a", conversation), ("b", single)]):
        kept, dropped = drop_sentence(QUESTION, seed=7, key=key)  # type: ignore[misc]
        assert drops["dropped_sentence"][row] == dropped
        shortened = [*bare[:-1], {"role": "user", "content": kept}]
        assert drops["prompt_sentence_drop"][row].to_list() == fmt.messages(CONTEXT, shortened)


def test_sentence_drops_rows_without_context_and_a_context_quoting_the_question() -> None:
    """A null question is a row without context (its prompt is the question); a context that
    repeats the question does not move the drop into the context."""
    from mipo.prompt_format import PromptFormat

    bare = [{"role": "user", "content": QUESTION}]
    quoting = f"My kid asked me: {QUESTION}"
    prompts = pl.Series(
        [bare, PromptFormat("user-turn").messages(quoting, bare),
         PromptFormat("paper").messages(quoting, bare)],
        dtype=MESSAGE_DTYPE,
    )  # fmt: skip
    questions = pl.Series([None, bare, bare], dtype=MESSAGE_DTYPE)
    ids = pl.Series(["k", "k", "k"])
    drops = sentence_drops(prompts, ids, seed=1, questions=questions)
    plain = sentence_drops(prompts[:1], ids[:1], seed=1)
    assert drops.row(0) == plain.row(0)  # as without questions
    kept, _ = drop_sentence(QUESTION, seed=1, key="k")  # type: ignore[misc]
    short = [{"role": "user", "content": kept}]
    assert drops["prompt_sentence_drop"][1].to_list() == PromptFormat("user-turn").messages(
        quoting, short
    )
    assert drops["prompt_sentence_drop"][2].to_list() == PromptFormat("paper").messages(
        quoting, short
    )
    with pytest.raises(ValueError, match="not in the prompt"):
        sentence_drops(
            pl.Series([[{"role": "user", "content": "Other. Text here?"}]], dtype=MESSAGE_DTYPE),
            ids[:1],
            seed=1,
            questions=pl.Series([bare], dtype=MESSAGE_DTYPE),
        )
