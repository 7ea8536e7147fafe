"""Regrowth for the sparse_to_dense regime: how much is released when, and in which order (pure maths).

``released_fraction(step, ...)`` is the fraction of the pruned weights that may train before optimizer
step ``step`` (0-based: the number of steps already done). It is applied in 256 levels
(``release_level``), so at most 256 releases happen over a schedule, however long.

Which weights: the weights of a parameter are taken 8 at a time, as the bytes of its packed mask. Each
byte ``b`` gets a fixed pseudo-random rank ``q_b`` in 0..255, a hash of (parameter name, seed, byte index);
weight ``k`` (0..7) of byte ``b`` is released from level ``(q_b + 32 k) mod 256`` on. Release times are
thus uniform over the schedule for every weight, the eight weights of a byte are spread evenly across
it (so each byte, and each row, regrows at the schedule's pace: the released fraction is exact to
1/8 per byte), the order is the same in every run, process and resume, released sets only grow, and a
rank holding a shard computes its part from global byte indices alone. Applying a level costs one
256-entry table lookup per byte of the mask; the ranks take one byte per 8 weights (1 bit per weight).
"""

from __future__ import annotations

import math
import zlib

import torch

SCHEDULES = ("linear", "cosine", "step")
LEVELS = 256
_PRIME = (1 << 31) - 1  # Mersenne prime: products of two residues stay below 2**62, no int64 overflow
_MULTIPLIERS = (1_103_515_245, 740_553_129)


def end_step(max_steps: int, end_fraction: float) -> int:
    """The optimizer step by which every pruned weight is released (at least 1)."""
    return max(1, math.ceil(end_fraction * max_steps))


def released_fraction(step: int, max_steps: int, schedule: str, end_fraction: float, stages: int = 4) -> float:
    """Fraction of pruned weights trainable before optimizer step ``step``: 0 at step 0, 1 from the end step."""
    if schedule not in SCHEDULES:
        raise ValueError(f"regrowth_schedule={schedule!r}: choose one of {SCHEDULES}")
    end = end_step(max_steps, end_fraction)
    progress = min(1.0, max(0.0, step / end))
    if schedule == "linear":
        return progress
    if schedule == "cosine":
        return 0.5 * (1.0 - math.cos(math.pi * progress))
    return math.floor(progress * stages + 1e-9) / stages  # "step": `stages` equal releases


def release_level(fraction: float) -> int:
    """The fraction as a level in 0..256 (256 = everything released)."""
    return LEVELS if fraction >= 1.0 else max(0, min(LEVELS - 1, math.floor(fraction * LEVELS + 1e-9)))


def parameter_seed(name: str, seed: int) -> int:
    """A per-parameter seed that is the same in every process (Python's hash() is salted per process)."""
    return (zlib.crc32(name.encode("utf-8")) ^ (int(seed) * 0x9E3779B1)) % _PRIME


def byte_ranks(num_bytes: int, first_byte: int, parameter_seed_: int, device=None) -> torch.Tensor:
    """uint8 ranks of mask bytes ``first_byte .. first_byte + num_bytes - 1`` (a stateless integer hash)."""
    ranks = torch.empty(num_bytes, dtype=torch.uint8, device=device)
    chunk = 1 << 22  # bounds the int64 temporaries to ~32 MB whatever the parameter size
    for start in range(0, num_bytes, chunk):
        stop = min(start + chunk, num_bytes)
        x = torch.arange(first_byte + start, first_byte + stop, device=device)
        x = (x + parameter_seed_) % _PRIME
        x = (x * _MULTIPLIERS[0]) % _PRIME
        x = x ^ (x >> 15)
        x = (x * _MULTIPLIERS[1]) % _PRIME
        ranks[start:stop] = ((x ^ (x >> 13)) >> 23).to(torch.uint8)  # top 8 of 31 bits
    return ranks


_TABLES: dict[tuple[int, str], torch.Tensor] = {}


def release_table(level: int, device) -> torch.Tensor:
    """uint8[256]: for a byte of rank q, the bits of its weights released at ``level``."""
    key = (level, str(device))
    table = _TABLES.get(key)
    if table is None:
        ranks = torch.arange(LEVELS).unsqueeze(1)
        weight = torch.arange(8).unsqueeze(0)
        released = (ranks + 32 * weight) % LEVELS < level
        table = (released.to(torch.int64) << weight).sum(dim=1).to(torch.uint8).to(device)
        if len(_TABLES) > 2 * LEVELS:
            _TABLES.clear()
        _TABLES[key] = table
    return table


def released_bits(ranks: torch.Tensor, level: int) -> torch.Tensor:
    """Packed bits (uint8, like a packed mask) of the weights released at ``level``, from their byte ranks."""
    return release_table(level, ranks.device).index_select(0, ranks.int())
