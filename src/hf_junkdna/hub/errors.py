"""Errors of the Hub layer. Each names the checkpoint (repo id or folder) and what to do; none carries a token."""

from __future__ import annotations


class PrunedCheckpointError(ValueError):
    """A folder or repo cannot be used as a pruned checkpoint; the message says which file and why."""


class CheckpointNotFoundError(PrunedCheckpointError, FileNotFoundError):
    """The repo (or local folder) does not exist, or the token cannot see it."""


class RevisionNotFoundError(PrunedCheckpointError, LookupError):
    """The repo exists but the branch, tag or commit does not."""


class MaskFileError(PrunedCheckpointError):
    """The mask sidecar is missing or unreadable (truncated, not a mask file)."""


class CorruptCheckpointError(PrunedCheckpointError):
    """A weight file is truncated or inconsistent with its index or config."""


class HubPushError(RuntimeError):
    """A push to the Hub failed. The local files are untouched; ``__cause__`` holds the client's error.

    A Hub commit is atomic, so a push that failed at any step left the repo as it was; running the push again
    uploads only what the server does not already have.
    """

    def __init__(self, message: str, status_code: int | None = None):
        super().__init__(message)
        self.status_code = status_code
