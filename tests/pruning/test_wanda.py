"""Wanda: masks worked out by hand on a one-layer model, sequential calibration, and properties."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from hf_junkdna import SparsityConfig, find_prunable_weights, prune
from hf_junkdna.pruning.selection import target_zeros
from hf_junkdna.pruning.wanda import wanda_keep_mask, wanda_scores

# Calibration tokens (rows) of the one-layer model. Column norms ||X_j||_2:
#   j=0: sqrt(4^2 + 0 + 3^2) = 5      j=1: sqrt(1 + 1 + 1) = sqrt(3) ~ 1.732
#   j=2: sqrt(0 + 2^2 + 0)   = 2      j=3: sqrt(1 + 0 + 0) = 1
TOKENS = torch.tensor(
    [
        [4.0, 1.0, 0.0, 1.0],
        [0.0, 1.0, 2.0, 0.0],
        [3.0, 1.0, 0.0, 0.0],
    ]
)
SUM_SQ = torch.tensor([25.0, 3.0, 4.0, 1.0])
WEIGHT = torch.tensor(
    [
        [1.0, -3.0, 2.0, 6.0],
        [0.9, 2.0, -1.5, 3.2],
    ]
)
# Scores |W_ij| * ||X_j||:
#   row 0: 1*5 = 5.0    3*1.732 = 5.196   2*2 = 4.0   6*1 = 6.0
#   row 1: 0.9*5 = 4.5  2*1.732 = 3.464   1.5*2 = 3.0 3.2*1 = 3.2
EXPECTED = {
    # per row (Wanda's comparison group), 50 %: prune the 2 lowest of each row
    #   row 0: 4.0 (j=2), 5.0 (j=0)        row 1: 3.0 (j=2), 3.2 (j=3)
    "layer": [[False, True, False, True], [True, True, False, False]],
    # one ranking over the whole matrix, 50 %: prune the 4 lowest of all 8 scores
    #   3.0 (1,2)  3.2 (1,3)  3.464 (1,1)  4.0 (0,2)
    "global": [[True, True, False, True], [True, False, False, False]],
    # 1:4 keeps the highest of each row: 6.0 (j=3) and 4.5 (j=0)
    "1:4": [[False, False, False, True], [True, False, False, False]],
    # 3:4 prunes the lowest of each row: 4.0 (j=2) and 3.0 (j=2)
    "3:4": [[True, True, False, True], [True, True, False, True]],
}
# Magnitude alone (per row) would prune |1|, |2| in row 0 and |0.9|, |1.5| in row 1: a different row 1.
MAGNITUDE_LAYER = [[False, True, False, True], [False, True, False, True]]


class OneLayer(nn.Module):
    """One block holding one Linear; token id t embeds to row t of TOKENS (id 3 = a padding token)."""

    def __init__(self, weight: torch.Tensor = WEIGHT):
        super().__init__()
        self.embed = nn.Embedding(4, 4)
        with torch.no_grad():
            self.embed.weight.copy_(torch.cat([TOKENS, torch.tensor([[100.0, 0.0, 0.0, 100.0]])]))
        self.layers = nn.ModuleList([nn.Sequential(nn.Linear(4, weight.shape[0], bias=False))])
        with torch.no_grad():
            self.layers[0][0].weight.copy_(weight)

    def forward(self, input_ids, attention_mask=None):
        hidden = self.embed(input_ids)
        for block in self.layers:
            hidden = block(hidden)
        return hidden


def pruned_weight(model: OneLayer) -> torch.Tensor:
    return model.layers[0][0].weight.detach()


def config_for(case: str) -> SparsityConfig:
    if ":" in case:
        return SparsityConfig(method="wanda", pattern=case)
    return SparsityConfig(method="wanda", sparsity=0.5, scope=case)


def test_scores_by_hand():
    scores = wanda_scores(WEIGHT, SUM_SQ)
    root3 = 3**0.5
    expected = torch.tensor([[5.0, 3 * root3, 4.0, 6.0], [4.5, 2 * root3, 3.0, 3.2]])
    torch.testing.assert_close(scores, expected)
    assert not torch.equal(torch.tensor(EXPECTED["layer"]), torch.tensor(MAGNITUDE_LAYER))


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_masks_by_hand_on_a_one_layer_model(case):
    model = OneLayer()
    masks = prune(model, config_for(case), torch.tensor([[0, 1, 2]]))
    expected = torch.tensor(EXPECTED[case])
    assert torch.equal(masks.masks["layers.0.0.weight"], expected)
    assert torch.equal(pruned_weight(model), WEIGHT * expected)


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_padding_tokens_do_not_count(case):
    """Token 3 (huge in inputs 0 and 3) is padding: with attention_mask 0 it changes nothing."""
    model = OneLayer()
    batch = {"input_ids": torch.tensor([[0, 1, 2, 3]]), "attention_mask": torch.tensor([[1, 1, 1, 0]])}
    masks = prune(model, config_for(case), [batch])
    assert torch.equal(masks.masks["layers.0.0.weight"], torch.tensor(EXPECTED[case]))
    # without the mask the padding token would dominate column norms 0 and 3 and change the layer mask
    unmasked = prune(OneLayer(), config_for("layer"), torch.tensor([[0, 1, 2, 3]]))
    assert not torch.equal(unmasked.masks["layers.0.0.weight"], torch.tensor(EXPECTED["layer"]))


def test_tokens_split_over_batches_give_the_same_statistics():
    batches = [torch.tensor([[0]]), torch.tensor([[1, 2]])]
    masks = prune(OneLayer(), config_for("layer"), batches)
    assert torch.equal(masks.masks["layers.0.0.weight"], torch.tensor(EXPECTED["layer"]))


def test_pure_keep_mask_matches_the_model_path():
    for case, expected in EXPECTED.items():
        if case == "global":
            continue
        n_m = tuple(int(part) for part in case.split(":")) if ":" in case else None
        assert torch.equal(wanda_keep_mask(WEIGHT, SUM_SQ, 0.5, n_m), torch.tensor(expected))


class TwoBlocks(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(6)  # a seed where pruning block 0 changes block 1's mask
        self.embed = nn.Embedding(16, 8)
        self.layers = nn.ModuleList([nn.Sequential(nn.Linear(8, 8, bias=False), nn.ReLU()) for _ in range(2)])

    def forward(self, input_ids, attention_mask=None):
        hidden = self.embed(input_ids)
        for block in self.layers:
            hidden = block(hidden)
        return hidden


def test_second_block_is_scored_on_the_pruned_first_block():
    ids = torch.arange(16).view(2, 8)
    model = TwoBlocks()
    first, second = model.layers[0][0], model.layers[1][0]
    with torch.no_grad():
        x0 = model.embed(ids).reshape(-1, 8)
        dense_x1 = model.layers[0](x0)
        keep0 = wanda_keep_mask(first.weight, x0.square().sum(0), 0.5)
        pruned_x1 = torch.relu(x0 @ (first.weight * keep0).t())
        expected1 = wanda_keep_mask(second.weight, pruned_x1.square().sum(0), 0.5)
        dense1 = wanda_keep_mask(second.weight, dense_x1.square().sum(0), 0.5)
    assert not torch.equal(expected1, dense1)  # the test would not tell the two apart otherwise
    masks = prune(model, SparsityConfig(method="wanda", sparsity=0.5), ids)
    assert torch.equal(masks.masks["layers.0.0.weight"], keep0)
    assert torch.equal(masks.masks["layers.1.0.weight"], expected1)
    # global scope calibrates the dense model in one pass: block 1 is ranked with dense statistics
    global_masks = prune(TwoBlocks(), SparsityConfig(method="wanda", sparsity=0.5, scope="global"), ids)
    model = TwoBlocks()
    scores = torch.cat(
        [
            wanda_scores(model.layers[0][0].weight, x0.square().sum(0)).reshape(-1),
            wanda_scores(model.layers[1][0].weight, dense_x1.square().sum(0)).reshape(-1),
        ]
    )
    order = torch.sort(scores, stable=True).indices[:64]
    keep = torch.ones(128, dtype=torch.bool)
    keep[order] = False
    assert torch.equal(global_masks.masks["layers.0.0.weight"].reshape(-1), keep[:64])
    assert torch.equal(global_masks.masks["layers.1.0.weight"].reshape(-1), keep[64:])


def test_conv1d_weights_are_scored_along_their_input_dimension():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=32)).eval()
    ids = torch.randint(0, 64, (2, 12))
    weight = next(w for w in find_prunable_weights(model) if w.name.endswith("mlp.c_fc.weight"))
    inputs = []
    handle = weight.module.register_forward_hook(lambda m, a, o: inputs.append(a[0].reshape(-1, 16)))
    with torch.no_grad():
        model(ids)
    handle.remove()
    expected = wanda_keep_mask(weight.weight.t(), inputs[0].square().sum(0), n_m=(2, 4)).t()
    masks = prune(model, SparsityConfig(method="wanda", pattern="2:4"), ids)
    assert weight.weight.shape == (16, 64)  # Conv1D: (in, out)
    assert torch.equal(masks.masks[weight.name], expected)


# ------------------------------------------------------------------------------------------ properties
shapes = st.tuples(st.integers(1, 6), st.integers(1, 4).map(lambda k: 4 * k))


@settings(max_examples=60, deadline=None)
@given(shape=shapes, s1=st.floats(0, 0.99), s2=st.floats(0, 0.99), seed=st.integers(0, 2**16))
def test_exact_counts_and_nested_masks_for_fixed_statistics(shape, s1, s2, seed):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randint(-3, 4, shape, generator=generator).float()  # many ties
    sum_sq = torch.randint(0, 3, (shape[1],), generator=generator).float()  # dead inputs too
    low, high = sorted((s1, s2))
    keep_low = wanda_keep_mask(weight, sum_sq, low)
    keep_high = wanda_keep_mask(weight, sum_sq, high)
    assert int((~keep_low).sum()) == target_zeros(low, weight.numel())
    assert int((~keep_high).sum()) == target_zeros(high, weight.numel())
    assert not bool((~keep_low & keep_high).any())  # every zero at low sparsity stays a zero


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 5),
    groups=st.integers(1, 4),
    n_m=st.sampled_from([(1, 4), (2, 4), (3, 4), (1, 8), (4, 8), (7, 8)]),
    seed=st.integers(0, 2**16),
)
def test_n_m_holds_in_every_group(rows, groups, n_m, seed):
    n, m = n_m
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randint(-2, 3, (rows, groups * m), generator=generator).float()
    sum_sq = torch.randint(0, 3, (groups * m,), generator=generator).float()
    keep = wanda_keep_mask(weight, sum_sq, n_m=n_m)
    assert torch.equal(keep.view(rows, groups, m).sum(-1), torch.full((rows, groups), n))


@settings(max_examples=15, deadline=None)
@given(
    sparsity=st.floats(0, 0.95),
    scope=st.sampled_from(["layer", "global"]),
    seed=st.integers(0, 100),
)
def test_prune_gives_exact_counts_on_a_model(sparsity, scope, seed):
    model = TwoBlocks()
    ids = torch.randint(0, 16, (2, 5), generator=torch.Generator().manual_seed(seed))
    masks = prune(model, SparsityConfig(method="wanda", sparsity=sparsity, scope=scope), ids)
    if scope == "global":
        assert masks.num_zeros() == target_zeros(sparsity, masks.num_weights())
    else:  # layer scope: the total exact, each layer within one zero of its share (layer_zero_counts)
        assert masks.num_zeros() == target_zeros(sparsity, masks.num_weights())
        for name in masks:
            assert abs(masks.num_zeros(name) - sparsity * masks.num_weights(name)) <= 1
    parameters = dict(model.named_parameters())
    for name in masks:
        assert bool((parameters[name][~masks.masks[name]] == 0).all())
