"""Masks of one rank's shards: bit slices at any element offset, and a MaskSet that holds only those.

Sharded backends (ZeRO-2/3, FSDP2) update a contiguous range of each parameter's flattened elements on each
rank. ``slice_bits`` cuts the packed bits of such a range out of a packed mask (shifting when the range
does not start on a byte), so a rank never needs a bool mask. ``ShardMaskSet`` is what a rank that does not
write checkpoints keeps once its masks are bound: the names, shapes, kept counts and metadata of the full
set (so statistics and compatibility checks still work) and the packed bits of its own ranges only, or a
mask file to read other ranges from (resume), one range at a time.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable

import torch

from ...masks import MaskSet, pack_bool

_POPCOUNT = torch.tensor([bin(byte).count("1") for byte in range(256)], dtype=torch.int64)


def slice_bits(packed: torch.Tensor, start: int, length: int) -> torch.Tensor:
    """Packed bits of entries ``start .. start + length - 1`` of a packed mask (padding bits 0, a new tensor)."""
    if length <= 0:
        return packed.new_zeros(0)
    first, shift = divmod(start, 8)
    nbytes = (length + 7) // 8
    chunk = packed[first : (start + length + 7) // 8]
    if shift:
        following = torch.cat([chunk[1:], chunk.new_zeros(1)])
        # uint8 shifts drop the bits pushed past bit 7: each output byte is the tail of one byte and the
        # head of the next
        out = (chunk >> shift) | (following << (8 - shift))
        out = out[:nbytes].clone()
    else:
        out = chunk[:nbytes].clone()
    remainder = length % 8
    if remainder:
        out[-1] &= (1 << remainder) - 1
    return out


def count_bits(packed: torch.Tensor) -> int:
    return int(_POPCOUNT.to(packed.device).index_select(0, packed.int()).sum()) if packed.numel() else 0


class ShardMaskSet(MaskSet):
    """The full set's names, shapes, kept counts and metadata; bits only for ranges this rank holds.

    ``pieces[name]`` lists ``(start, length, packed bits)`` of flattened ranges of the parameter; ``source``
    is a mask file (``MaskSet.save``) to read any other range from. Reading a whole mask (``get``,
    ``packed``, ``items``), writing it (``save``) or applying it (``apply_to``) raises: on this rank the full
    masks do not exist. Only the main process saves masks, and it keeps the full ``MaskSet``.
    """

    def __init__(self, shapes: dict, kept: dict, metadata: dict | None = None, pieces=None, source=None):
        super().__init__(metadata=metadata)
        for name, shape in shapes.items():
            self._packed[name] = torch.empty(0, dtype=torch.uint8)  # names only: no bits held here
            self._shapes[name] = torch.Size(shape)
            self._kept[name] = int(kept[name])
        self.pieces: dict[str, list[tuple[int, int, torch.Tensor]]] = {name: [] for name in shapes}
        for name, start, length, bits in pieces or ():
            self.pieces[name].append((int(start), int(length), bits))
        self.source = None if source is None else str(source)

    # --------------------------------------------------------------- building
    @classmethod
    def of_pieces(cls, masks: MaskSet, pieces: Iterable[tuple[str, int, int, torch.Tensor]]) -> ShardMaskSet:
        """Keep ``masks``' names/shapes/counts/metadata and only the given ``(name, start, length, bits)``."""
        shapes = {name: masks.shape(name) for name in masks.names()}
        kept = {name: masks.num_weights(name) - masks.num_zeros(name) for name in masks.names()}
        source = masks.source if isinstance(masks, ShardMaskSet) else None
        return cls(shapes, kept, masks.metadata, pieces, source=source)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> ShardMaskSet:
        """Names, shapes and counts of a mask file; bits are read per range when a binding asks for them."""
        from safetensors import safe_open

        path = str(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"mask file {path!r} does not exist")
        with safe_open(path, framework="pt") as handle:
            header = handle.metadata() or {}
            if header.get("format") != "hf_junkdna.maskset":
                raise ValueError(
                    f"{path!r} is not an hf_junkdna mask file (metadata 'format' is {header.get('format')!r})"
                )
            shapes = json.loads(header["shapes"])
            kept = {}
            for name, shape in shapes.items():  # one tensor at a time: nothing stays resident
                packed = handle.get_tensor(name)
                if packed.dtype != torch.uint8 or packed.numel() != (math.prod(shape) + 7) // 8:
                    raise ValueError(f"{path!r}: packed mask {name!r} does not match shape {shape}")
                kept[name] = count_bits(packed)
        return cls(shapes, kept, json.loads(header.get("metadata", "{}")), source=path)

    # ---------------------------------------------------------------- access
    def local_bits(self, name: str, start: int, length: int) -> torch.Tensor:
        """Packed bits of ``name``'s flattened entries ``start .. start + length - 1``."""
        if name not in self._shapes:
            raise KeyError(f"no mask for parameter {name!r}")
        for piece_start, piece_length, bits in self.pieces[name]:
            if piece_start <= start and start + length <= piece_start + piece_length:
                return slice_bits(bits, start - piece_start, length)
        if self.source is not None:
            from safetensors import safe_open

            with safe_open(self.source, framework="pt") as handle:
                chunk = handle.get_slice(name)[start // 8 : (start + length + 7) // 8]
            return slice_bits(chunk, start % 8, length)
        held = [(s, s + n) for s, n, _ in self.pieces[name]]
        raise RuntimeError(
            f"this rank holds the bits of {name!r} only for the element ranges {held}, not [{start}, {start + length}): "
            "the full masks live on the main process (they were dropped here once bound to this rank's shards)"
        )

    def _whole(self, what: str):
        raise RuntimeError(
            f"{what}: this rank holds only its shards of the masks (ShardMaskSet); the full MaskSet is on the main "
            "process, which also writes it into checkpoints"
        )

    def get(self, name, device=None):
        self._whole(f"get({name!r})")

    def packed(self, name):
        self._whole(f"packed({name!r})")

    def save(self, path):
        self._whole("save")

    def apply_to(self, model):
        self._whole("apply_to")

    def intersect(self, other):
        self._whole("intersect")

    def __eq__(self, other):
        return self is other

    __hash__ = object.__hash__

    def resident_bytes(self) -> int:
        return sum(bits.numel() * bits.element_size() for pieces in self.pieces.values() for _, _, bits in pieces)

    def __repr__(self) -> str:
        return f"ShardMaskSet({len(self)} masks, sparsity={self.sparsity():.4f}, {self.resident_bytes()} bytes held)"


def local_bits(masks: MaskSet, name: str, start: int, length: int) -> torch.Tensor:
    """Packed bits of a flattened range of ``name``'s mask, from a full or a shard-only set."""
    if isinstance(masks, ShardMaskSet):
        return masks.local_bits(name, start, length)
    return slice_bits(masks.packed(name), start, length)


def packed_storages(masks: MaskSet) -> set[int]:
    """data_ptr of every packed tensor ``masks`` holds (to tell shared bits from copies)."""
    if isinstance(masks, ShardMaskSet):
        return {bits.data_ptr() for pieces in masks.pieces.values() for _, _, bits in pieces}
    return {masks.packed(name).data_ptr() for name in masks.names()}


def pack_local(keep: torch.Tensor) -> torch.Tensor:
    return pack_bool(keep.reshape(-1)).cpu()
