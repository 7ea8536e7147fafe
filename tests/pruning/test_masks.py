"""MaskSet: packing, statistics, safetensors round trip, compatibility errors."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_junkdna import MaskMismatchError, MaskSet, prune
from hf_junkdna.masks import pack_bool, unpack_bool


@settings(max_examples=50, deadline=None)
@given(shape=st.lists(st.integers(1, 13), min_size=1, max_size=3), seed=st.integers(0, 999))
def test_pack_round_trip_at_one_bit_per_weight(shape, seed):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) > 0.5
    packed = pack_bool(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(mask.numel() / 8)
    unpacked = unpack_bool(packed, mask.shape)
    assert unpacked.dtype == torch.bool and torch.equal(unpacked, mask)


def test_bit_order_is_little_endian_over_row_major():
    mask = torch.tensor([[True, False, False, False], [False, False, False, True], [True, True, False, False]])
    assert pack_bool(mask).tolist() == [0b10000001, 0b0011]


def test_masks_view_statistics_and_resident_bytes():
    masks = MaskSet(
        {"a.weight": torch.tensor([[True, False], [False, False]]), "b.weight": torch.ones(3, 8, dtype=torch.bool)}
    )
    assert set(masks.masks) == {"a.weight", "b.weight"}
    assert masks.masks["a.weight"].tolist() == [[True, False], [False, False]]
    assert masks.num_weights() == 28 and masks.num_zeros() == 3
    assert masks.sparsity() == pytest.approx(3 / 28)
    assert masks.layer_sparsity() == {"a.weight": 0.75, "b.weight": 0.0}
    assert masks.resident_bytes() == 1 + 3  # 1 bit per weight, rounded up per mask
    with pytest.raises(TypeError, match="bool"):
        masks.set("c.weight", torch.ones(2))


def test_save_load_round_trip_keeps_metadata(tmp_path, llama):
    masks = prune(llama, sparsity=0.3)
    path = tmp_path / "sub" / "masks.safetensors"
    masks.save(path)
    loaded = MaskSet.load(path)
    assert loaded == masks
    assert loaded.metadata["sparsity_config"]["sparsity"] == 0.3
    assert loaded.metadata["model_class"] == "LlamaForCausalLM"
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temp files left behind


def test_load_rejects_files_that_are_not_masks(tmp_path):
    from safetensors.torch import save_file

    other = tmp_path / "weights.safetensors"
    save_file({"x": torch.zeros(3)}, str(other))
    with pytest.raises(ValueError, match="weights.safetensors.*not an hf_junkdna mask file"):
        MaskSet.load(other)
    truncated = tmp_path / "truncated.safetensors"
    MaskSet({"w": torch.ones(64, 64, dtype=torch.bool)}).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated.safetensors"):
        MaskSet.load(truncated)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        MaskSet.load(tmp_path / "missing.safetensors")


def test_mismatch_names_the_first_offender(llama):
    masks = prune(llama, sparsity=0.5)
    from tiny_models import tiny_llama

    wider = tiny_llama(intermediate=96)
    with pytest.raises(MaskMismatchError, match=r"model.layers.0.mlp.gate_proj.weight.*\(64, 32\).*\(96, 32\)"):
        masks.check_compatible(wider)
    shallower = tiny_llama(layers=1)
    before = {n: p.clone() for n, p in shallower.named_parameters()}
    with pytest.raises(MaskMismatchError, match="model.layers.1"):
        masks.apply_to(shallower)
    assert all(torch.equal(before[n], p) for n, p in shallower.named_parameters())


def test_intersect_and_from_zeros(llama):
    masks = prune(llama, sparsity=0.5)
    derived = MaskSet.from_zeros(llama, masks.names())
    assert derived == masks  # right after pruning, |w| > 0 is the mask (only then)
    other = MaskSet({name: torch.rand(masks.shape(name)) > 0.5 for name in masks})
    both = masks.intersect(other)
    for name in masks:
        assert torch.equal(both.masks[name], masks.masks[name] & other.masks[name])


def test_intersect_refuses_masks_of_different_shapes_naming_the_parameter():
    square = MaskSet({"a": torch.ones(2, 2, dtype=torch.bool)})
    wide = MaskSet({"w": torch.ones(4, 8, dtype=torch.bool)})
    with pytest.raises(MaskMismatchError, match=r"'w'.*\(4, 8\).*\(8, 4\)"):  # same bytes, other shape
        wide.intersect(MaskSet({"w": torch.zeros(8, 4, dtype=torch.bool)}))
    with pytest.raises(MaskMismatchError, match=r"'w'.*\(4, 8\).*\(4, 9\)"):  # other byte length
        wide.intersect(MaskSet({"w": torch.zeros(4, 9, dtype=torch.bool)}))
    both = wide.intersect(square)  # names in only one set are copied as they are
    assert both.names() == ["w", "a"] and both.shape("a") == (2, 2)


def test_save_is_byte_stable_and_pruned_zeros_are_positive(tmp_path, llama):
    masks = prune(llama, sparsity=0.5)
    masks.save(tmp_path / "a.safetensors")
    masks.save(tmp_path / "b.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    parameters = dict(llama.named_parameters())
    for name, keep in masks.items():
        pruned = parameters[name][~keep]
        assert not torch.signbit(pruned).any(), f"{name}: a pruned weight is -0.0"


def test_saved_mask_file_has_ordinary_permissions(tmp_path):
    import os
    import stat

    path = tmp_path / "m.safetensors"
    MaskSet({"w": torch.ones(8, dtype=torch.bool)}).save(path)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
