"""A results store for sweeps: one record per finished cell, durable across SIGKILL, tied to one config.

Layout of an output directory::

    sweep.json     manifest, written once, atomically: format, config and its fingerprint
    cells.jsonl    one JSON line per finished cell, appended and fsync'ed before the cell counts as done

A cell is finished exactly when its line is complete in ``cells.jsonl``. A run killed in the middle of an
append leaves at most one partial last line; opening the store drops it (so that cell is recomputed). The
manifest pins the config that produced the records: opening a directory with another config raises
:class:`StoreMismatchError` naming the keys that differ (use another directory, or ``overwrite=True``), so
old cells are never silently reused for a changed experiment.

Only one process writes (the main process of a distributed run); the others may open the store read-only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT = "hf_junkdna.sweep"
FORMAT_VERSION = 1
MANIFEST_FILE = "sweep.json"
RECORDS_FILE = "cells.jsonl"


class StoreMismatchError(ValueError):
    """The output directory holds results of a different configuration (or is not a results store)."""


# ------------------------------------------------------------------------------------------- atomic files
def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems cannot open directories; the rename still stands
        handle = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never a mix.

    A temporary file in the same directory is written, flushed and fsync'ed, renamed over ``path``
    (``os.replace``), and the directory is fsync'ed so the rename survives a crash.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are for others to read too
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _fsync_directory(path.parent)


def to_json(data: Any, indent: int | None = 2) -> str:
    """JSON with NaN/inf written as null (strict JSON readers reject NaN)."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, Mapping):
            return {str(key): clean(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(item) for item in value]
        return value

    return json.dumps(clean(data), indent=indent, sort_keys=False, allow_nan=False, default=str)


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, to_json(data) + "\n")


