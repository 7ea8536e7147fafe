"""Byte-stable files: the same content must give the same bytes, or a re-push uploads unchanged files again.

safetensors (0.8) writes the ``__metadata__`` entries of a header in a random order (a Rust HashMap), so two
saves of one MaskSet differ. ``canonicalize_safetensors`` rewrites a file's header with sorted keys; the tensor
data and the offsets into it are untouched, so every safetensors reader sees the same file.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path


def canonicalize_safetensors(path: str | os.PathLike) -> None:
    """Rewrite ``path`` in place (temp file + rename) with its JSON header keys sorted at every level."""
    path = Path(path)
    with open(path, "rb") as source:
        (length,) = struct.unpack("<Q", source.read(8))
        original = source.read(length)
        text = json.dumps(json.loads(original), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        text += b" " * (-len(text) % 8)  # safetensors aligns the data section on 8 bytes with trailing spaces
        if text == original:
            return
        staged = path.with_name(f".{path.name}.tmp")
        with open(staged, "wb") as target:
            target.write(struct.pack("<Q", len(text)) + text)
            shutil.copyfileobj(source, target, 16 * 1024 * 1024)
    os.replace(staged, path)
