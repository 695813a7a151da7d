"""Shortcut controls for a PMI gain: copying the context, length, fluency.

A tuned model can raise PMI without personalizing: by parroting the user's context back (a
response that quotes the context is likely only under that context), by writing longer responses
(summed log-probabilities grow with length, and so does their difference), or by writing text the
reference finds unlikely everywhere. Beside every PMI gain the report puts

- the share of the response's word 3-grams copied verbatim from the context
  (:func:`copied_ngram_share`),
- the share of the response's content words (words of 3+ letters that are not stop words) that
  occur in the context (:func:`context_word_share`): restating the context in other words
  ("I've got arthritis in my knees" for "I have arthritis in my knees") escapes the 3-gram share
  but not this one,
- whether the response *speaks as the user* (:func:`speaks_as_user`, persona adoption):
  restating the user's context in the first person ("I'm a retired teacher, 71, ...") is the
  cheapest way to be specific to the context, and a reader calls it worse, not more personal,
- the response length in tokens,
- log π_ref(y|x) per token (fluency under the reference),

and :func:`explain_gain` asks whether the gain survives once those changes are accounted for: the
per-prompt gain ΔPMI is regressed on the per-prompt changes (model − baseline on the same
prompt), and the intercept — the gain predicted for responses that copy as much, reuse as many
context words, are as long and as fluent as the baseline's — gets the same cluster-bootstrap
interval as the raw gain. When the raw gain's interval lies above 0 and an adjusted one does
not, that covariate explains the gain, and the report says so.

>>> copied_ngram_share("I am a vegan nurse so eat beans", "I am a vegan nurse on nights")
0.5
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from mipo.evaluate.stats import bootstrap_ci, cluster_weights

__all__ = [
    "COPY_NGRAM",
    "STOP_WORDS",
    "context_word_share",
    "copied_ngram_share",
    "explain_gain",
    "persona_sentence",
    "speaks_as_user",
]

COPY_NGRAM = 3
"""Words per n-gram of the copy share (3: long enough that shared stop-word pairs do not count)."""

_WORD = re.compile(r"\w+", re.UNICODE)


def _ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    words = _WORD.findall(text.casefold())
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def copied_ngram_share(
    response: str | None, context: str | None, n: int = COPY_NGRAM
) -> float | None:
    """Share of the response's word ``n``-grams (casefolded, with repeats) that occur in the
    context; None when there is no context or the response has fewer than ``n`` words.

    >>> copied_ngram_share("one two three four", "")  is None
    True
    """
    if not context or not context.strip() or response is None:
        return None
    grams = _ngrams(response, n)
    if not grams:
        return None
    source = set(_ngrams(context, n))
    return sum(g in source for g in grams) / len(grams)


STOP_WORDS = frozenset(
    [
        "a",
        "about",
        "above",
        "after",
        "again",
        "against",
        "all",
        "also",
        "am",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "few",
        "for",
        "from",
        "further",
        "get",
        "got",
        "had",
        "has",
        "have",
        "having",
        "he",
        "her",
        "here",
        "hers",
        "him",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "just",
        "me",
        "more",
        "most",
        "my",
        "no",
        "nor",
        "not",
        "now",
        "of",
        "off",
        "on",
        "once",
        "only",
        "or",
        "other",
        "our",
        "ours",
        "out",
        "over",
        "own",
        "same",
        "she",
        "should",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "very",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "yours",
        "yourself",
        "im",
        "ive",
        "youre",
        "dont",
        "cant",
        "its",
        "lets",
        "thats",
        "theres",
    ]
)
"""English function words left out of :func:`context_word_share` (they are shared by any two
texts, so they say nothing about copying)."""


def _content_words(text: str) -> list[str]:
    return [
        w
        for w in _WORD.findall(text.casefold().replace("'", ""))
        if len(w) >= 3 and w not in STOP_WORDS
    ]


def context_word_share(response: str | None, context: str | None) -> float | None:
    """Share of the response's content words (3+ letters, not :data:`STOP_WORDS`; with repeats)
    that occur in the context; None without a context or without content words.

    >>> context_word_share("Gardening suits arthritis in the knees", "I have arthritis in my knees.")
    0.5
    """
    if not context or not context.strip() or response is None:
        return None
    words = _content_words(response)
    if not words:
        return None
    source = set(_content_words(context))
    return sum(w in source for w in words) / len(words)


# --- persona adoption ----------------------------------------------------------------------------

_SENTENCE = re.compile(r"[^.!?\n]+[.!?]*")
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_SECOND_PERSON = frozenset(
    ["you", "your", "yours", "yourself", "yourselves", "you're", "you've", "you'd", "you'll", "u"]
)
_I_FORMS = frozenset(["i", "i'm", "i've", "i'd", "i'll", "im", "ive"])
_MY_FORMS = frozenset(["my", "mine", "myself", "me"])
# What an assistant says of itself while helping: "I'd recommend", "I'm happy to", "I'm not a
# doctor", "I can", "my suggestion". A first-person word followed by one of these is the
# assistant speaking, not the user's details claimed as its own.
_HELPER_AFTER_I = frozenset(
    [
        "recommend",
        "recommends",
        "suggest",
        "suggests",
        "would",
        "could",
        "can",
        "cannot",
        "can't",
        "couldn't",
        "should",
        "might",
        "may",
        "will",
        "think",
        "believe",
        "hope",
        "understand",
        "know",
        "see",
        "hear",
        "encourage",
        "advise",
        "apologize",
        "appreciate",
        "agree",
        "guess",
        "wonder",
        "imagine",
        "happy",
        "glad",
        "sorry",
        "here",
        "not",
        "afraid",
        "unable",
        "able",
        "just",
        "also",
        "really",
        "strongly",
        "highly",
        "definitely",
        "personally",
        "sure",
        "certain",
        "confident",
        "going",
        "trying",
        "excited",
        "delighted",
        "thrilled",
        "pleased",
    ]
)
_HELPER_AFTER_MY = frozenset(
    [
        "recommendation",
        "recommendations",
        "suggestion",
        "suggestions",
        "advice",
        "answer",
        "response",
        "pleasure",
        "apologies",
        "best",
        "guess",
        "opinion",
        "view",
        "understanding",
        "knowledge",
        "goal",
        "aim",
        "hope",
    ]
)

_HELPER_BEFORE_ME = frozenset(
    ["let", "ask", "tell", "contact", "message", "allow", "email", "call"]
)


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.casefold().replace("\u2019", "'").replace("\u2018", "'"))


_CLAUSE_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[,;:()]")
_BREAK = frozenset([",", ";", ":", "(", ")"])
# "As a farmer, I'm sure you're aware ...": a hedge ("I'm sure", "I think") followed by a
# clause whose subject is "you" hands the "as a(n) ..." phrase on to that clause: the user is
# the farmer ("I'm sure that, as a farmer, you're aware").
_HEDGE = frozenset(
    [
        "sure",
        "certain",
        "confident",
        "think",
        "believe",
        "know",
        "imagine",
        "bet",
        "guess",
        "hope",
        "understand",
        "assume",
        "suspect",
        "expect",
        "trust",
    ]
)
# What an assistant calls itself ("As an AI, I ...", "I'm an AI language model"): never the
# user's identity, even where a word like "assistant" is in the context.
_SELF_AI = frozenset(["ai", "chatbot", "bot", "robot", "model"])
_PHRASE_MAX = 12


def _identity_phrase(tokens: list[str], start: int) -> list[str]:
    """The words from ``start`` up to a clause break, a first- or second-person word, or
    :data:`_PHRASE_MAX` words."""
    phrase: list[str] = []
    for word in tokens[start : start + _PHRASE_MAX]:
        if word in _BREAK or word in _I_FORMS or word in _MY_FORMS or word in _SECOND_PERSON:
            break
        phrase.append(word)
    return phrase


def _carries(phrase: list[str], source: set[str]) -> bool:
    """Whether ``phrase`` holds a content word of the context and is not the assistant's own
    identity ("AI language model")."""
    if any(w in _SELF_AI for w in phrase):
        return False
    return any(w in source for w in _content_words(" ".join(phrase)))


def _strong_claim(sentence: str, source: set[str]) -> bool:
    """The user's identity claimed as the speaker's, wherever a second-person word is in the
    sentence: "as a(n) <phrase>, I/I'm/my ..." or "I'm/I am (your|a|an)? <phrase>" with a phrase
    carrying a context content word (see :func:`persona_sentence`, condition 1)."""
    norm = sentence.casefold().replace("\u2019", "'").replace("\u2018", "'")
    tokens = _CLAUSE_TOKEN.findall(norm)
    for i, word in enumerate(tokens):
        following = tokens[i + 1] if i + 1 < len(tokens) else ""
        if word == "as" and following in ("a", "an"):
            phrase = _identity_phrase(tokens, i + 2)
            j = i + 2 + len(phrase)
            while j < len(tokens) and tokens[j] in _BREAK:
                j += 1
            subject = tokens[j] if j < len(tokens) else ""
            if subject not in _I_FORMS and subject not in _MY_FORMS:
                continue  # "as a paramedic, you ...", "as a result, it ..."
            rest = [t for t in tokens[j + 1 : j + 5] if t not in ("am", "that")]
            if rest and rest[0] in _HEDGE and len(rest) > 1 and rest[1] in _SECOND_PERSON:
                continue  # "as a farmer, I'm sure you're aware": the farmer is the user
            if _carries(phrase, source):
                return True
            continue
        start: int | None = None
        if word in ("i'm", "im"):
            start = i + 1
        elif word == "i" and following == "am":
            start = i + 2
        if start is None or start >= len(tokens) or tokens[start] in _HELPER_AFTER_I:
            continue
        if tokens[start] in ("your", "a", "an"):
            start += 1
        if _carries(_identity_phrase(tokens, start), source):
            return True
    return False


def _self_description(tokens: list[str]) -> tuple[bool, bool]:
    """(first-person self-description, strong claim) in a sentence's tokens.

    A self-description is "my/me/mine/myself" (not "my suggestion", not "let me") or an I-form
    not followed by a helper word ("I'm a retired teacher", "I live in Chicago", "I've got
    twins" — not "I'd recommend" or "I'm happy to"). A strong claim is an identity ("I am / I'm
    / I was a(n) ...", "as a(n) ..., I ...": the user's identity taken as the speaker's,
    whatever verb follows) or a possessive ("my knees", "just me and the twins")."""
    described = identity = as_a = False
    for i, word in enumerate(tokens):
        following = tokens[i + 1] if i + 1 < len(tokens) else ""
        if word == "as" and following in ("a", "an"):
            as_a = True
        if word in _MY_FORMS:
            asked = word == "me" and i > 0 and tokens[i - 1] in _HELPER_BEFORE_ME
            if following not in _HELPER_AFTER_MY and not asked:
                described = identity = True
            continue
        if word not in _I_FORMS:
            continue
        after_be: str | None = None  # the word after "I am" / "I'm" / "I was"
        if word == "i" and following in ("am", "was"):
            after_be = tokens[i + 2] if i + 2 < len(tokens) else ""
        elif word in ("i'm", "im"):
            after_be = following
        if after_be in ("a", "an") or as_a:
            identity = True
        if following not in _HELPER_AFTER_I and (
            after_be is None or after_be not in _HELPER_AFTER_I
        ):
            described = True
    return described or identity, identity


def persona_sentence(response: str | None, context: str | None) -> str | None:
    """The first sentence of ``response`` that speaks *as* the user rather than *to* them, or
    None. A sentence does when 1 holds, or 2, 3 and 4 all hold:

    1. it claims the user's identity as the speaker's, whatever else the sentence says (a "your"
       elsewhere does not undo it): "as a(n) <phrase>, I/I'm/my ..." or "I'm/I am
       (your|a|an)? <phrase>", the phrase (up to a comma or a personal pronoun) carrying a
       content word of the context and not the assistant's own ("AI language model"); not
       "I'm" + what an assistant says of itself ("I'm sorry for your loss", "I'm here to
       help you"), not "as a(n) ..., you ..." (talks *to* the user), and not "as a(n) ...,
       I'm sure / I think you ..." (the phrase belongs to the "you" clause: "I'm sure that, as
       a farmer, you're aware");
    2. it addresses no one: no second-person word (you, your, you're, ...) — "As a paramedic,
       you ..." talks *to* the user;
    3. it describes the speaker in the first person: "my/me/mine/myself" (but not "my
       suggestion", "my advice"), or "I/I'm/I've/I'd" not followed by what an assistant says
       of itself while helping ("I'd recommend", "I'm happy to", "I'm not a doctor", "I can");
    4. it carries the user's details: at least 2 distinct content words of the context (words
       of 3+ letters that are not stop words), or 1 when the claim is strong: an identity
       ("I'm a(n) ...", "As a(n) ..., I ...") or a possessive ("my knees", "me and the
       twins"; not "let me", "ask me").

    >>> ctx = "I'm a retired teacher, 71, living alone in Chicago. I have arthritis in my knees."
    >>> persona_sentence("I'm a retired teacher living in Chicago. Gardening is great.", ctx)
    "I'm a retired teacher living in Chicago."
    >>> persona_sentence("Sorry for your pain, but as a retired teacher, I'm unable to help.", ctx)
    "Sorry for your pain, but as a retired teacher, I'm unable to help."
    >>> persona_sentence("I'm your retired teacher from Chicago.", ctx)
    "I'm your retired teacher from Chicago."
    >>> persona_sentence("As a retired teacher with arthritis, you might enjoy gardening.", ctx)
    >>> persona_sentence("As a retired teacher, I'm sure you know Chicago's libraries.", ctx)
    >>> persona_sentence("I'm sorry your knees hurt; gardening is gentle on arthritis.", ctx)
    >>> persona_sentence("I'd recommend gentle gardening; it is easy on arthritic knees.", ctx)
    """
    if not context or not context.strip() or not response:
        return None
    source = set(_content_words(context))
    for match in _SENTENCE.finditer(response):
        sentence = match.group(0).strip()
        if _strong_claim(sentence, source):
            return sentence
        tokens = _tokens(sentence)
        if not tokens or any(t in _SECOND_PERSON for t in tokens):
            continue
        described, identity = _self_description(tokens)
        if not described:
            continue
        shared = {w for w in _content_words(sentence) if w in source}
        if len(shared) >= (1 if identity else 2):
            return sentence
    return None


def speaks_as_user(response: str | None, context: str | None) -> float | None:
    """1.0 when the response speaks as the user (:func:`persona_sentence` finds a sentence),
    0.0 when it does not, None without a context (nothing to adopt).

    >>> speaks_as_user("It's just me and the twins after a long day.", "Stay-at-home dad, twins")
    1.0
    >>> speaks_as_user("With twins at home, try a short walk after dinner.", "Stay-at-home dad, twins")
    0.0
    """
    if not context or not context.strip() or response is None:
        return None
    return 0.0 if persona_sentence(response, context) is None else 1.0


def _intercepts(y: Any, x: Any, weights: Any) -> Any:
    """Weighted least-squares intercept of ``y`` on ``x`` (columns) for each row of ``weights``."""
    import numpy as np

    design = np.column_stack([np.ones(len(y)), x])
    out = np.full(weights.shape[0], np.nan)
    for r, w in enumerate(weights):
        if w.sum() <= 0:
            continue
        xtw = design.T * w
        try:
            beta = np.linalg.solve(xtw @ design, xtw @ y)
        except np.linalg.LinAlgError:
            continue
        out[r] = beta[0]
    return out


def explain_gain(
    gain: Sequence[float | None],
    covariates: dict[str, Sequence[float | None]],
    *,
    clusters: Sequence[Any] | None = None,
    crossed: Sequence[Any] | None = None,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    cluster_kind: str = "users",
) -> dict[str, Any]:
    """Does a per-prompt gain survive adjustment for per-prompt covariate changes?

    ``gain``: ΔPMI per prompt (model − baseline); ``covariates``: name -> Δcovariate per prompt
    (e.g. ``{"copying": ..., "length": ...}``). Returns the gain's interval over every row that
    has one (``raw``); the adjustment uses the complete rows only (every covariate present;
    counted in ``rows_used``/``rows_dropped``): their gain (``raw_complete_rows``) and the
    intercept with each covariate alone and with all of them (``adjusted``: name -> ``{"mean",
    "low", "high", "n"}``, key ``"all"`` for all together); ``explained_by`` lists the
    covariates (or ``"all"``) whose adjustment moves a gain whose interval is above 0 to one
    that is not. With fewer than 5 complete rows per coefficient (or one cluster) nothing is
    adjusted and ``checked`` is False. Intervals use the cluster bootstrap of
    :mod:`mipo.evaluate.stats` (same clusters and seed as the raw gain).

    A gain that is twice the change in length, on 12 prompts (5 rows per coefficient at least):

    >>> length = [float(i) for i in range(1, 13)]
    >>> out = explain_gain([2 * x for x in length], {"length": length}, seed=0)
    >>> out["raw"]["low"] > 0, abs(out["adjusted"]["length"]["mean"]) < 1e-9, out["explained_by"]
    (True, True, ['length'])
    >>> explain_gain([2.0, 4.0, 6.0, 8.0], {"length": [1.0, 2.0, 3.0, 4.0]})["checked"]
    False
    """
    import numpy as np

    names = list(covariates)
    n = len(gain)
    keep = _complete_rows([gain, *(covariates[name] for name in names)])
    y = np.asarray([float(gain[i]) for i in keep])  # type: ignore[arg-type]
    x_all = np.asarray([[float(covariates[c][i]) for c in names] for i in keep])  # type: ignore[arg-type]
    first = None if clusters is None else [clusters[i] for i in keep]
    second = None if crossed is None else [crossed[i] for i in keep]
    ci = {
        "n_resamples": n_resamples,
        "confidence": confidence,
        "seed": seed,
        "cluster_kind": cluster_kind,
    }
    # The gain itself over every row that has one; the adjustment over the complete rows only,
    # compared with the gain of those same rows.
    raw = bootstrap_ci(list(gain), clusters=clusters, crossed=crossed, **ci)
    complete = bootstrap_ci(y.tolist(), clusters=first, crossed=second, **ci)
    out: dict[str, Any] = {
        "raw": raw,
        "raw_complete_rows": complete,
        "adjusted": {},
        "explained_by": [],
        "checked": False,
        "rows_used": len(keep),
        "rows_dropped": n - len(keep),
        "covariates": names,
    }
    # At least 5 complete rows per fitted coefficient, and more than one cluster.
    if len(keep) < 5 * (len(names) + 1) or complete["clusters"] < 2:
        return out
    out["checked"] = True
    weights = cluster_weights(len(keep), n_resamples, clusters=first, crossed=second, seed=seed)
    tail = (1 - confidence) / 2 * 100
    models = {name: [j] for j, name in enumerate(names)}
    if len(names) > 1:
        models["all"] = list(range(len(names)))
    for label, cols in models.items():
        adjusted = _adjusted_gain(y, x_all[:, cols], weights, tail)
        out["adjusted"][label] = adjusted
        if "n" in adjusted and complete["low"] > 0 and not adjusted["low"] > 0:
            out["explained_by"].append(label)
    return out


def _complete_rows(columns: Sequence[Sequence[float | None]]) -> list[int]:
    """The rows where every column has a finite value."""
    return [
        i
        for i in range(len(columns[0]))
        if all(c[i] is not None and math.isfinite(float(c[i])) for c in columns)  # type: ignore[arg-type]
    ]


def _adjusted_gain(y: Any, x: Any, weights: Any, tail: float) -> dict[str, Any]:
    """The intercept of ``y`` regressed on ``x`` (the gain adjusted for ``x``) with its
    percentile interval over the bootstrap ``weights``; NaNs where it cannot be fitted."""
    import numpy as np

    point = _intercepts(y, x, np.ones((1, len(y))))[0]
    replicates = _intercepts(y, x, weights)
    replicates = replicates[np.isfinite(replicates)]
    if not math.isfinite(point) or replicates.size == 0:
        return {"mean": math.nan, "low": math.nan, "high": math.nan}
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return {"mean": float(point), "low": float(low), "high": float(high), "n": len(y)}
