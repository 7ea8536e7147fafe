"""Build a folder next to its target, then move it into place: a failure leaves the old folder as it was."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_directory(target: str | os.PathLike, replaceable: Callable[[Path], bool]) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target``; on normal exit it becomes ``target``.

    ``target`` may be missing, an empty folder, or a folder for which ``replaceable(target)`` is True (one this
    library wrote before); anything else raises FileExistsError before any work is done, so no folder of the
    user's is ever deleted. The temporary folder sits in the same parent, so the final moves are renames on one
    file system: the old folder is renamed aside, the new one renamed in, then the old one removed. If the block
    raises, the temporary folder is removed and ``target`` is not touched.
    """
    target = Path(os.path.abspath(target))  # "out/.." names its parent: staging must sit beside the target
    cwd = Path.cwd()
    if target == cwd or target in cwd.parents:
        raise ValueError(
            f"save_directory {str(target)!r} holds the current working directory, which replacing the folder "
            "would delete; save into a subfolder (e.g. './pruned')"
        )
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"save_directory {str(target)!r} exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not replaceable(target):
        raise FileExistsError(
            f"save_directory {str(target)!r} is not empty and was not written by save_pruned; it would be replaced "
            "as a whole, so choose an empty or new folder (e.g. a subfolder of it)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_current_umask())  # mkdtemp makes it 0700
        _swap(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _swap(staging: Path, target: Path) -> None:
    if not target.exists():
        os.rename(staging, target)
        return
    backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.rmdir(backup)  # only the unique name is wanted
    os.rename(target, backup)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(backup, target)
        raise
    shutil.rmtree(backup, ignore_errors=True)
