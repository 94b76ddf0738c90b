"""User-facing errors.

Every mistake a user can make (a bad spec key, an unknown family, an unwritable
output directory, a study directory made by another spec) ends as a
:class:`UserError`: the CLI prints its one-line message and exits with code 2.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input; ``str(err)`` is one line that names it."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class SpecError(UserError):
    """A study spec that does not validate; names the key, the value and what is allowed."""


class StoreError(UserError):
    """A study directory that cannot be used as asked (other spec, unwritable, corrupt)."""
