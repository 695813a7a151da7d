"""Negative strategies: which response is the *rejected* answer of each prompt.

- ``random``: the response to another prompt σ(i), σ a derangement drawn by the engine (no prompt
  is its own negative; with users, σ(i) belongs to another user; never a near duplicate of i);
- ``context-drop``: the response to prompt i with its context removed;
- ``context-swap``: the response to prompt i's question asked with *another user's* context —
  the negative that isolates the user. Where another user asked the same question (exact or
  near-duplicate question), that user's own response is reused (a derangement within question
  clusters that keeps every row off its own user: :func:`assign_context_swaps`); otherwise a
  response to (another user's context, this question) is generated;
- ``sentence-drop``: the response to prompt i with one non-final sentence of its question
  removed (the paper's context drop for math problems, whose "context" is the givens stated
  before the question): the sentence is picked by a seeded hash of the row's id
  (:func:`drop_sentence`), so it does not depend on batching or partitioning; a question of one
  sentence has no sentence-drop negative. Only the question loses a sentence: a context, in
  whatever format, stays whole (:func:`sentence_drops`). Sentences are split by :func:`split_sentences`;
- any combination, comma-separated (``random,context-swap``): one pair of each kind per prompt;
  ``both`` is ``random,context-drop``.

>>> import polars as pl
>>> from mipo.pairs.negatives import assign_negatives
>>> sigma = assign_negatives(4, seed=0)
>>> sorted(sigma.to_list()), any(s == i for i, s in enumerate(sigma))
([0, 1, 2, 3], False)
>>> parse_strategy("context-swap,random")
'random,context-swap'
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import polars as pl

from mipo import engine
from mipo.corpus import MESSAGE_DTYPE
from mipo.errors import ConfigError, CorpusError, DerangementError, MipoError
from mipo.prompt_format import question_start

__all__ = [
    "ABBREVIATIONS",
    "ALIASES",
    "STRATEGIES",
    "ContextSwaps",
    "NegativeStrategy",
    "assign_context_swaps",
    "assign_negatives",
    "check_negatives",
    "drop_sentence",
    "parse_strategy",
    "sentence_drops",
    "split_sentences",
    "strategy_kinds",
]

NegativeStrategy = str
"""A ``--negatives`` value: one of :data:`STRATEGIES` or a comma-separated list of them."""
STRATEGIES: tuple[str, ...] = ("random", "context-drop", "context-swap", "sentence-drop")
"""The pair kinds, in the order a prompt's pairs are written."""
ALIASES = {"both": "random,context-drop"}
"""Older names of strategy lists."""


def strategy_kinds(strategy: NegativeStrategy) -> tuple[str, ...]:
    """The pair kinds a ``--negatives`` value produces, in output order (validated).

    >>> strategy_kinds("both")
    ('random', 'context-drop')
    >>> strategy_kinds("context-swap, context-drop")
    ('context-drop', 'context-swap')
    """
    if not isinstance(strategy, str):
        raise ConfigError(f"--negatives must be a string, got {type(strategy).__name__}")
    text = ALIASES.get(strategy.strip(), strategy)
    names = [part.strip() for part in text.split(",")]
    unknown = [name for name in names if name not in STRATEGIES]
    if unknown or not names:
        raise ConfigError(
            f"--negatives takes {', '.join(STRATEGIES)} or a comma-separated list of them "
            f"(e.g. random,context-swap), got {strategy!r}"
        )
    if len(set(names)) < len(names):
        raise ConfigError(f"--negatives lists a strategy twice: {strategy!r}")
    return tuple(kind for kind in STRATEGIES if kind in names)


def parse_strategy(value: NegativeStrategy) -> NegativeStrategy:
    """Validate a ``--negatives`` value and return its canonical form (kinds in output order).

    >>> parse_strategy("both")
    'random,context-drop'
    """
    return ",".join(strategy_kinds(value))


def _group_codes(users: pl.Series) -> pl.Series:
    """Dense UInt32 codes of a user column; each null user becomes a group of its own (an
    unknown user constrains nothing)."""
    codes = users.rank("dense").cast(pl.UInt32)
    if users.null_count():
        base = int(codes.max() or 0) + 1  # type: ignore[arg-type]
        fresh = pl.int_range(base, base + len(users), dtype=pl.UInt32, eager=True)
        codes = pl.select(pl.when(codes.is_null()).then(fresh).otherwise(codes)).to_series()
    return codes.rename("groups")


def _largest_group(users: pl.Series) -> tuple[str, int]:
    counts = users.drop_nulls().value_counts(sort=True)
    if counts.height == 0:
        return "", 0
    return str(counts[0, 0]), int(counts[0, 1])


