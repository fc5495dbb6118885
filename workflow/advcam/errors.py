"""The errors a user can cause, under one base.

:class:`AdvcamError` is what ``advcam <stage>`` prints as one line (``advcam <stage>: error: …``, exit status 2):
a bad file, key or value, named in the message. Anything else that escapes a stage is a bug, in advcam or in a
library it calls, and shows its traceback. :class:`InputError` is also a ``ValueError``, so callers of the
library who catch ``ValueError`` for a bad argument keep working.
"""
from __future__ import annotations

__all__ = ["AdvcamError", "InputError"]


class AdvcamError(Exception):
    """Base of every error a user's input can cause: a file, key or value at fault, named in the message."""


class InputError(AdvcamError, ValueError):
    """A value, file content or argument that advcam cannot use; the message names it."""
