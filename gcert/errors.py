"""User-facing errors: each one is a single line that names the problem and the fix.

The CLI prints ``str(error)`` and exits with ``error.exit_code``; nothing here carries a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable


class GcertError(Exception):
    """A problem with what the user asked for (exit code 2)."""

    exit_code = 2


class PluginError(GcertError):
    """A plugin registered something invalid or a name twice."""


class UnknownNameError(GcertError):
    """A mutation, certifier, generator or model name that nothing registered."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        self.kind, self.name, self.known = kind, name, sorted(known)
        listing = ", ".join(self.known) or "(none registered)"
        super().__init__(f"unknown {kind} {name!r}; known {kind}s: {listing}")


class InputError(GcertError):
    """Input data that cannot be read or does not fit the model."""


class ModelLoadError(GcertError):
    """A model file or object that cannot be loaded."""


class UnsupportedOperatorError(ModelLoadError):
    """A network contains an operator that a loader or certifier cannot handle."""

    def __init__(self, op: str, where: str, supported_by: Iterable[str] = (), hint: str = ""):
        self.op, self.where, self.supported_by, self.hint = op, where, sorted(supported_by), hint
        msg = f"unsupported operator {op!r} in {where}"
        if self.supported_by:
            msg += f"; certifiers that handle it: {', '.join(self.supported_by)}"
        if hint:
            msg += f"; {hint}"
        super().__init__(msg)


def one_line(exc: BaseException, with_type: bool = True) -> str:
    """The first line of an exception's message, for records and warnings that must stay one line."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    if not with_type:
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