def assign_negatives(
    n: int,
    *,
    seed: int,
    users: pl.Series | None = None,
    clusters: pl.Series | None = None,
) -> pl.Series:
    """σ for ``n`` prompts: ``sigma[i]`` is the index of the prompt whose response is i's negative.

    ``users`` (one id per prompt, nulls allowed) keeps σ(i) from i's user; ``clusters`` (near-
    duplicate cluster per prompt) keeps σ(i) out of i's cluster. Without either, σ is a uniform
    derangement. Raises :class:`CorpusError` below two prompts and :class:`DerangementError`
    when the constraints cannot be met, with the fix in the message.
    """
    if n < 2:
        raise CorpusError(
            f"random negatives need at least 2 distinct prompts, got {n}: add prompts to the corpus"
        )
    for name, column in (("users", users), ("clusters", clusters)):
        if column is not None and len(column) != n:
            raise ValueError(f"{name} has {len(column)} rows, expected {n}")

    groups = None
    if users is not None:
        user, size = _largest_group(users)
        if 2 * size > n:
            raise DerangementError(
                f"user {user!r} holds {size} of {n} prompts (more than half), so not every prompt "
                "can take its negative from another user: pass --set user_constraint=false "
                "(negatives may then come from the same user) or add prompts from other users"
            )
        groups = _group_codes(users)
    cluster_codes = None
    if clusters is not None and clusters.n_unique() < n:
        cluster_codes = clusters.rank("dense").cast(pl.UInt32)
        largest = int(cluster_codes.value_counts(sort=True)[0, 1])
        if 2 * largest > n:
            raise CorpusError(
                f"{largest} of {n} prompts are near duplicates of one another (more than half), "
                "so they cannot all take a non-duplicate negative: deduplicate the corpus (drop "
                "--set dedup=false) or add distinct prompts"
            )

    if groups is None and cluster_codes is None:
        sigma = engine.derangement(n, seed=seed)
    else:
        # The user constraint was checked above; any other infeasibility (a near-duplicate
        # cluster over half the rows) comes from the engine with its own fix in the message.
        sigma = engine.constrained_derangement(n, groups=groups, clusters=cluster_codes, seed=seed)
    sigma = sigma.cast(pl.UInt32).rename("negative_index")
    check_negatives(sigma, users=users, clusters=clusters)
    return sigma


def check_negatives(
    sigma: pl.Series, *, users: pl.Series | None = None, clusters: pl.Series | None = None
) -> None:
    """Verify σ is a permutation without fixed points that honours the constraints (O(n),
    vectorized). A failure here is a bug in the engine, not in the input."""
    n = len(sigma)
    frame = pl.DataFrame({"i": pl.int_range(0, n, dtype=pl.UInt32, eager=True), "s": sigma})
    problems = []
    largest = frame["s"].max() if n else 0
    if frame["s"].n_unique() != n or int(largest or 0) >= n:  # type: ignore[arg-type]
        problems.append("not a permutation")
    if (frame["i"] == frame["s"]).any():
        problems.append("a prompt is its own negative")
    for name, column in (("user", users), ("near-duplicate cluster", clusters)):
        if column is None:
            continue
        same = column.gather(frame["s"]) == column
        if same.fill_null(False).any():
            problems.append(f"a negative shares its prompt's {name}")
    if problems:
        raise MipoError(f"internal error: negative assignment invalid ({'; '.join(problems)})")


@dataclass
class ContextSwaps:
    """The ``context-swap`` negative of every planned prompt (frames aligned with the plan).

    ``partner``: the plan index of another user's prompt with the same (or a near-duplicate)
    question whose own response is reused, else null. ``donor``: for rows without such a partner,
    the index (into the representatives given to :func:`assign_context_swaps`) of the user whose
    context the question is asked with in a freshly generated response, else null. Rows without
    a context of their own get neither.
    """

    partner: pl.Series
    donor: pl.Series
    reused: int
    generated: int
    no_context: int
    no_donor: int


