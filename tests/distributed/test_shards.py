"""Packed-bit slices at any offset and the shard-only MaskSet (no processes launched)."""

import pytest
import torch

from hf_junkdna import MaskSet
from hf_junkdna.masks import pack_bool
from hf_junkdna.training.backends.shards import ShardMaskSet, local_bits, slice_bits


def test_slice_bits_equals_packing_the_slice_at_every_offset_and_length():
    generator = torch.Generator().manual_seed(0)
    mask = torch.rand(203, generator=generator) > 0.5
    packed = pack_bool(mask)
    for start in range(0, 203, 3):
        for length in (0, 1, 7, 8, 9, 17, 203 - start):
            length = min(length, 203 - start)
            assert torch.equal(slice_bits(packed, start, length), pack_bool(mask[start : start + length])), (
                start,
                length,
            )


def _masks():
    torch.manual_seed(0)
    return MaskSet({"a.weight": torch.rand(6, 7) > 0.3, "b.weight": torch.rand(5, 3) > 0.6}, metadata={"x": 1})


def test_shard_mask_set_keeps_counts_and_its_pieces_only():
    full = _masks()
    pieces = [("a.weight", 5, 20, slice_bits(full.packed("a.weight"), 5, 20))]
    shard = ShardMaskSet.of_pieces(full, pieces)
    assert isinstance(shard, MaskSet) and shard.names() == full.names()
    assert shard.sparsity() == full.sparsity() and shard.num_zeros("b.weight") == full.num_zeros("b.weight")
    assert shard.metadata == {"x": 1} and shard.shape("a.weight") == (6, 7)
    assert shard.resident_bytes() == 3  # 20 bits
    assert torch.equal(local_bits(shard, "a.weight", 9, 11), slice_bits(full.packed("a.weight"), 9, 11))
    with pytest.raises(RuntimeError, match="only for the element ranges"):
        local_bits(shard, "a.weight", 0, 42)
    for call in (lambda: shard.get("a.weight"), lambda: shard.save("x"), lambda: shard.packed("a.weight")):
        with pytest.raises(RuntimeError, match="main process"):
            call()


def test_shard_mask_set_from_file_reads_ranges_on_demand(tmp_path):
    full = _masks()
    full.save(tmp_path / "m.safetensors")
    shard = ShardMaskSet.from_file(tmp_path / "m.safetensors")
    assert shard.resident_bytes() == 0 and shard.num_zeros() == full.num_zeros()
    for start, length in ((0, 42), (13, 9), (41, 1)):
        assert torch.equal(
            shard.local_bits("a.weight", start, length), slice_bits(full.packed("a.weight"), start, length)
        )
    with pytest.raises(ValueError, match="not an hf_junkdna mask file"):
        from safetensors.torch import save_file

        save_file({"t": torch.zeros(1)}, tmp_path / "other.safetensors")
        ShardMaskSet.from_file(tmp_path / "other.safetensors")
