"""One error hierarchy. A ``GraftError`` is the user's to fix: the CLI prints its
message (field, key, reason) on one line and exits 1. Anything else is a bug (exit 2)."""

from __future__ import annotations


class GraftError(Exception):
    """A user error. ``field`` is the recipe path it concerns (``rules[2].rename``)."""

    def __init__(self, field: str | None, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)

    def __reduce__(self):
        # Sweep jobs on a launcher plugin fail in another process: the error comes back pickled.
        return (type(self), (self.field, self.message))


class RecipeError(GraftError):
    """The recipe is malformed: unknown field, wrong type, missing value."""


class SourceError(GraftError):
    """A source checkpoint is missing, unreadable, or unsafe to load."""


class TargetError(GraftError):
    """The target model class cannot be imported, bound or built on the meta device."""


class PlanError(GraftError):
    """The recipe is well formed but the transfer it describes is invalid."""


class OutputError(GraftError):
    """The output cannot be written (exists without overwrite, bad extension...)."""


class DriftError(GraftError):
    """A reviewed plan no longer matches its sources, target or itself."""


class RankFailed(GraftError):
    """Under ``torchrun``: one rank failed, so every rank stops with its message."""

    def __init__(self, field: str | None, reason: str, rank: int, size: int):
        self.reason, self.rank, self.size = reason, rank, size
        super().__init__(field, f"{reason} (rank {rank} of {size})")

    def __reduce__(self):
        return (type(self), (self.field, self.reason, self.rank, self.size))