def assign_context_swaps(
    *,
    question_clusters: pl.Series,
    has_context: pl.Series,
    groups: pl.Series,
    prompt_clusters: pl.Series | None,
    representative_groups: pl.Series,
    seed: int,
) -> ContextSwaps:
    """Who answers each prompt's question with another user's context.

    1. *Reuse*: within each question cluster, rows with a context are paired by the engine's
       :func:`~mipo.engine.stratified_derangement` (strata = question clusters, groups = users,
       clusters = near-duplicate prompt clusters): the partner is another user's prompt with the
       same question, and each matched response serves exactly once as a negative, as with
       ``random``.
    2. *Generate*: every other row with a context takes the context of user τ(u), τ a seeded
       derangement of the users that have a context (``representative_groups``: one entry per
       such user, the order the caller keeps their representative contexts in).

    ``groups``: the user of each row (or, without a user column, a key of its context: then
    "another user" means another context).
    """
    n = len(question_clusters)
    for name, column in (("has_context", has_context), ("groups", groups)):
        if len(column) != n:
            raise ValueError(f"{name} has {len(column)} rows, expected {n}")
    strata = pl.select(
        pl.when(has_context).then(question_clusters.cast(pl.Int64)).otherwise(None)
    ).to_series()
    partner = engine.stratified_derangement(
        strata, groups=groups, clusters=prompt_clusters, seed=seed
    ).rename("swap_partner")
    needs = has_context & partner.is_null()
    reps = len(representative_groups)
    donor = pl.Series("swap_donor", [None] * n, dtype=pl.UInt32)
    no_donor = 0
    if reps >= 2 and bool(needs.any()):
        tau = engine.derangement(reps, seed=seed ^ 0x5CA9_D0_0D)
        position = pl.DataFrame(
            {"g": representative_groups, "rep": pl.int_range(0, reps, dtype=pl.UInt32, eager=True)}
        )
        own = pl.DataFrame({"g": groups}).join(position, on="g", how="left", maintain_order="left")[
            "rep"
        ]
        chosen = tau.gather(own.fill_null(0)).cast(pl.UInt32)
        donor = (
            pl.select(pl.when(needs & own.is_not_null()).then(chosen).otherwise(None))
            .to_series()
            .rename("swap_donor")
        )
        no_donor = int((needs & own.is_null()).sum())
    elif bool(needs.any()):
        no_donor = int(needs.sum())
    return ContextSwaps(
        partner=partner.cast(pl.UInt32),
        donor=donor,
        reused=int(partner.is_not_null().sum()),
        generated=int(donor.is_not_null().sum()),
        no_context=int((~has_context).sum()),
        no_donor=no_donor,
    )


# --- sentence-drop ---------------------------------------------------------------------------

