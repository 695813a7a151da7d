"""Typed exceptions of mipo, one hierarchy for the Rust engine and the Python stages.

Every message says what was wrong and how to fix it; the CLI prints it as one line and exits
non-zero. The engine's Rust error enum maps onto these classes by name (``rust/py/errors.rs``),
so this module is their single definition.
"""

from __future__ import annotations


class MipoError(Exception):
    """Base class of every error mipo raises on purpose."""

    exit_code = 2


# --- raised by the native engine (names must match EngineError::kind in rust/error.rs) ---------


class EngineError(MipoError):
    """An error from the native engine."""


class InvalidParameterError(EngineError, ValueError):
    """A parameter is out of range or inconsistent."""


class InvalidInputError(EngineError, ValueError):
    """The input data cannot be processed (empty, nulls, wrong type, malformed messages)."""


class TokenizerError(EngineError):
    """A tokenizer file is missing or invalid, or encoding failed."""


class TemplateError(EngineError):
    """A chat template is missing, does not compile, or raised while rendering."""


class TemplateLimitError(TemplateError):
    """Rendering a chat template cost more than its limits allow (``MIPO_TEMPLATE_FUEL``,
    ``MIPO_TEMPLATE_MAX_BYTES``)."""


class DerangementError(EngineError, ValueError):
    """No derangement satisfying the constraints exists."""


class EngineIOError(EngineError, OSError):
    """The engine could not read a file."""


# --- raised by the Python stages ---------------------------------------------------------------


class CorpusError(MipoError, ValueError):
    """The input corpus is missing, unreadable, or lacks the needed columns."""


class ConfigError(MipoError, ValueError):
    """An option has an invalid value, or options contradict each other."""


class ModelError(MipoError):
    """A model cannot be found, loaded, or trusted."""


class OutputError(MipoError):
    """The output directory cannot be written, is locked, or holds a different run."""


class GenerationError(MipoError):
    """Response generation failed."""


class PlanError(MipoError):
    """The plan stage could not run where it was sent (a Ray cluster unreachable, a task lost)."""


class DependencyError(MipoError, ImportError):
    """An optional dependency is missing; the message says what to install."""


class JudgeServerError(MipoError):
    """A judge server cannot be used: unreachable, refusing requests, or too slow."""


__all__ = [
    "ConfigError",
    "CorpusError",
    "DependencyError",
    "DerangementError",
    "EngineError",
    "EngineIOError",
    "GenerationError",
    "InvalidInputError",
    "InvalidParameterError",
    "JudgeServerError",
    "MipoError",
    "ModelError",
    "OutputError",
    "PlanError",
    "TemplateError",
    "TemplateLimitError",
    "TokenizerError",
]
