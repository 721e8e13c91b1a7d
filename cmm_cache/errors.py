"""One exception type for every mistake a user can make.

The CLI catches :class:`CmmError` and prints its message (and hint) as one
clear error, exit status 2; anything else is a bug and keeps its traceback.
"""


class CmmError(Exception):
    """A user-facing error: what went wrong, and what to do about it."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n{self.hint}"