ABBREVIATIONS = frozenset(
    ["mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "vs", "approx", "e.g", "i.e", "cf"]
)
"""Words whose period never ends a sentence (compared case-insensitively, without the period)."""

# A run of sentence-ending punctuation, closing quotes or brackets, then whitespace; or a blank
# line. The whitespace after a sentence belongs to that sentence.
_BOUNDARY = re.compile(
    r"(?P<punct>[.!?]+[\"'\u201d\u2019)\]]*)(?P<space>\s+)|(?P<para>\n[ \t]*\n\s*)"
)
_INITIALS = re.compile(r"^(?:[A-Za-z]\.)*[A-Z]$|^(?:[A-Za-z]\.)+[A-Za-z]$")


def _ends_sentence(text: str, match: re.Match[str]) -> bool:
    """Whether a punctuation boundary candidate really ends a sentence."""
    if "\n\n" in match.group("space").replace(" ", "").replace("\t", ""):
        return True
    if "?" in match.group("punct") or "!" in match.group("punct"):
        return True
    before = text[: match.start()].rsplit(None, 1)
    word = before[-1].lstrip("\"'(\u201c\u2018[") if before else ""
    if word.casefold() in ABBREVIATIONS or _INITIALS.match(word):
        return False
    # "approx. three", "about 5 p.m. on ...": a period before a lowercase word ends nothing.
    following = text[match.end() : match.end() + 1]
    return not following.islower()


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text``, each with the whitespace after it (so ``"".join`` of the
    result is ``text``).

    A sentence ends at ``.``, ``!`` or ``?`` (or a run of them, with any closing quotes or
    brackets) followed by whitespace or the end of the text, and at a blank line. A period does
    not end a sentence inside a number (``3.5``, no whitespace follows), after an abbreviation of
    :data:`ABBREVIATIONS` (``Mr.``, ``Dr.``, ``e.g.``), after initials (``J.``, ``U.S.``), or
    when the next word starts in lowercase (``approx. three``). ``?`` and ``!`` always end one.

    >>> split_sentences("Mr. Lee has 3.5 kg of rice. He eats 0.5 kg a day! How many days? ")
    ['Mr. Lee has 3.5 kg of rice. ', 'He eats 0.5 kg a day! ', 'How many days? ']
    >>> split_sentences("How much is 2.5 + 1?")
    ['How much is 2.5 + 1?']
    >>> split_sentences("")
    []
    """
    sentences = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        if match.group("punct") is not None and not _ends_sentence(text, match):
            continue
        if text[start : match.start()].strip():
            sentences.append(text[start : match.end()])
            start = match.end()
    if text[start:].strip():
        sentences.append(text[start:])
    elif sentences:
        sentences[-1] += text[start:]
    return sentences


def _row_hash(seed: int, key: str) -> int:
    digest = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def drop_sentence(text: str, *, seed: int, key: str) -> tuple[str, str] | None:
    """``text`` without one of its non-final sentences, and that sentence (stripped); None when
    ``text`` has fewer than two sentences.

    Which sentence: a hash of ``(seed, key)`` (``key``: the row's id) modulo the number of
    non-final sentences, so the choice depends only on the row and the seed.

    >>> drop_sentence("Ann has 3 apples. Bob has 2. How many in all?", seed=0, key="q1")
    ('Bob has 2. How many in all?', 'Ann has 3 apples.')
    >>> drop_sentence("How many apples?", seed=0, key="q1") is None
    True
    """
    sentences = split_sentences(text)
    if len(sentences) < 2:
        return None
    drop = _row_hash(seed, key) % (len(sentences) - 1)
    kept = sentences[:drop] + sentences[drop + 1 :]
    return "".join(kept).strip(), sentences[drop].strip()


def sentence_drops(
    prompts: pl.Series, ids: pl.Series, *, seed: int, questions: pl.Series | None = None
) -> pl.DataFrame:
    """The ``sentence-drop`` prompt of each row: its messages with one non-final sentence of the
    *question* removed (:func:`drop_sentence`, keyed by the row's id); the context stays whole.

    The question is the last user turn of ``questions`` (each row's messages without their
    context: the plan's ``prompt_nocontext``), or of the prompt itself where ``questions`` is
    None or null (a row without context). The shortened question takes the question's place in
    the prompt's last user turn: the whole turn when the context is elsewhere (a system message),
    or the question's part of the turn the context shares (``user-turn``, ``paper``, a template
    holding ``{question}``; see :func:`mipo.prompt_format.question_start`).

    Returns ``prompt_sentence_drop`` (messages; null where the question has one sentence, or
    there is none) and ``dropped_sentence`` (String), aligned with ``prompts``.

    >>> prompt = [{"role": "user", "content": "I am 9. I like cats.\\n\\nAnn has 3. How many?"}]
    >>> question = [{"role": "user", "content": "Ann has 3. How many?"}]
    >>> drops = sentence_drops(
    ...     pl.Series([prompt]), pl.Series(["q1"]), seed=0, questions=pl.Series([question]))
    >>> drops["prompt_sentence_drop"][0][0]["content"], drops["dropped_sentence"][0]
    ('I am 9. I like cats.\\n\\nHow many?', 'Ann has 3.')
    """
    if len(ids) != len(prompts):
        raise ValueError(f"ids has {len(ids)} rows, expected {len(prompts)}")
    if questions is not None and len(questions) != len(prompts):
        raise ValueError(f"questions has {len(questions)} rows, expected {len(prompts)}")
    question_rows = questions.to_list() if questions is not None else [None] * len(prompts)
    dropped_prompts: list[list[dict[str, str]] | None] = []
    dropped: list[str | None] = []
    for messages, question, key in zip(
        prompts.to_list(), question_rows, ids.cast(pl.String).to_list(), strict=True
    ):
        result = _drop_question_sentence(messages or [], question, seed=seed, key=key)
        dropped_prompts.append(result[0] if result else None)
        dropped.append(result[1] if result else None)
    return pl.DataFrame(
        [
            pl.Series("prompt_sentence_drop", dropped_prompts, dtype=MESSAGE_DTYPE),
            pl.Series("dropped_sentence", dropped, dtype=pl.String),
        ]
    )


def _last_user_turn(messages: list[dict[str, str]]) -> int | None:
    return max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)


def _drop_question_sentence(
    prompt: list[dict[str, str]],
    question: list[dict[str, str]] | None,
    *,
    seed: int,
    key: str,
) -> tuple[list[dict[str, str]], str] | None:
    """One row of :func:`sentence_drops`: the prompt without one non-final sentence of its
    question (the last user turn of ``question``, or of ``prompt`` when None), and that
    sentence; None when the question has fewer than two sentences or there is no user turn."""
    messages = [dict(m) for m in prompt]
    turn = _last_user_turn(messages)
    question_turn = _last_user_turn(question) if question is not None else turn
    if turn is None or question_turn is None:
        return None
    content = messages[turn].get("content") or ""
    text = (question[question_turn] if question is not None else messages[turn]).get("content")
    result = drop_sentence(text or "", seed=seed, key=key)
    if result is None:
        return None
    start = question_start(content, text or "")
    if start is None:
        raise ValueError(
            f"row {key!r}: its question is not in the prompt's last user turn; the questions "
            "must be the prompts without their contexts (the plan's prompt_nocontext)"
        )
    messages[turn]["content"] = content[:start] + result[0] + content[start + len(text or "") :]
    return messages, result[1]