def config_fingerprint(config: Mapping[str, Any]) -> str:
    """A short stable hash of a JSON-serialisable config (key order does not matter)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- cells
@dataclass(frozen=True, order=True)
class CellKey:
    """One point of a sweep: a pruning method and pattern at a sparsity, evaluated in one difficulty setting."""

    method: str
    pattern: str
    sparsity: float
    setting: str

    def __post_init__(self):
        object.__setattr__(self, "sparsity", round(float(self.sparsity), 6))

    @property
    def id(self) -> str:
        return f"{self.method}/{self.pattern}/{self.sparsity:g}/{self.setting}"

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "pattern": self.pattern, "sparsity": self.sparsity, "setting": self.setting}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CellKey:
        return cls(data["method"], data["pattern"], data["sparsity"], data["setting"])


# ---------------------------------------------------------------------------------------------- store
class ResultsStore:
    """Finished cells of one sweep configuration, in ``directory``.

    ``config`` is what the cells' results depend on (model, data, prompts, generation, calibration...); the
    sweep grid itself (methods, sparsities, settings) is better left out, so that extending a sweep reuses the
    cells it already has. ``readonly`` stores never write (other ranks of a distributed run); ``overwrite``
    discards the records of a different configuration instead of raising.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        config: Mapping[str, Any],
        *,
        readonly: bool = False,
        overwrite: bool = False,
    ):
        self.directory = Path(directory)
        self.config = json.loads(json.dumps(dict(config), default=str))  # as it will read back from disk
        self.fingerprint = config_fingerprint(self.config)
        self.readonly = readonly
        self.manifest_path = self.directory / MANIFEST_FILE
        self.records_path = self.directory / RECORDS_FILE
        self._records: dict[CellKey, dict[str, Any]] = {}
        self._open(overwrite)

    # ------------------------------------------------------------------------------------------ opening
    def _open(self, overwrite: bool) -> None:
        manifest = self._read_manifest()
        if manifest is None and self.records_path.exists():
            if not overwrite:
                raise StoreMismatchError(
                    f"{str(self.records_path)!r} exists without its manifest {MANIFEST_FILE}; this directory was not "
                    "written by a sweep (or its manifest was deleted): use another output directory or overwrite it"
                )
            if not self.readonly:
                self._discard()  # records of unknown provenance: never mixed with this configuration's
        if manifest is not None and manifest.get("fingerprint") != self.fingerprint:
            if not overwrite:
                raise StoreMismatchError(self._mismatch_message(manifest))
            if not self.readonly:
                self._discard()
            manifest = None
        if self.readonly:
            if manifest is None:
                raise StoreMismatchError(f"no results store in {str(self.directory)!r} (missing {MANIFEST_FILE})")
        elif manifest is None:
            atomic_write_json(
                self.manifest_path,
                {
                    "format": FORMAT,
                    "format_version": FORMAT_VERSION,
                    "fingerprint": self.fingerprint,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "config": self.config,
                },
            )
        self._load_records()

    def _read_manifest(self) -> dict[str, Any] | None:
        if not self.manifest_path.exists():
            return None
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise StoreMismatchError(f"cannot read {str(self.manifest_path)!r}: {error}") from error
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise StoreMismatchError(f"{str(self.manifest_path)!r} is not a {FORMAT} manifest")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise StoreMismatchError(
                f"{str(self.manifest_path)!r} has format_version {manifest.get('format_version')!r}; this version of "
                f"hf_junkdna reads {FORMAT_VERSION}"
            )
        return manifest

    def _mismatch_message(self, manifest: Mapping[str, Any]) -> str:
        old = manifest.get("config") or {}
        keys = sorted(set(old) | set(self.config))
        changed = [key for key in keys if old.get(key, "<absent>") != self.config.get(key, "<absent>")]
        details = "; ".join(
            f"{key}: {old.get(key, '<absent>')!r} -> {self.config.get(key, '<absent>')!r}" for key in changed[:8]
        )
        return (
            f"{str(self.directory)!r} holds results of a different configuration (fingerprint "
            f"{manifest.get('fingerprint')} != {self.fingerprint}; changed: {details or 'unknown'}). Its finished "
            "cells cannot be reused: choose another output directory, or overwrite it (--overwrite_output_dir)"
        )

    def _discard(self) -> None:
        for path in (self.records_path, self.manifest_path):
            if path.exists():
                path.unlink()
        _fsync_directory(self.directory)

    def _load_records(self) -> None:
        if not self.records_path.exists():
            return
        data = self.records_path.read_bytes()
        complete = data.rfind(b"\n") + 1  # a line counts only once its newline is written
        if complete < len(data) and not self.readonly:
            # the tail of an append interrupted by a crash: drop it so the next append starts a clean line
            with open(self.records_path, "r+b") as stream:
                stream.truncate(complete)
                stream.flush()
                os.fsync(stream.fileno())
        for number, line in enumerate(data[:complete].splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                key = CellKey.from_dict(record["key"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                raise StoreMismatchError(
                    f"{str(self.records_path)!r} line {number} is not a cell record: {error}"
                ) from error
            if record.get("fingerprint") != self.fingerprint:
                raise StoreMismatchError(
                    f"{str(self.records_path)!r} line {number} ({key.id}) has fingerprint "
                    f"{record.get('fingerprint')!r}, not the manifest's {self.fingerprint}"
                )
            self._records[key] = record  # a later record of the same cell wins

    # ------------------------------------------------------------------------------------------- access
    def __contains__(self, key: object) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: CellKey) -> dict[str, Any] | None:
        return self._records.get(key)

    def records(self) -> list[dict[str, Any]]:
        return list(self._records.values())

    def finished(self) -> set[CellKey]:
        return set(self._records)

    def pending(self, keys: Iterable[CellKey]) -> list[CellKey]:
        return [key for key in keys if key not in self._records]

    def add(self, key: CellKey, metrics: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
        """Append the record of a finished cell and fsync it; from then on the cell counts as done."""
        if self.readonly:
            raise RuntimeError("this ResultsStore is read-only (only the main process writes results)")
        record = {
            "key": key.to_dict(),
            "id": key.id,
            "metrics": dict(metrics),
            **extra,
            "fingerprint": self.fingerprint,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        line = (to_json(record, indent=None) + "\n").encode("utf-8")
        self.directory.mkdir(parents=True, exist_ok=True)
        new_file = not self.records_path.exists()
        handle = os.open(self.records_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(handle, line)
            if written != len(line):  # pragma: no cover - regular files do not short-write in practice
                raise OSError(f"short write to {self.records_path}: {written} of {len(line)} bytes")
            os.fsync(handle)
        finally:
            os.close(handle)
        if new_file:
            _fsync_directory(self.directory)  # make the new file's directory entry durable too
        self._records[key] = json.loads(line)
        return self._records[key]
