"""How a user's context enters the prompt: one explicit, recorded choice (``--context-format``).

A personalization corpus gives each prompt a *context* (what the user said about themselves,
usually in their own first-person words: "I'm a retired teacher, 71, ...") and a *question*.
How the two are put into chat messages changes what the model does with the context:

- ``user-turn`` (the default): the context opens the user's own turn, then a blank line, then
  the question — the user speaking about themselves, as people write to an assistant.
- ``about-user``: a system message that frames the context as what *the user* said about
  themselves ("The user you are helping told you this about themselves: ... Answer them as
  "you"; these are their details, not yours"), then the question as the user turn.
- ``raw-system``: the context verbatim as the system message (mipo's format before 0.1). Small
  instruct models read a system message as their own persona, and a first-person context there
  makes them speak *as* the user ("I'm a retired teacher, 71, ...") instead of *to* them.
- ``paper``: the personalization prompt of the paper (arXiv 2603.19294), one user turn: "Give me
  short 2-3 sentence answers.", the question, then "Please respect the following requirements
  made by the user: " and the context. *Reconstructed* from the two fragments of it that issue 22
  quotes ("Give me short 2-3 sentence answers …" and "Please respect the following requirements
  made by the user: …"), not copied from the paper's released code: the order of the parts, the
  blank lines and any words between the fragments are guesses.
- any text holding ``{context}``: a template of your own. With ``{question}`` too, the text is
  the first user turn; without it, the text is a system message and the question stays the user
  turn. Only those two placeholders are replaced; other braces are kept as they are.

The measured choice of the default (persona adoption, fluency and same-question PMI of the base
model under each format) is in ``benches/RESULTS.md`` (*Prompt formats*, written by
``benches/reproduce.py --formats``). The same format builds the chosen prompt, the rejected
prompts (context-drop drops the context, context-swap puts another user's context in the same
place), and the evaluation prompts and contrasts; ``run.json`` and ``metrics.json`` record it.

With a messages corpus (``columns.messages``), the system messages are the context: they are
reformatted the same way (``raw-system`` leaves them as they are).

>>> fmt = PromptFormat("user-turn")
>>> fmt.messages("I'm vegan.", [{"role": "user", "content": "Dinner ideas?"}])
[{'role': 'user', 'content': "I'm vegan.\\n\\nDinner ideas?"}]
>>> print(PromptFormat("paper").messages("No jargon.", [{"role": "user", "content": "Why?"}])[0]["content"])
Give me short 2-3 sentence answers.
<BLANKLINE>
Why?
<BLANKLINE>
Please respect the following requirements made by the user: No jargon.
>>> PromptFormat("Requirements: {context}").messages("be brief", [{"role": "user", "content": "Hi"}])[0]
{'role': 'system', 'content': 'Requirements: be brief'}
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mipo.errors import ConfigError

if TYPE_CHECKING:
    import polars as pl

__all__ = ["CONTEXT_FORMATS", "DEFAULT_CONTEXT_FORMAT", "PromptFormat", "question_start"]

CONTEXT_FORMATS: dict[str, str] = {
    "user-turn": "{context}\n\n{question}",
    "about-user": (
        "The user you are helping told you this about themselves:\n\n{context}\n\n"
        'Use it to tailor your answer to them, and speak to them as "you": these are their '
        "details, not yours."
    ),
    "raw-system": "{context}",
    # Reconstructed from the fragments issue 22 quotes, not copied from the released code.
    "paper": (
        "Give me short 2-3 sentence answers.\n\n{question}\n\n"
        "Please respect the following requirements made by the user: {context}"
    ),
}
"""The named formats and their templates (see the module docstring)."""

DEFAULT_CONTEXT_FORMAT = "user-turn"
"""Chosen from the base model's numbers under each format (``benches/RESULTS.md``)."""

_PLACEHOLDER = re.compile(r"(\{context\}|\{question\})")


