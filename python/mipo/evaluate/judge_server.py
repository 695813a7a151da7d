"""A judge behind an OpenAI-compatible server (``vllm serve``, or a hosted endpoint).

The paper's personalization metric: a larger instruct model rates each response 1-5 against
*each stated preference* of the user, and the ratings are averaged. Here the user's context is
split into its sentences (each a stated situation, constraint or preference), every (response,
preference) pair is one chat request to ``POST {url}/chat/completions``, and a response's score
is the mean of its parsed ratings.

- Requests run with bounded concurrency (threads); 429 and 5xx answers and timeouts are retried
  with exponential backoff (``Retry-After`` honoured); a server that refuses the connection is a
  clear error naming the URL at once; other 4xx answers are errors with the server's message.
- Parsing is strict: the reply must be one digit 1-5, optionally with a ``Rating:``/``Score:``
  label and punctuation around it. Anything else is *unparsed*: counted per response and in the
  report, never turned into a score.
- The API key comes from an environment variable (``MIPO_JUDGE_API_KEY``, else
  ``OPENAI_API_KEY``), never from the command line, and never appears in reports or errors.

>>> parse_strict("4")
4
>>> parse_strict("Rating: 5.") , parse_strict("I'd say 4 or 5") , parse_strict("10")
(5, None, None)
>>> split_preferences("I am vegan. I cook for four!  Keep it short")
['I am vegan.', 'I cook for four!', 'Keep it short']
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import polars as pl

from mipo.errors import ConfigError, JudgeServerError
from mipo.progress import track

__all__ = [
    "JudgeServerError",
    "ServerJudge",
    "parse_strict",
    "split_preferences",
]

API_KEY_ENV = ("MIPO_JUDGE_API_KEY", "OPENAI_API_KEY")

PREFERENCE_INSTRUCTIONS = (
    "You are a strict evaluator of personalized answers. You get one thing a user said about "
    "themselves (a situation, constraint or preference), their question, and an assistant's "
    "response. Rate from 1 to 5 how well the response respects that statement while answering "
    "the question: 1 = ignores or contradicts it, 3 = neutral or generic, 5 = clearly tailored "
    "to it. Reply with a single digit from 1 to 5 and nothing else."
)

_STRICT = re.compile(r"^\W*(?:(?:rating|score)\W*)?([1-5])\W*$", re.IGNORECASE)
_SENTENCE = re.compile(r"[^.!?\n]+[.!?]*")


def parse_strict(text: str | None) -> int | None:
    """The rating of a judge reply that is exactly one digit 1-5 (with an optional
    ``Rating:``/``Score:`` label and punctuation), else None."""
    if text is None:
        return None
    match = _STRICT.match(text.strip())
    return int(match.group(1)) if match else None


def split_preferences(context: str | None) -> list[str]:
    """The sentences of a user's context, each one stated preference (empty ones dropped)."""
    if not context:
        return []
    return [s.strip() for s in _SENTENCE.findall(context) if s.strip(" .!?\t")]


