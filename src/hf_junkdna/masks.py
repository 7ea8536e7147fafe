"""MaskSet: one keep-mask per pruned parameter, stored packed at 1 bit per weight.

``MaskSet.masks`` maps parameter names (as in ``model.named_parameters()``) to bool tensors of the
weight's shape, True = kept. Those bool tensors are unpacked on access; what stays resident is the packed
form (``uint8``, 8 weights per byte, little-endian bit order within a byte, over the row-major flattened
weight), which is also what ``save`` writes to safetensors.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .stable_files import canonicalize_safetensors

FORMAT_VERSION = "1"
# The one file name for a MaskSet next to weights: in checkpoints, save_model output and pruned folders.
MASKS_FILE_NAME = "sparsity_masks.safetensors"
_BIT_VALUES = torch.tensor([1 << bit for bit in range(8)], dtype=torch.uint8)
_POPCOUNT = torch.tensor([bin(byte).count("1") for byte in range(256)], dtype=torch.int64)


class MaskMismatchError(ValueError):
    """A MaskSet does not fit a model: a name is missing or a shape differs (the message names the first)."""


# Multiplying 8 bytes that are each 0 or 1 (read as one little-endian int64) by this constant gathers byte i
# into bit 56 + i; the top byte of the product is then the packed byte, with no carries between terms.
_GATHER_BITS = 0x0102040810204080


def pack_bool(mask: torch.Tensor) -> torch.Tensor:
    """Flatten a bool tensor and pack it into uint8, 8 entries per byte (bit i of byte j = entry 8j + i)."""
    flat = mask.reshape(-1)
    flat = flat.view(torch.uint8) if flat.dtype == torch.bool else flat.to(torch.uint8)  # a view: no copy
    padding = (-flat.numel()) % 8
    if padding or flat.storage_offset() % 8:
        flat = torch.cat([flat, flat.new_zeros(padding)])
    words = flat.view(torch.int64)  # one int64 per 8 weights; the product is the only temporary
    return words.mul(_GATHER_BITS).bitwise_right_shift_(56).to(torch.uint8)


def unpack_bool(packed: torch.Tensor, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """Inverse of ``pack_bool``."""
    numel = math.prod(shape)
    bits = packed.reshape(-1, 1).bitwise_and(_BIT_VALUES.to(packed.device)).ne(0)
    return bits.view(-1)[:numel].view(tuple(shape))


class _UnpackedView(Mapping):
    """Read-only mapping name -> bool mask, unpacked on access."""

    def __init__(self, owner: MaskSet):
        self._owner = owner

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._owner.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._owner._packed)

    def __len__(self) -> int:
        return len(self._owner._packed)


class MaskSet:
    """Keep-masks (True = kept) for the pruned parameters of one model, packed at 1 bit per weight.

    Build it from bool tensors (``MaskSet({"layer.weight": mask})``); read masks through ``.masks[name]``
    or ``.get(name)``; ``metadata`` carries JSON-serialisable facts (config, model class, regime).
    """

    def __init__(self, masks: Mapping[str, torch.Tensor] | None = None, metadata: dict[str, Any] | None = None):
        self._packed: dict[str, torch.Tensor] = {}
        self._shapes: dict[str, torch.Size] = {}
        self._kept: dict[str, int] = {}
        self.metadata: dict[str, Any] = dict(metadata or {})
        for name, mask in (masks or {}).items():
            self.set(name, mask)

    # ----------------------------------------------------------------- access
    def set(self, name: str, mask: torch.Tensor) -> None:
        if mask.dtype != torch.bool:
            raise TypeError(f"mask for {name!r} must be a bool tensor (True = kept), got {mask.dtype}")
        mask = mask.detach()
        self._packed[name] = pack_bool(mask).cpu()  # pack where the mask lives: 8x less to copy
        self._shapes[name] = mask.shape
        self._kept[name] = int(torch.count_nonzero(mask))

    def get(self, name: str, device: torch.device | str | None = None) -> torch.Tensor:
        if name not in self._packed:
            raise KeyError(f"no mask for parameter {name!r}")
        packed = self._packed[name]
        if device is not None:
            packed = packed.to(device, non_blocking=True)
        return unpack_bool(packed, self._shapes[name])

    def packed(self, name: str) -> torch.Tensor:
        return self._packed[name]

    def shape(self, name: str) -> torch.Size:
        return self._shapes[name]

    @property
    def masks(self) -> Mapping[str, torch.Tensor]:
        return _UnpackedView(self)

    def names(self) -> list[str]:
        return list(self._packed)

    def __contains__(self, name: object) -> bool:
        return name in self._packed

    def __iter__(self) -> Iterator[str]:
        return iter(self._packed)

    def __len__(self) -> int:
        return len(self._packed)

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self._packed:
            yield name, self.get(name)

    def __repr__(self) -> str:
        return f"MaskSet({len(self)} masks, sparsity={self.sparsity():.4f})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MaskSet):
            return NotImplemented
        return (
            list(self._packed) == list(other._packed)
            and all(self._shapes[n] == other._shapes[n] for n in self._packed)
            and all(torch.equal(self._packed[n], other._packed[n]) for n in self._packed)
        )

    # ------------------------------------------------------------- statistics
    def num_weights(self, name: str | None = None) -> int:
        if name is not None:
            return math.prod(self._shapes[name])
        return sum(math.prod(shape) for shape in self._shapes.values())

    def num_zeros(self, name: str | None = None) -> int:
        if name is not None:
            return self.num_weights(name) - self._kept[name]
        return self.num_weights() - sum(self._kept.values())

    def sparsity(self, name: str | None = None) -> float:
        total = self.num_weights(name)
        return self.num_zeros(name) / total if total else 0.0

    def layer_sparsity(self) -> dict[str, float]:
        return {name: self.sparsity(name) for name in self._packed}

    def statistics(self) -> dict[str, Any]:
        return {
            "num_masks": len(self),
            "num_weights": self.num_weights(),
            "num_zeros": self.num_zeros(),
            "sparsity": self.sparsity(),
            "per_layer": {
                name: {
                    "shape": list(self._shapes[name]),
                    "zeros": self.num_zeros(name),
                    "sparsity": self.sparsity(name),
                }
                for name in self._packed
            },
        }

    def resident_bytes(self) -> int:
        """Bytes the packed masks occupy (the 1-bit-per-weight target, plus < 1 byte padding per mask)."""
        return sum(t.numel() * t.element_size() for t in self._packed.values())

    # ---------------------------------------------------------- model contact
    def check_compatible(self, model: nn.Module) -> None:
        """Raise MaskMismatchError naming the first mask whose parameter is missing or has another shape."""
        parameters = dict(model.named_parameters())
        for name, shape in self._shapes.items():
            if name not in parameters:
                close = [p for p in parameters if p.endswith(name.split(".", 1)[-1])][:1]
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise MaskMismatchError(f"mask for {name!r} has no parameter of that name in the model{hint}")
            actual = tuple(getattr(parameters[name], "ds_shape", None) or parameters[name].shape)
            if tuple(shape) != actual:
                raise MaskMismatchError(
                    f"mask for {name!r} has shape {tuple(shape)} but the parameter has shape {actual}"
                )

    @torch.no_grad()
    def apply_to(self, model: nn.Module) -> None:
        """Zero the pruned positions of the model's weights in place (checks compatibility first)."""
        self.check_compatible(model)
        parameters = dict(model.named_parameters())
        for name in self._packed:
            weight = parameters[name]
            # masked_fill, not mul: -w * 0 would leave -0.0, which formats without sign bits cannot keep
            weight.masked_fill_(~self.get(name, device=weight.device), 0)

    @classmethod
    @torch.no_grad()
    def from_zeros(cls, model: nn.Module, names: list[str], metadata: dict | None = None) -> MaskSet:
        """Derive masks as ``weight != 0`` (only right for the sparse regime; prefer saved masks)."""
        parameters = dict(model.named_parameters())
        return cls({name: parameters[name].ne(0) for name in names}, metadata=metadata)

    # ---------------------------------------------------------------- set ops
    def intersect(self, other: MaskSet) -> MaskSet:
        """Keep where both keep (names present in only one set are copied as they are).

        Raises MaskMismatchError naming the first parameter whose two masks have different shapes.
        """
        for name in self._shapes.keys() & other._shapes.keys():
            if self._shapes[name] != other._shapes[name]:
                raise MaskMismatchError(
                    f"cannot intersect the masks for {name!r}: shapes {tuple(self._shapes[name])} and "
                    f"{tuple(other._shapes[name])} differ"
                )
        result = MaskSet(metadata=self.metadata)
        for name in dict.fromkeys([*self._packed, *other._packed]):
            if name in self and name in other:
                result._set_packed(name, self._packed[name] & other._packed[name], self._shapes[name])
            else:
                source = self if name in self else other
                result._set_packed(name, source._packed[name].clone(), source._shapes[name])
        return result

    def _set_packed(self, name: str, packed: torch.Tensor, shape: torch.Size) -> None:
        remainder = math.prod(shape) % 8
        if remainder and packed.numel() and int(packed[-1]) >> remainder:
            packed = packed.clone()
            packed[-1] &= (1 << remainder) - 1  # padding bits beyond the last weight must read as 0
        self._packed[name] = packed
        self._shapes[name] = torch.Size(shape)
        # padding bits are always 0, so the popcount of the bytes is the number of kept weights
        self._kept[name] = int(_POPCOUNT[packed.long()].sum())

    # --------------------------------------------------------------- files
    def save(self, path: str | os.PathLike) -> None:
        """Write packed masks + metadata to one safetensors file, atomically (temp file + rename)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = {
            "format": "hf_junkdna.maskset",
            "format_version": FORMAT_VERSION,
            "bit_order": "little",
            "shapes": json.dumps({name: list(shape) for name, shape in self._shapes.items()}),
            "metadata": json.dumps(self.metadata, default=str),
        }
        tensors = {name: packed.contiguous() for name, packed in self._packed.items()}
        handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(handle)
        try:
            save_file(tensors, tmp, metadata=header)
            canonicalize_safetensors(tmp)  # same masks -> same bytes, so a re-push skips the file
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the file should read like any other
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @classmethod
    def load(cls, path: str | os.PathLike) -> MaskSet:
        """Read a file written by ``save``. Raises ValueError naming the file if it is not a MaskSet."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"mask file {str(path)!r} does not exist")
        try:
            with safe_open(str(path), framework="pt") as handle:
                header = handle.metadata() or {}
                if header.get("format") != "hf_junkdna.maskset":
                    raise ValueError(
                        f"{str(path)!r} is not an hf_junkdna mask file (safetensors metadata 'format' is "
                        f"{header.get('format')!r})"
                    )
                shapes = json.loads(header["shapes"])
                metadata = json.loads(header.get("metadata", "{}"))
                result = cls(metadata=metadata)
                for name, shape in shapes.items():
                    packed = handle.get_tensor(name)
                    expected = (math.prod(shape) + 7) // 8
                    if packed.dtype != torch.uint8 or packed.numel() != expected:
                        raise ValueError(
                            f"{str(path)!r}: packed mask {name!r} has {packed.numel()} {packed.dtype} entries, "
                            f"expected {expected} uint8 for shape {shape}"
                        )
                    result._set_packed(name, packed, torch.Size(shape))
        except (OSError, KeyError, json.JSONDecodeError) as error:
            raise ValueError(f"cannot read mask file {str(path)!r}: {error}") from error
        except Exception as error:  # safetensors raises its own SafetensorError on truncated/corrupt files
            if type(error).__name__ == "SafetensorError":
                raise ValueError(f"cannot read mask file {str(path)!r}: {error}") from error
            raise
        return result
