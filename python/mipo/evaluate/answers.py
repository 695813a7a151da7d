"""Answer extraction for math (GSM8K ``#### N``, last-number fallback) and multiple choice.

>>> extract_number("So she has 3 + 4 = 7 apples.\\n#### 7")
'7'
>>> extract_number("The total is $1,250.50.")
'1250.5'
>>> math_correct("... the answer is 18.", "Janet sells 16 - 3 - 4 = 9 eggs ... #### 18")
True
>>> choice_index("B", ["red", "blue", "green"])
1
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from mipo.errors import InvalidInputError

__all__ = ["choice_index", "extract_number", "math_correct", "normalize_number"]

# A number as people write it: optional sign, digits with thousands commas, optional decimals.
_NUMBER = re.compile(r"-?\$?\s?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_FINAL = re.compile(r"####\s*(.+)")


def normalize_number(text: str) -> str | None:
    """Canonical form of a written number (``"1,250.50"`` -> ``"1250.5"``), or None."""
    cleaned = text.replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if value == value.to_integral_value():
        return str(value.quantize(Decimal(1)))
    return format(value.normalize(), "f")


def extract_number(text: str | None) -> str | None:
    """The final answer of a worked solution: the number after ``####`` if there is one, else the
    last number in the text; normalized, or None when the text holds no number."""
    if not text:
        return None
    final = _FINAL.search(text)
    if final:
        numbers = _NUMBER.findall(final.group(1))
        if numbers:
            return normalize_number(numbers[0])
    numbers = _NUMBER.findall(text)
    return normalize_number(numbers[-1]) if numbers else None


def math_correct(prediction: str | None, gold: str | int | float) -> bool:
    """Whether the prediction's extracted answer equals the gold answer's."""
    gold_number = extract_number(str(gold))
    if gold_number is None:
        raise InvalidInputError(f"gold answer {gold!r} holds no number")
    return extract_number(prediction) == gold_number


def choice_index(answer: Any, choices: Sequence[str]) -> int:
    """The index of the correct choice from an answer given as an index, a letter or the text."""
    if isinstance(answer, bool):
        raise InvalidInputError(f"answer {answer!r} is not an index, a letter or a choice")
    if isinstance(answer, int):
        index = answer
    else:
        text = str(answer).strip()
        stripped = [str(c).strip() for c in choices]
        if text in stripped:
            index = stripped.index(text)
        elif len(text) == 1 and text.isalpha():
            index = ord(text.upper()) - ord("A")
        elif text.lstrip("-").isdigit():
            index = int(text)
        else:
            raise InvalidInputError(
                f"answer {answer!r} is not an index, a letter or one of the choices {list(choices)}"
            )
    if not 0 <= index < len(choices):
        raise InvalidInputError(f"answer {answer!r} is out of range for {len(choices)} choices")
    return index