@dataclass
class ServerJudge:
    """Rate responses with ``model`` served at ``url`` (the OpenAI API base, e.g.
    ``http://127.0.0.1:8000/v1``).

    >>> # needs an OpenAI-compatible server: see tests/test_judge_server.py
    >>> judge = ServerJudge("http://127.0.0.1:8000/v1", "Qwen/Qwen2.5-7B-Instruct")  # doctest: +SKIP
    >>> judge.score(["I am vegan."], ["Dinner?"], ["Lentil curry."])  # doctest: +SKIP
    """

    url: str
    """The API base URL (``.../v1``); requests go to ``{url}/chat/completions``."""
    model: str
    """The served model's name, as the server knows it."""
    concurrency: int = 8
    """Requests in flight at once."""
    timeout_s: float = 60.0
    """Seconds one request may take before it is retried."""
    retries: int = 4
    """Retries of a request after a 429/5xx answer or a timeout."""
    backoff_s: float = 1.0
    """First wait before a retry; doubled after each."""
    max_tokens: int = 4
    """Tokens the judge may answer with (a digit needs one or two)."""

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"--judge-url must start with http:// or https://, got {self.url!r}")
        if not self.model:
            raise ConfigError(
                "--judge-model is required with --judge-url (the served model's name)"
            )
        for name in ("concurrency", "retries", "max_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name == "retries" else 1):
                raise ConfigError(f"judge {name} must be a positive integer, got {value!r}")
        if not self.timeout_s > 0:
            raise ConfigError(f"judge_timeout_s must be > 0 seconds, got {self.timeout_s!r}")
        self.url = self.url.rstrip("/")
        self._key = next((os.environ[k] for k in API_KEY_ENV if os.environ.get(k)), None)
        self._calls = 0
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"{self.url}/chat/completions"

    def _request(self, messages: list[dict[str, str]]) -> str:
        body = json.dumps(
            {
                "model": self.model,
                "messages": messages,
                "max_tokens": self.max_tokens,
                "temperature": 0,
            }
        ).encode()
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        wait = self.backoff_s
        last = ""
        for attempt in range(self.retries + 1):
            with self._lock:
                self._calls += 1
            request = urllib.request.Request(self.endpoint, data=body, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                    data = json.loads(answer.read().decode())
                return str(data["choices"][0]["message"]["content"] or "")
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode(errors="replace")[:300]
                if exc.code != 429 and exc.code < 500:
                    raise JudgeServerError(
                        f"judge server {self.endpoint} refused the request (HTTP {exc.code}: "
                        f"{detail.strip() or exc.reason}); check --judge-model and the key in "
                        f"${API_KEY_ENV[0]}"
                    ) from None
                last = f"HTTP {exc.code}"
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                if retry_after and retry_after.strip().isdigit():
                    wait = max(wait, float(retry_after))
            except (TimeoutError, urllib.error.URLError, ConnectionError) as exc:
                reason = getattr(exc, "reason", exc)
                if isinstance(reason, ConnectionRefusedError | OSError) and not isinstance(
                    reason, TimeoutError
                ):
                    raise JudgeServerError(
                        f"judge server {self.endpoint} is unreachable ({reason}): start it "
                        "(e.g. `vllm serve MODEL`) or fix --judge-url"
                    ) from None
                last = f"no answer within {self.timeout_s:g} s"
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                raise JudgeServerError(
                    f"judge server {self.endpoint} sent an answer that is not an OpenAI chat "
                    f"completion ({type(exc).__name__}); is --judge-url the API base (…/v1)?"
                ) from None
            if attempt < self.retries:
                time.sleep(wait)
                wait *= 2
        raise JudgeServerError(
            f"judge server {self.endpoint} failed {self.retries + 1} times (last: {last}); "
            "raise --set judge_timeout_s=S, lower --set judge_concurrency=N, or check the server"
        )

    def _messages(self, preference: str, question: str, response: str) -> list[dict[str, str]]:
        body = (
            f"User statement:\n{preference}\n\nQuestion:\n{question.strip()}\n\n"
            f"Response:\n{response.strip()}\n\nRating (1-5):"
        )
        return [
            {"role": "system", "content": PREFERENCE_INSTRUCTIONS},
            {"role": "user", "content": body},
        ]

    def score(
        self,
        contexts: Sequence[str | None],
        questions: Sequence[str | None],
        responses: Sequence[str | None],
        *,
        progress: str | None = None,
    ) -> pl.DataFrame:
        """Per response: ``score`` (mean rating over its context's preferences, Float64, null
        when none parsed), ``ratings`` (parsed ones), ``preferences`` and ``unparsed`` (counts).
        A response whose context states nothing is rated against "(none stated)".
        ``progress``: show the ratings' progress (:mod:`mipo.progress`) under this name."""
        if not len(contexts) == len(questions) == len(responses):
            raise ConfigError("contexts, questions and responses must have equal lengths")
        jobs: list[tuple[int, list[dict[str, str]]]] = []
        counts = []
        for i, (c, q, r) in enumerate(zip(contexts, questions, responses, strict=True)):
            preferences = split_preferences(c) or ["(none stated)"]
            counts.append(len(preferences))
            jobs += [(i, self._messages(p, q or "", r or "")) for p in preferences]
        replies: list[str] = []
        with (
            track(progress or "", total=len(jobs), unit="rating", enabled=bool(progress)) as task,
            ThreadPoolExecutor(max_workers=self.concurrency) as pool,
        ):
            for reply in pool.map(lambda job: self._request(job[1]), jobs):
                replies.append(reply)
                task.advance()
        ratings: list[list[int]] = [[] for _ in responses]
        unparsed = [0] * len(responses)
        for (i, _), reply in zip(jobs, replies, strict=True):
            value = parse_strict(reply)
            if value is None:
                unparsed[i] += 1
            else:
                ratings[i].append(value)
        return pl.DataFrame(
            {
                "score": [sum(r) / len(r) if r else None for r in ratings],
                "ratings": ratings,
                "preferences": counts,
                "unparsed": unparsed,
            },
            schema={
                "score": pl.Float64,
                "ratings": pl.List(pl.Int64),
                "preferences": pl.Int64,
                "unparsed": pl.Int64,
            },
        )

    @property
    def calls(self) -> int:
        """HTTP requests made so far (retries included)."""
        return self._calls

    def describe(self) -> dict[str, Any]:
        """What the report says about the judge (never the key)."""
        return {"url": self.url, "model": self.model, "api_key": "set" if self._key else "none"}
