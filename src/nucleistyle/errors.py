"""The project's error type and the one-line messages made from exceptions.

:class:`NucleistyleError` is bad input or configuration; the command line prints its message as
``error: <message>`` and exits with status 2, the workflow stops before any job runs.
"""

from __future__ import annotations

__all__ = ["NucleistyleError", "first_line", "os_reason"]


class NucleistyleError(ValueError):
    """Bad input or configuration: the message is one line naming the file or config key.

    The command-line interface prints it as ``error: <message>`` and exits with status 2.
    """


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none."""
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def os_reason(exc: OSError) -> str:
    """Why an operating-system call failed, lower-cased to follow a colon ("permission
    denied")."""
    text = exc.strerror or str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]
