"""Arithmetic straight from packed masks (1 bit per weight), with no resident bool mask.

A packed mask (``hf_junkdna.masks.pack_bool``: bit i of byte j is entry 8j + i of the flattened tensor)
is applied through a 256 x 8 lookup table: ``table[byte]`` holds the eight factors of the eight weights
that byte covers. One ``index_select`` of the table by the packed bytes expands them to factors of the
tensor's dtype, and one in-place multiply applies them. On a 2-core CPU this costs about what multiplying
by a precomputed bool mask costs (see benchmarks/bench_training.py) while holding 8x less memory; the
expanded factors only live for one tensor at a time.
"""

from __future__ import annotations

import torch

from ..masks import pack_bool, unpack_bool

_BITS = torch.tensor([[(byte >> bit) & 1 for bit in range(8)] for byte in range(256)], dtype=torch.bool)
_TABLES: dict[tuple, torch.Tensor] = {}


def bit_table(on: float, off: float, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """(256, 8) table: entry [byte, i] is ``on`` where bit i of ``byte`` is set, else ``off``."""
    key = (float(on), float(off), dtype, str(device))
    table = _TABLES.get(key)
    if table is None:
        table = torch.where(_BITS, torch.tensor(on, dtype=torch.float64), torch.tensor(off, dtype=torch.float64))
        table = table.to(dtype=dtype, device=device)
        if len(_TABLES) > 64:  # tables with a per-step factor (weight decay) would otherwise pile up
            _TABLES.clear()
        _TABLES[key] = table
    return table


class Workspace:
    """Reusable scratch for expanding packed bits, bounded at ``chunk`` weights (4 MB in fp32 by default).

    Expanding into a fresh tensor per call costs page faults that show in the step time (measured: about
    10 % of the masking time on a 2-core CPU); a binding keeps one workspace while training and drops it after.
    """

    def __init__(self, chunk: int = 1 << 20):
        self.chunk_bytes = max(1, chunk // 8)
        self._buffers: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def get(self, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (dtype, str(device))
        buffers = self._buffers.get(key)
        if buffers is None:
            factors = torch.empty(self.chunk_bytes, 8, dtype=dtype, device=device)
            index = torch.empty(self.chunk_bytes, dtype=torch.int32, device=device)
            buffers = self._buffers[key] = (factors, index)
        return buffers

    def nbytes(self) -> int:
        return sum(f.numel() * f.element_size() + i.numel() * 4 for f, i in self._buffers.values())


def _exact(value: float, dtype: torch.dtype) -> bool:
    if value in (0.0, 1.0) or not dtype.is_floating_point:  # the masking path, every step: no tensor made
        return True
    return float(torch.tensor(value, dtype=dtype)) == float(value)


def scale_by_bits_(
    tensor: torch.Tensor, bits: torch.Tensor, on: float = 1.0, off: float = 0.0, workspace: Workspace | None = None
) -> torch.Tensor:
    """``tensor *= (on where the bit is set else off)``, in place; ``bits`` packs ``tensor.numel()`` entries.

    The default (on=1, off=0) zeroes the positions whose bit is clear. NaN or inf at a cleared position stay
    NaN (0 * inf), which is what multiplying by a mask does too. With a ``workspace`` the expansion reuses
    its buffers chunk by chunk instead of allocating one the size of the tensor.
    """
    # Factors not exact in a half-precision tensor's dtype (a decay 1 - lr*wd) stay fp32, so the product is
    # rounded once, as ``p.mul_(python_float)`` in the optimizer rounds it; 0 and 1 are exact in every dtype.
    factor_dtype = tensor.dtype if _exact(on, tensor.dtype) and _exact(off, tensor.dtype) else torch.float32
    if not tensor.is_contiguous():  # rare (weights and grads are contiguous): unpack, apply, discard
        factors = torch.where(unpack_bool(bits, tensor.shape), on, off).to(factor_dtype)
        return tensor.mul_(factors)
    table = bit_table(on, off, factor_dtype, tensor.device)
    flat = tensor.view(-1)
    whole = flat.numel() // 8
    if workspace is None:
        if whole:
            flat[: whole * 8].view(whole, 8).mul_(table.index_select(0, bits[:whole].int()))
    else:
        factors, index = workspace.get(factor_dtype, tensor.device)
        for start in range(0, whole, workspace.chunk_bytes):
            stop = min(whole, start + workspace.chunk_bytes)
            count = stop - start
            chunk_index = index[:count]
            chunk_index.copy_(bits[start:stop])
            torch.index_select(table, 0, chunk_index, out=factors[:count])
            flat[start * 8 : stop * 8].view(count, 8).mul_(factors[:count])
    tail = flat.numel() - whole * 8
    if tail:
        flat[whole * 8 :].mul_(table.index_select(0, bits[whole : whole + 1].int())[0, :tail])
    return tensor


def keep_bool(bits: torch.Tensor, numel: int, shape: torch.Size | tuple[int, ...] | None = None) -> torch.Tensor:
    """The bool mask (True = bit set) of ``numel`` packed entries, shaped like ``shape`` (transient use only)."""
    mask = _BITS.to(bits.device).index_select(0, bits.int()).view(-1)[:numel]
    return mask.view(tuple(shape)) if shape is not None else mask


def count_set(bits: torch.Tensor) -> int:
    """Number of set bits (padding bits of a packed mask are 0, so this counts kept entries)."""
    table = _POPCOUNT.to(bits.device)
    return int(table.index_select(0, bits.int()).sum())


_POPCOUNT = _BITS.sum(dim=1, dtype=torch.int32)

__all__ = ["Workspace", "bit_table", "scale_by_bits_", "keep_bool", "count_set", "pack_bool"]
