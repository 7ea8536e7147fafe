"""SparseGPT: OBS reconstruction by hand, least squares vs magnitude, exact counts, N:M, dead inputs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import tiny_gpt2, tiny_llama
from torch import nn

from hf_junkdna import SparsityConfig, find_blocks, find_prunable_weights, prune
from hf_junkdna.pruning.selection import select_n_m, select_smallest, target_zeros
from hf_junkdna.pruning.sparsegpt import _inverse_cholesky_upper, sparsegpt_prune


class OneLayer(nn.Module):
    """One block with one bias-free Linear; token id t embeds to row t of ``tokens``."""

    def __init__(self, tokens: torch.Tensor, weight: torch.Tensor):
        super().__init__()
        self.embed = nn.Embedding(*tokens.shape)
        self.layers = nn.ModuleList([nn.Sequential(nn.Linear(weight.shape[1], weight.shape[0], bias=False))])
        with torch.no_grad():
            self.embed.weight.copy_(tokens)
            self.layers[0][0].weight.copy_(weight)

    def forward(self, input_ids, attention_mask=None):
        hidden = self.embed(input_ids)
        for block in self.layers:
            hidden = block(hidden)
        return hidden


def test_uncorrelated_inputs_by_hand():
    """Diagonal H: no compensation, the saliency is w_j^2 * H_jj (U = diag(1/sqrt(H_jj)))."""
    weight = torch.tensor([[3.0, 1.0, 2.0, 4.0]])
    hessian = torch.diag(torch.tensor([1.0, 25.0, 4.0, 0.25]))
    # saliencies 9*1 = 9, 1*25 = 25, 4*4 = 16, 16*0.25 = 4: 50 % prunes j=3 (4) and j=0 (9);
    # magnitude would prune the opposite pair (|1| and |2|).
    keep, updated = sparsegpt_prune(weight, hessian, 0.5, block_size=4, dampening=1e-6)
    assert torch.equal(keep, torch.tensor([[False, True, True, False]]))
    torch.testing.assert_close(updated, torch.tensor([[0.0, 1.0, 2.0, 0.0]]))


# Two inputs, H = [[a, b], [b, a]] with a = 2, b = 1.5, weight [1, 1], prune one of the two.
#   H^-1 = 1/(a^2 - b^2) [[a, -b], [-b, a]],  a^2 - b^2 = 1.75
#   upper Cholesky factor U of H^-1:  U_00 = sqrt(a / 1.75),  U_01 = -b / sqrt(a * 1.75),  U_11 = sqrt(1 / a)
#   saliency w^2 / U_jj^2:  j=0: 1.75 / 2 = 0.875,  j=1: 2  ->  prune j=0
#   error e = w_0 / U_00 = sqrt(0.875);  w_1 <- w_1 - e * U_01 = 1 + 1.5 * sqrt(0.875 / 3.5) = 1 + 0.75 = 1.75
#   (check: with w_0 = 0 the least-squares optimum of (w - w')^T H (w - w') is w_1' = 1 + b / a = 1.75)
HAND_HESSIAN = torch.tensor([[2.0, 1.5], [1.5, 2.0]])
HAND_WEIGHT = torch.tensor([[1.0, 1.0]])


def test_correlated_inputs_by_hand():
    keep, updated = sparsegpt_prune(HAND_WEIGHT, HAND_HESSIAN, 0.5, dampening=1e-7)
    assert torch.equal(keep, torch.tensor([[False, True]]))
    torch.testing.assert_close(updated, torch.tensor([[0.0, 1.75]]), atol=1e-4, rtol=0)
    assert updated[0, 0] == 0  # exactly


def test_correlated_inputs_by_hand_through_prune():
    # tokens t1 = sqrt(1.75) * [1, 1] and t2 = 0.5 * [1, -1]: t1 t1^T + t2 t2^T = [[2, 1.5], [1.5, 2]] and
    # H = 2/n * sum x x^T with n = 2 tokens is exactly HAND_HESSIAN.
    tokens = torch.stack([1.75**0.5 * torch.tensor([1.0, 1.0]), 0.5 * torch.tensor([1.0, -1.0])])
    model = OneLayer(tokens, HAND_WEIGHT)
    config = SparsityConfig(method="sparsegpt", sparsity=0.5, sparsegpt_dampening=1e-7)
    masks = prune(model, config, torch.tensor([[0, 1]]))
    assert torch.equal(masks.masks["layers.0.0.weight"], torch.tensor([[False, True]]))
    torch.testing.assert_close(model.layers[0][0].weight.detach(), torch.tensor([[0.0, 1.75]]), atol=1e-4, rtol=0)


def correlated_problem(rows=16, columns=32, tokens=256, seed=0):
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(columns, columns, generator=generator) * torch.logspace(0, -2, columns).unsqueeze(1)
    inputs = torch.randn(tokens, columns, generator=generator) @ mixing + 0.3 * torch.randn(
        1, columns, generator=generator
    )
    weight = torch.randn(rows, columns, generator=generator)
    return weight, inputs


def reconstruction_error(weight, pruned, inputs):
    return float(((weight - pruned) @ inputs.t()).norm())


@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "1:4"])
def test_least_squares_error_below_magnitude_at_the_same_count(pattern):
    weight, inputs = correlated_problem()
    hessian = inputs.t() @ inputs
    n_m = None if pattern == "unstructured" else tuple(int(x) for x in pattern.split(":"))
    keep, updated = sparsegpt_prune(weight, hessian, 0.5 if n_m is None else None, n_m, block_size=8)
    if n_m is None:
        (magnitude_keep,) = select_smallest([weight.abs()], target_zeros(0.5, weight.numel()))
    else:
        magnitude_keep = select_n_m(weight.abs(), *n_m)
    assert int((~keep).sum()) == int((~magnitude_keep).sum())
    sparse_error = reconstruction_error(weight, updated, inputs)
    magnitude_error = reconstruction_error(weight, weight * magnitude_keep, inputs)
    mask_only_error = reconstruction_error(weight, weight * keep, inputs)
    assert sparse_error < 0.9 * magnitude_error, (sparse_error, magnitude_error)
    assert sparse_error < mask_only_error  # the weight update helps beyond the mask choice
    assert bool((updated[~keep] == 0).all())
    assert not torch.equal(updated[keep], weight[keep])  # kept weights were updated


def test_block_size_does_not_change_the_count_and_one_block_is_best():
    weight, inputs = correlated_problem(rows=8, columns=24, seed=2)
    hessian = inputs.t() @ inputs
    errors = {}
    for block_size in (1, 5, 24, 128):
        keep, updated = sparsegpt_prune(weight, hessian, 0.4, block_size=block_size)
        assert int((~keep).sum()) == target_zeros(0.4, weight.numel())
        errors[block_size] = reconstruction_error(weight, updated, inputs)
    assert errors[24] == pytest.approx(errors[128])  # one block either way


def test_dead_inputs_are_pruned_first_and_stay_finite():
    _, inputs = correlated_problem(rows=4, columns=8, seed=3)
    inputs[:, 5] = 0  # feature 5 never fires on the calibration data
    hessian = inputs.t() @ inputs
    weight = torch.ones(4, 8)
    keep, updated = sparsegpt_prune(weight, hessian, 4 / 32, block_size=8)
    expected = torch.ones(4, 8, dtype=torch.bool)
    expected[:, 5] = False  # pruning a dead input costs nothing
    assert torch.equal(keep, expected)
    assert torch.isfinite(updated).all()


def test_all_inputs_dead_falls_back_to_magnitude_order():
    weight = torch.tensor([[0.5, -2.0, 1.0, 3.0], [-4.0, 0.1, 0.2, 1.5]])
    keep, updated = sparsegpt_prune(weight, torch.zeros(4, 4), 0.5)
    (magnitude_keep,) = select_smallest([weight.abs()], 4)
    assert torch.equal(keep, magnitude_keep)
    assert torch.equal(updated, weight * keep)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="hessian"):
        sparsegpt_prune(torch.ones(2, 4), torch.eye(3), 0.5)
    with pytest.raises(ValueError, match="N:M"):
        sparsegpt_prune(torch.ones(2, 6), torch.eye(6), n_m=(2, 4))
    with pytest.raises(ValueError, match="sparsity"):
        sparsegpt_prune(torch.ones(2, 4), torch.eye(4), 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        sparsegpt_prune(torch.ones(2, 2), torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), 0.5)


def test_input_is_not_modified_and_dtype_is_kept():
    weight, inputs = correlated_problem(rows=4, columns=16)
    original = weight.clone()
    keep, updated = sparsegpt_prune(weight.to(torch.bfloat16), inputs.t() @ inputs, 0.5, block_size=4)
    assert torch.equal(weight, original)
    assert updated.dtype == torch.bfloat16
    assert bool((updated[~keep] == 0).all())
    assert int((~keep).sum()) == 32


# ------------------------------------------------------------------------------------------ properties
@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 6),
    columns=st.integers(1, 20),
    sparsity=st.floats(0, 0.99),
    block_size=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)
def test_exact_count_and_exact_zeros(rows, columns, sparsity, block_size, seed):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randint(-2, 3, (rows, columns), generator=generator).float()  # ties, zeros
    inputs = torch.randint(-1, 2, (max(2, columns // 2), columns), generator=generator).float()  # rank-deficient
    keep, updated = sparsegpt_prune(weight, inputs.t() @ inputs, sparsity, block_size=block_size)
    assert int((~keep).sum()) == target_zeros(sparsity, rows * columns)
    assert bool((updated[~keep] == 0).all())
    assert torch.isfinite(updated).all()


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 6),
    groups=st.integers(1, 4),
    n_m=st.sampled_from([(1, 4), (2, 4), (3, 4), (1, 8), (4, 8), (7, 8)]),
    block_size=st.integers(1, 20),
    seed=st.integers(0, 2**16),
)
def test_n_m_holds_in_every_group(rows, groups, n_m, block_size, seed):
    n, m = n_m
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, groups * m, generator=generator)
    inputs = torch.randn(3 * groups * m, groups * m, generator=generator)
    keep, updated = sparsegpt_prune(weight, inputs.t() @ inputs, n_m=n_m, block_size=block_size)
    assert torch.equal(keep.view(rows, groups, m).sum(-1), torch.full((rows, groups), n))
    assert bool((updated[~keep] == 0).all())


# ---------------------------------------------------------------------------------------------- models
@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "4:8"])
def test_prune_a_model_exact_per_layer_and_kept_weights_updated(pattern):
    model = tiny_llama()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    data = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(1))
    config = SparsityConfig(method="sparsegpt", sparsity=0.5 if pattern == "unstructured" else None, pattern=pattern)
    masks = prune(model, config, data)
    parameters = dict(model.named_parameters())
    assert set(masks) == {w.name for w in find_prunable_weights(model)}
    assert masks.num_zeros() == target_zeros(config.sparsity, masks.num_weights())
    for name in masks:
        keep = masks.masks[name]
        assert abs(masks.num_zeros(name) - config.sparsity * keep.numel()) <= 1  # layer_zero_counts
        assert bool((parameters[name][~keep] == 0).all())
        assert not torch.equal(parameters[name][keep], before[name][keep])
        if pattern != "unstructured":
            n, m = config.n_m
            assert bool((keep.view(keep.shape[0], -1, m).sum(-1) == n).all())
    for name, parameter in parameters.items():  # embeddings, norms and head untouched
        if name not in masks:
            assert torch.equal(parameter, before[name]), name


def test_gpt2_conv1d_layers():
    model = tiny_gpt2()
    data = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))
    masks = prune(model, SparsityConfig(method="sparsegpt", pattern="2:4"), data)
    parameters = dict(model.named_parameters())
    for name in masks:
        keep = masks.masks[name]
        assert keep.shape == parameters[name].shape  # Conv1D (in, out)
        assert bool((keep.t().reshape(keep.shape[1], -1, 4).sum(-1) == 2).all())  # groups along the input
        assert bool((parameters[name][~keep] == 0).all())


@settings(max_examples=8, deadline=None)
@given(
    method=st.sampled_from(["wanda", "sparsegpt"]),
    failing_block=st.integers(0, 2),
    failing_call=st.integers(1, 2),  # the last block is entered twice (2 batches, statistics pass)
)
def test_model_untouched_when_a_block_fails(method, failing_block, failing_call):
    model = tiny_llama(layers=3)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    calls = {"n": 0}

    def fail(module, args, kwargs):
        calls["n"] += 1
        if calls["n"] == failing_call:
            raise RuntimeError("injected failure")

    handle = find_blocks(model)[failing_block][1].register_forward_pre_hook(fail, with_kwargs=True)
    data = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(1))
    try:
        with pytest.raises(RuntimeError, match="injected failure"):
            prune(model, SparsityConfig(method=method, sparsity=0.5), [data[:1], data[1:]])
    finally:
        handle.remove()
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, before[name]), name


def test_global_scope_takes_per_layer_counts_from_one_magnitude_ranking():
    model = tiny_llama()
    dense = {name: p.detach().clone() for name, p in model.named_parameters()}
    magnitude = prune(tiny_llama(), sparsity=0.6, scope="global")  # same seed: same dense weights
    data = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(1))
    masks = prune(model, SparsityConfig(method="sparsegpt", sparsity=0.6, scope="global"), data)
    assert masks.num_zeros() == target_zeros(0.6, masks.num_weights())  # exact over the whole model
    assert {n: masks.num_zeros(n) for n in masks} == {n: magnitude.num_zeros(n) for n in magnitude}
    assert len({round(masks.sparsity(n), 3) for n in masks}) > 1  # not uniform: the ranking decided
    parameters = dict(model.named_parameters())
    for name, keep in masks.items():
        assert not parameters[name][~keep].any()
        assert not torch.equal(parameters[name][keep], dense[name][keep])  # reconstructed within the layer


def test_global_scope_may_take_every_weight_of_a_layer():
    # k_proj's weights are 1000x smaller than the rest: the global ranking asks it for all of its weights
    model = tiny_llama(tie=False)
    with torch.no_grad():
        model.model.layers[0].self_attn.k_proj.weight.mul_(1e-3)
    data = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(1))
    masks = prune(model, SparsityConfig(method="sparsegpt", sparsity=0.5, scope="global"), data)
    name = "model.layers.0.self_attn.k_proj.weight"
    assert masks.sparsity(name) == 1.0
    assert not model.get_parameter(name).any()
    assert masks.num_zeros() == target_zeros(0.5, masks.num_weights())
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_every_weight_pruned_needs_no_hessian():
    weight = torch.randn(3, 8)
    keep, updated = sparsegpt_prune(weight, torch.full((8, 8), float("nan")), num_zeros=24)
    assert not keep.any()
    assert not updated.any() and updated.dtype == weight.dtype
    with pytest.raises(ValueError, match="num_zeros=25"):
        sparsegpt_prune(weight, torch.eye(8), num_zeros=25)


def test_hessian_errors_name_the_parameter_and_leave_the_model_untouched():
    model = tiny_llama()
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] = float("inf")  # down_proj sees inf/nan inputs
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    data = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.down_proj\.weight: the Hessian has non-finite"):
        prune(model, SparsityConfig(method="sparsegpt", sparsity=0.5), data)
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, before[name]), name
    # diag (1, -0.9): mean 0.05, so even 1000x the dampening leaves it indefinite
    with pytest.raises(ValueError, match=r"sparsegpt: layer\.weight: the Hessian is not positive definite"):
        _inverse_cholesky_upper(torch.diag(torch.tensor([1.0, -0.9])), 0.01, "layer.weight")