@dataclass(frozen=True)
class PromptFormat:
    """One way of putting a context and a question into chat messages.

    ``spec``: a name of :data:`CONTEXT_FORMATS` or a template holding ``{context}``.
    """

    spec: str = DEFAULT_CONTEXT_FORMAT

    def __post_init__(self) -> None:
        if not isinstance(self.spec, str) or not self.spec.strip():
            raise ConfigError(
                f"context format must be one of {', '.join(CONTEXT_FORMATS)} or a template "
                f"holding {{context}}, got {self.spec!r}"
            )
        if self.spec not in CONTEXT_FORMATS and "{context}" not in self.spec:
            raise ConfigError(
                f"context format {self.spec!r} is neither a format name "
                f"({', '.join(CONTEXT_FORMATS)}) nor a template holding {{context}}: "
                "pass a name, or a text with {context} (and {question} to make it the user turn)"
            )

    @property
    def template(self) -> str:
        """The template text (the named format's, or the spec itself)."""
        return CONTEXT_FORMATS.get(self.spec, self.spec)

    @property
    def in_user_turn(self) -> bool:
        """Whether the context goes into the user's turn (else into a system message)."""
        return "{question}" in self.template

    def _fill(self, context: str, question: str) -> str:
        parts = _PLACEHOLDER.split(self.template)
        values = {"{context}": context, "{question}": question}
        return "".join(values.get(p, p) for p in parts)

    def messages(
        self, context: str | None, nocontext: list[dict[str, str]]
    ) -> list[dict[str, str]]:
        """The prompt messages for ``context`` and the context-free messages ``nocontext``
        (usually one user turn). A blank context gives ``nocontext`` unchanged."""
        bare = [dict(m) for m in nocontext]
        if context is None or not context.strip():
            return bare
        if not self.in_user_turn:
            return [{"role": "system", "content": self._fill(context, "")}, *bare]
        if bare and bare[0].get("role") == "user":
            first = {"role": "user", "content": self._fill(context, bare[0].get("content") or "")}
            return [first, *bare[1:]]
        # No user turn to open (an assistant-first conversation): the context stands alone.
        return [{"role": "user", "content": self._fill(context, "").strip()}, *bare]

    def messages_expr(self, context: pl.Expr, nocontext: pl.Expr, message_dtype: Any) -> pl.Expr:
        """:meth:`messages` as a Polars expression over a context column (String) and a
        context-free messages column (``message_dtype``: a List of {role, content})."""
        import polars as pl

        blank = context.is_null() | (context.str.strip_chars() == "")
        inner = message_dtype.inner
        if not self.in_user_turn:
            system = pl.struct(
                pl.lit("system").alias("role"),
                self._fill_expr(context, pl.lit("")).alias("content"),
            ).cast(inner)
            with_context = pl.concat_list([system, nocontext])
        else:
            first = nocontext.list.first()
            role = first.struct.field("role")
            content = first.struct.field("content").fill_null("")
            opened = pl.struct(
                pl.lit("user").alias("role"), self._fill_expr(context, content).alias("content")
            ).cast(inner)
            alone = pl.struct(
                pl.lit("user").alias("role"),
                self._fill_expr(context, pl.lit("")).str.strip_chars().alias("content"),
            ).cast(inner)
            with_context = (
                pl.when(role == "user")
                .then(pl.concat_list([opened, nocontext.list.slice(1)]))
                .otherwise(pl.concat_list([alone, nocontext]))
            )
        return pl.when(blank).then(nocontext).otherwise(with_context).cast(message_dtype)

    def _fill_expr(self, context: pl.Expr, question: pl.Expr) -> pl.Expr:
        import polars as pl

        pieces = [
            context.fill_null("")
            if p == "{context}"
            else question
            if p == "{question}"
            else pl.lit(p)
            for p in _PLACEHOLDER.split(self.template)
            if p
        ]
        return pl.concat_str(pieces)


def question_start(turn: str, question: str) -> int | None:
    """Where ``question`` starts in ``turn``, a user turn rendered from it (alone, or with a
    context by a format holding ``{question}``); None when the turn does not hold it.

    The turn itself, or the question's only occurrence. Where the context repeats the question,
    the occurrence a named format anchors: after the fixed text a format opens with (``paper``),
    else at the end (``user-turn``, and any template ending in ``{question}``); else the first.

    >>> question_start("I'm 9.\\n\\nWhy? Say it.", "Why? Say it.")
    8
    >>> turn = PromptFormat("paper").messages("Ask: Why?", [{"role": "user", "content": "Why?"}])
    >>> question_start(turn[0]["content"], "Why?") == turn[0]["content"].index("Why?")
    True
    """
    if turn == question:
        return 0
    first = turn.find(question)
    if first < 0 or first == turn.rfind(question):
        return None if first < 0 else first
    templates = [_PLACEHOLDER.split(t) for t in CONTEXT_FORMATS.values()]
    for parts in templates:  # literal, placeholder, literal, ...: a fixed opening first
        if len(parts) > 1 and parts[1] == "{question}" and turn.startswith(parts[0] + question):
            return len(parts[0])
    for parts in templates:
        if len(parts) > 1 and parts[-2] == "{question}" and turn.endswith(question + parts[-1]):
            return len(turn) - len(parts[-1]) - len(question)
    return first
