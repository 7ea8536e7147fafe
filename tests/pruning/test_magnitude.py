"""prune() with the magnitude criterion on tiny models, and the errors that leave a model untouched."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import tiny_bert, tiny_gpt2, tiny_llama

from hf_junkdna import SparsityConfig, find_prunable_weights, prune
from hf_junkdna.pruning.selection import target_zeros


def snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def assert_untouched(model, before):
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), f"{name} changed"


def test_by_hand_one_layer():
    class OneBlock(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(4, 2, bias=False))])

    model = OneBlock()
    with torch.no_grad():
        model.layers[0][0].weight.copy_(torch.tensor([[0.4, -0.1, 0.3, -0.2], [0.05, 0.6, -0.35, 0.1]]))
    masks = prune(model, sparsity=0.5)
    # |w| ascending: .05, .1 (row0), .1 (row1, later position), .2 -> the four smallest go
    assert masks.masks["layers.0.0.weight"].tolist() == [[True, False, True, False], [False, True, True, False]]
    assert model.layers[0][0].weight.view(-1).tolist() == pytest.approx([0.4, 0.0, 0.3, 0.0, 0.0, 0.6, -0.35, 0.0])
    model2 = OneBlock()
    with torch.no_grad():
        model2.layers[0][0].weight.copy_(torch.tensor([[0.4, -0.1, 0.3, -0.2], [0.05, 0.6, -0.35, 0.1]]))
    assert prune(model2, pattern="2:4").masks["layers.0.0.weight"].tolist() == [
        [True, False, True, False],
        [False, True, True, False],
    ]


@pytest.mark.parametrize("factory", [tiny_llama, tiny_bert, tiny_gpt2])
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_exact_count_and_zeros_in_weights(factory, scope):
    model = factory()
    total = sum(w.weight.numel() for w in find_prunable_weights(model))
    masks = prune(model, SparsityConfig(sparsity=0.37, scope=scope))
    assert masks.num_zeros() == target_zeros(0.37, total)
    parameters = dict(model.named_parameters())
    for name, keep in masks.items():
        assert (parameters[name][~keep] == 0).all()
        if scope == "layer":  # each layer within one zero of its share, the total exact
            assert abs(masks.num_zeros(name) - 0.37 * keep.numel()) <= 1


def test_global_keeps_larger_weights_than_any_pruned_one(llama):
    before = snapshot(llama)
    masks = prune(llama, sparsity=0.6)
    kept = torch.cat([before[n][m].abs() for n, m in masks.items()])
    pruned = torch.cat([before[n][~m].abs() for n, m in masks.items()])
    assert kept.min() >= pruned.max()


@pytest.mark.parametrize("pattern", ["1:8", "3:8", "7:8", "1:4", "2:4", "3:4"])
def test_n_m_on_every_group_of_a_model(pattern):
    model = tiny_llama()
    n, m = map(int, pattern.split(":"))
    masks = prune(model, pattern=pattern)
    for weight in find_prunable_weights(model):
        keep = masks.masks[weight.name]
        assert (keep.view(keep.shape[0], -1, m).sum(-1) == n).all(), weight.name
    assert masks.sparsity() == pytest.approx(1 - n / m)


def test_embeddings_heads_and_norms_untouched(llama):
    before = snapshot(llama)
    masks = prune(llama, sparsity=0.5)
    for name, p in llama.named_parameters():
        if name not in masks:
            assert torch.equal(p, before[name]), name


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sparsity": 1.0}, "sparsity=1.0"),
        ({"pattern": "4:4"}, "pattern='4:4'"),
        ({"pattern": "2:3"}, "M=3 does not divide"),
        ({"method": "nope"}, "method='nope'"),
        ({"pattern": "blocky"}, "pattern='blocky'"),
        ({"include": ["attn_typo"]}, "include pattern 'attn_typo'"),
        ({"ignore": ["nothing_like_this"]}, "ignore pattern 'nothing_like_this'"),
        ({"method": "wanda"}, "calibration_data"),
        ({"method": "sparsegpt"}, "calibration_data"),
    ],
)
def test_bad_input_raises_and_leaves_model_untouched(llama, kwargs, message):
    before = snapshot(llama)
    with pytest.raises(ValueError, match=message):
        prune(llama, **kwargs)
    assert_untouched(llama, before)


def test_model_without_prunable_weights():
    model = torch.nn.Sequential(torch.nn.Embedding(8, 4), torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="no prunable weights"):
        prune(model, sparsity=0.5)


_PROPERTY_MODEL = tiny_llama(layers=1)
_PROPERTY_DENSE = {k: v.clone() for k, v in _PROPERTY_MODEL.state_dict().items()}


@settings(max_examples=25, deadline=None)
@given(sparsity=st.floats(0, 0.99), scope=st.sampled_from(["global", "layer"]))
def test_property_exact_and_nested_on_a_model(sparsity, scope):
    model = _PROPERTY_MODEL
    model.load_state_dict(_PROPERTY_DENSE)
    low = prune(model, sparsity=sparsity / 2, scope=scope)
    model.load_state_dict(_PROPERTY_DENSE)
    high = prune(model, sparsity=sparsity, scope=scope)
    total = low.num_weights()
    assert low.num_zeros() == target_zeros(sparsity / 2, total)
    assert high.num_zeros() == target_zeros(sparsity, total)
    for name in low:
        assert not (high.masks[name] & ~low.masks[name]).any()


def test_a_config_changed_after_creation_is_validated_again(llama):
    config = SparsityConfig(sparsity=0.5)
    config.sparsity = 1.5
    before = snapshot(llama)
    with pytest.raises(ValueError, match="sparsity=1.5"):
        prune(llama, config)
    assert_untouched(llama, before)
