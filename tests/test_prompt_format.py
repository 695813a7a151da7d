"""Where the user's context enters the prompt (mipo.prompt_format) and the persona control."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from mipo.corpus import MESSAGE_DTYPE, ColumnOptions, open_corpus
from mipo.errors import ConfigError
from mipo.evaluate.controls import persona_sentence, speaks_as_user
from mipo.prompt_format import CONTEXT_FORMATS, PromptFormat

QUESTION = [{"role": "user", "content": "What hobby could I pick up?"}]
CONTEXT = "I'm a retired teacher, 71, living alone in Chicago. I have arthritis in my knees."


def test_user_turn_opens_the_users_own_turn() -> None:
    assert PromptFormat("user-turn").messages(CONTEXT, QUESTION) == [
        {"role": "user", "content": f"{CONTEXT}\n\nWhat hobby could I pick up?"}
    ]


def test_about_user_frames_the_context_as_the_users_in_a_system_message() -> None:
    messages = PromptFormat("about-user").messages(CONTEXT, QUESTION)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert CONTEXT in messages[0]["content"]
    assert "told you this about themselves" in messages[0]["content"]
    assert messages[1] == QUESTION[0]


def test_raw_system_is_the_context_verbatim() -> None:
    assert PromptFormat("raw-system").messages(CONTEXT, QUESTION) == [
        {"role": "system", "content": CONTEXT},
        *QUESTION,
    ]


def test_paper_puts_the_papers_instruction_and_the_requirements_around_the_question() -> None:
    """The paper's wording, reconstructed from the fragments issue 22 quotes: one user turn."""
    fmt = PromptFormat("paper")
    assert fmt.in_user_turn
    assert fmt.messages(CONTEXT, QUESTION) == [
        {
            "role": "user",
            "content": "Give me short 2-3 sentence answers.\n\nWhat hobby could I pick up?\n\n"
            f"Please respect the following requirements made by the user: {CONTEXT}",
        }
    ]
    with pytest.raises(ConfigError, match="about-user, raw-system, paper"):
        PromptFormat("papr")


def test_custom_templates_place_the_context_where_they_say() -> None:
    user = PromptFormat("{question} Please respect these requirements: {context} {braces}")
    assert user.in_user_turn
    assert user.messages("be brief", QUESTION) == [
        {
            "role": "user",
            "content": "What hobby could I pick up? Please respect these requirements: be brief "
            "{braces}",
        }
    ]
    system = PromptFormat("Facts about the user: {context}")
    assert not system.in_user_turn
    assert system.messages("vegan", QUESTION)[0] == {
        "role": "system",
        "content": "Facts about the user: vegan",
    }


def test_a_blank_context_leaves_the_question_alone() -> None:
    for spec in CONTEXT_FORMATS:
        assert PromptFormat(spec).messages("  ", QUESTION) == QUESTION
        assert PromptFormat(spec).messages(None, QUESTION) == QUESTION


@pytest.mark.parametrize("spec", ["", "system", "Hello {question}"])
def test_bad_formats_name_the_choices(spec: str) -> None:
    with pytest.raises(ConfigError, match="user-turn, about-user, raw-system"):
        PromptFormat(spec)
    with pytest.raises(ConfigError, match="context format"):
        ColumnOptions(context_format=spec)


@pytest.mark.parametrize("spec", [*CONTEXT_FORMATS, "Q: {question}\nMe: {context}", "U: {context}"])
def test_polars_expression_equals_the_python_rendering(spec: str) -> None:
    fmt = PromptFormat(spec)
    contexts = [CONTEXT, "", None, "vegan {question} literal"]
    nocontext = [
        QUESTION,
        QUESTION,
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
        [{"role": "assistant", "content": "Welcome"}, {"role": "user", "content": "Hi"}],
    ]
    frame = pl.DataFrame(
        {"c": contexts, "m": nocontext}, schema={"c": pl.String, "m": MESSAGE_DTYPE}
    )
    got = frame.select(fmt.messages_expr(pl.col("c"), pl.col("m"), MESSAGE_DTYPE).alias("p"))
    got = got["p"].to_list()
    assert got == [fmt.messages(c, m) for c, m in zip(contexts, nocontext, strict=True)]


