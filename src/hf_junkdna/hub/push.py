"""``push_pruned_to_hub``: ``save_pruned`` into a temporary folder, then one Hub commit.

The commit is made with ``HfApi.create_commit`` on the operations ``upload_folder`` would build (one add per
file, plus deletes of files this library owns that the new save no longer has, e.g. an old shard). Calling
``create_commit`` directly keeps it one commit even where ``upload_folder`` would stream a large folder in
several commits (with hf_xet), so a repo never shows new weights with an old mask. The client compares each
file's hash with the repo's first: an unchanged file is not uploaded, and an unchanged model makes no commit.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import struct
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torch import nn

from ..masks import MaskSet
from .errors import HubPushError
from .layout import OWNED_PATTERNS
from .save import save_pruned

logger = logging.getLogger(__name__)


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP client's connection errors (huggingface_hub 2.x uses httpx2, 1.x httpx): not OSErrors."""
    errors = []
    for module in ("httpx2", "httpx"):
        try:
            errors.append(__import__(module).HTTPError)
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def _status(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def _push_error(error: BaseException, repo_id: str, revision: str, step: str) -> HubPushError:
    return HubPushError(
        f"pushing the pruned model to {repo_id!r} (revision {revision!r}) failed while trying to {step}: {error}. "
        "The local model and files are untouched and the repo has no partial commit; push again to retry (files "
        "the server already has are not sent again)",
        status_code=_status(error),
    )


def _known_tokens(token: str | bool | None) -> list[str]:
    """Every token this push may send: the argument, the logged-in one (token file, Colab vault) and the env's.

    All are kept out of the files, the card's command line and error messages, whichever one the client uses.
    """
    from huggingface_hub import get_token

    candidates = [token, get_token(), os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")]
    found: list[str] = []
    for candidate in candidates:
        if isinstance(candidate, str) and candidate.strip() and candidate.strip() not in found:
            found.append(candidate.strip())
    return found


def _check_no_secret(folder: Path, secrets: Iterable[str | None]) -> None:
    """Refuse to upload a file that contains the token (the message names the file, never the token).

    Weight files are scanned in their header only (the rest is tensor data), so this stays cheap for big models.
    """
    needles = [secret.encode() for secret in secrets if secret]
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        if path.name.endswith(".safetensors"):
            with open(path, "rb") as handle:
                (length,) = struct.unpack("<Q", handle.read(8))
                content = handle.read(length)
        else:
            content = path.read_bytes()
        if any(needle in content for needle in needles):
            raise HubPushError(f"refusing to upload {path.name}: it contains the access token")


def _operations(api: Any, repo_id: str, revision: str, folder: Path) -> list:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    files = sorted(p for p in folder.rglob("*") if p.is_file())
    local = {p.relative_to(folder).as_posix(): p for p in files}
    operations: list = [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in local.items()
    ]
    remote = api.list_repo_files(repo_id, revision=revision)
    stale = [
        name
        for name in remote
        if name not in local and "/" not in name and any(fnmatch.fnmatch(name, p) for p in OWNED_PATTERNS)
    ]
    operations += [CommitOperationDelete(path_in_repo=name) for name in stale]
    return operations


def push_pruned_to_hub(
    model: nn.Module,
    repo_id: str,
    masks: MaskSet,
    *,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    **save_kwargs: Any,
):
    """Save a pruned model with ``save_pruned`` and push it to ``repo_id`` in one commit; returns the CommitInfo.

    The model is saved and checked (mask, regime, results, no token in any file) before the Hub is touched, so a
    refused call creates no repo or branch. The repo is created if needed (``private`` applies only then); ``revision`` is a branch, created from the
    default branch if missing. ``token`` defaults to the logged-in/``HF_TOKEN`` token; it is only ever sent as
    an HTTP header: never written into a file, the card, a log line or an error message. Everything in
    ``save_kwargs`` (results, regime, tokenizer, task, difficulty, command, compressed, ...) goes to
    ``save_pruned``. A failed push raises HubPushError (the client's error is its ``__cause__``); the commit is
    atomic, so the repo is unchanged, and pushing again uploads only what the server does not have yet.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token)  # created at call time: it picks up the current endpoint
    revision_name = revision or "main"
    secrets = _known_tokens(token)
    step = "look up the user's namespace"
    try:
        if "/" not in repo_id:  # the card names the full repo id (a read-only request: nothing is created yet)
            repo_id = f"{api.whoami()['name']}/{repo_id}"
    except (HfHubHTTPError, OSError, *_transport_errors()) as error:
        raise _push_error(error, repo_id, revision_name, step) from error
    with tempfile.TemporaryDirectory(prefix="hf_junkdna-push-") as tmp:
        # Everything that can refuse the input (mask, regime, results, a token in a file) runs before the repo or
        # branch is created: a refused call leaves nothing behind on the Hub.
        folder = Path(tmp) / repo_id.split("/")[-1]
        save_pruned(model, folder, masks, _secrets=secrets, _repo_id=repo_id, **save_kwargs)
        _check_no_secret(folder, secrets)
        step = "create the repo"
        try:
            repo_id = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model").repo_id
            if revision is not None and not revision.startswith("refs/pr/"):
                step = f"create branch {revision!r}"
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            step = "upload and commit"
            operations = _operations(api, repo_id, revision_name, folder)
            info = api.create_commit(
                repo_id,
                operations=operations,
                commit_message=commit_message or "Upload pruned model with hf_junkdna",
                commit_description=commit_description,
                revision=revision,
                create_pr=create_pr,
            )
        except (HfHubHTTPError, OSError, *_transport_errors()) as error:
            raise _push_error(error, repo_id, revision_name, step) from error
    logger.info("pushed pruned model to %s (commit %s)", repo_id, info.oid)
    return info