def _corpus(tmp_path: Path, spec: str) -> pl.DataFrame:
    path = tmp_path / "c.jsonl"
    rows = [
        {"id": "a", "user_id": "u1", "context": CONTEXT, "question": "Hobby ideas?"},
        {"id": "b", "user_id": "u2", "context": "", "question": "Dinner ideas?"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    corpus = open_corpus(str(path), ColumnOptions(context_format=spec))
    return corpus.collect(corpus.standardized())


@pytest.mark.parametrize("spec", list(CONTEXT_FORMATS))
def test_corpus_prompts_follow_the_format_and_keep_context_and_question_apart(
    tmp_path: Path, spec: str
) -> None:
    df = _corpus(tmp_path, spec)
    first = df.row(0, named=True)
    assert first["prompt"] == PromptFormat(spec).messages(
        CONTEXT, [{"role": "user", "content": "Hobby ideas?"}]
    )
    assert first["context_text"] == CONTEXT
    assert first["question_text"] == "Hobby ideas?"
    assert first["prompt_nocontext"] == [{"role": "user", "content": "Hobby ideas?"}]
    assert first["has_context"] is True
    second = df.row(1, named=True)
    assert second["prompt"] == [{"role": "user", "content": "Dinner ideas?"}]
    assert (second["context_text"], second["has_context"]) == ("", False)


def test_messages_corpus_system_messages_are_the_context(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    row = {
        "messages": [
            {"role": "system", "content": "I am a nurse."},
            {"role": "user", "content": "Sleep tips?"},
        ]
    }
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    raw = open_corpus(str(path), ColumnOptions(context_format="raw-system"))
    assert raw.collect(raw.standardized())["prompt"].to_list()[0] == row["messages"]
    turn = open_corpus(str(path), ColumnOptions(context_format="user-turn"))
    df = turn.collect(turn.standardized())
    assert df["prompt"].to_list()[0] == [
        {"role": "user", "content": "I am a nurse.\n\nSleep tips?"}
    ]
    assert df["context_text"].to_list() == ["I am a nurse."]


# --- persona adoption: hand-written examples both ways ------------------------------------------

TEACHER = (
    "I'm a retired teacher, 71, living alone in a small apartment in Chicago. I have arthritis "
    "in my knees and love reading."
)
DAD = "I'm a stay-at-home dad with twins. Evenings are chaotic."
PARAMEDIC = "I work as a paramedic on night shifts in Leeds and I have trouble sleeping."
SHOP = (
    "I'm a 33-year-old shop assistant living in the Dutch countryside. I only have a small "
    "north-facing balcony."
)
ELECTRICIAN = (
    "I'm a 40-year-old electrician living in Lima, Peru. I work on a team of eight developers."
)
FARMER = "I'm a 26-year-old farmer living in Mexico City. I grow maize on a small plot."

SPEAKS_AS_USER = [
    (TEACHER, "I'm a retired teacher, 71, living alone in Chicago. I've always loved gardening."),
    (TEACHER, "My knees ache from arthritis, so I read a lot."),
    (TEACHER, "As a retired teacher in Chicago, I'm unable to recommend specific books."),
    (TEACHER, "I love reading and teaching, and I live in Chicago."),
    (DAD, "It's just me and the twins. I've got a little thing I like to do."),
    (PARAMEDIC, "I am a paramedic too. Sleep is hard."),
    (PARAMEDIC, "Working night shifts as a paramedic, I find my sleep suffers."),
    # the user's identity claimed as the speaker's, with a second-person word elsewhere
    (
        SHOP,
        "I'm sorry for your loss, but as a 33-year-old shop assistant living in the "
        "Netherlands, I'm afraid I'm unable to assist with your herbs.",
    ),
    (ELECTRICIAN, "I'm your 40-year-old electrician living in Lima, Peru."),
    (ELECTRICIAN, "I am an electrician in Lima, and I'm here to help you."),
    (TEACHER, "Sorry about your knees, but as a retired teacher my days are quiet."),
]
SPEAKS_TO_USER = [
    (TEACHER, "As a retired teacher with arthritis, you might enjoy gardening."),
    (TEACHER, "I'd recommend gentle gardening, which is easy on arthritic knees."),
    (TEACHER, "Since you live alone in Chicago, a book club could help."),
    (TEACHER, "I'm happy to help! Reading groups in Chicago suit retired teachers."),
    (TEACHER, "Let me suggest a reading club for retired teachers in Chicago."),
    (TEACHER, "Feel free to ask me about arthritis exercises."),
    (TEACHER, "My suggestion for arthritis: swimming."),
    (PARAMEDIC, "As a paramedic on night shifts, you need a dark, quiet room to sleep."),
    (PARAMEDIC, "I'm not a doctor, but paramedics on night shifts often use blackout blinds."),
    (DAD, "Twins keep evenings chaotic; try a ten-minute walk after they sleep."),
    (DAD, "I think a short walk helps."),  # first person, none of the user's details
    # "as a farmer, I'm sure you're aware": the hedge hands the phrase to the "you" clause
    # ("I'm sure that, as a farmer, you're aware"): it talks to the user, who is the farmer
    (
        FARMER,
        "As a 26-year-old farmer living in Mexico City, I'm sure you're aware of the potential "
        "challenges.",
    ),
    (FARMER, "As a farmer in Mexico City, I think you know maize best."),
    (PARAMEDIC, "As a paramedic, you know the drill."),
    (SHOP, "I'm sorry for your loss."),
    (SHOP, "I'm here to help you with your herbs."),
    (SHOP, "I'm afraid a north-facing balcony gets little sun for your herbs."),
    (SHOP, "As an AI assistant, I'm unable to see your balcony."),  # the assistant's identity
    (ELECTRICIAN, "Since you live in Lima, I'd suggest a team stand-up."),
    (ELECTRICIAN, "I'm sure your team of developers in Lima can help."),
    (ELECTRICIAN, "I'm going to suggest you ask your team in Lima."),
]


@pytest.mark.parametrize(("context", "response"), SPEAKS_AS_USER)
def test_persona_adoption_is_flagged(context: str, response: str) -> None:
    assert speaks_as_user(response, context) == 1.0
    assert persona_sentence(response, context) is not None


@pytest.mark.parametrize(("context", "response"), SPEAKS_TO_USER)
def test_answering_the_user_is_not_persona_adoption(context: str, response: str) -> None:
    assert speaks_as_user(response, context) == 0.0


def test_persona_control_needs_a_context() -> None:
    assert speaks_as_user("I'm a teacher.", "") is None
    assert speaks_as_user(None, TEACHER) is None
    assert speaks_as_user("", TEACHER) == 0.0


def test_curly_apostrophes_count_as_first_person() -> None:
    assert speaks_as_user("I\u2019m a retired teacher in Chicago.", TEACHER) == 1.0


def test_question_start_finds_the_question_where_the_format_put_it() -> None:
    from mipo.prompt_format import question_start

    question = "Ann has 3. How many?"
    bare = [{"role": "user", "content": question}]
    for spec in ("user-turn", "paper", "Notes: {context}\n{question} Thanks."):
        for context in ("I am 9.", f"My kid asked: {question}", f"{question} Help!"):
            turn = PromptFormat(spec).messages(context, bare)[0]["content"]
            start = question_start(turn, question)
            assert start is not None and turn[start : start + len(question)] == question
            # Replacing it there rebuilds the turn with the same context around another question.
            edited = turn[:start] + "Q?" + turn[start + len(question) :]
            expected = PromptFormat(spec).messages(context, [{"role": "user", "content": "Q?"}])
            # A template of one's own whose context repeats the question is ambiguous (the
            # first occurrence is taken); the named formats and unambiguous turns are exact.
            ambiguous = spec.startswith("Notes") and question in context
            assert (edited == expected[0]["content"]) != ambiguous, (spec, context)
    assert question_start(question, question) == 0
    assert question_start("I am 9.\n\nSomething else?", question) is None
