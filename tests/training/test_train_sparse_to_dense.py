"""Regime "sparse_to_dense": pruned weights start at 0, are released gradually, start fresh when released."""

import math

import pytest
import torch
from training.training_helpers import StepRecorder, TokenData, optimizer_state, tiny_bert, training_args

from hf_junkdna.training import SparseToDenseRegimeCallback, SparseTrainer
from hf_junkdna.training import schedule as regrowth
from hf_junkdna.training.bitops import count_set, keep_bool


def test_release_schedule_from_zero_to_all(tmp_path):
    model = tiny_bert()
    args = training_args(
        tmp_path, regime="sparse_to_dense", sparsity=0.5, max_steps=8, regrowth_end_fraction=0.5, weight_decay=0.1
    )
    trainer = SparseTrainer(model, args, train_dataset=TokenData())
    masks, callback = trainer.masks, trainer.regime_callback
    failures, trainable = [], []
    previous = {}

    def before_first(model, optimizer):
        parameters = dict(model.named_parameters())
        for name in masks.names():  # step 0: pruned weights are 0
            assert bool((parameters[name][~masks.get(name)] == 0).all()), name

    def after_step(model, optimizer, step):
        binding = callback.binding
        parameters = dict(model.named_parameters())
        weights, zeros, bits = binding.count()
        trainable.append(bits / weights)
        for entry in binding.entries:
            now = keep_bool(entry.bits, entry.numel, entry.tensor.shape)
            before = previous.get(entry.name, masks.get(entry.name))
            if bool((before & ~now).any()):
                failures.append(f"step {step}: {entry.name} took a weight back")
            newly = now & ~before
            # at the moment of release: weight 0, optimizer state 0 (nothing stale)
            if not bool((parameters[entry.name][newly] == 0).all()):
                failures.append(f"step {step}: {entry.name} released a non-zero weight")
            for key, value in optimizer_state(optimizer, parameters[entry.name]).items():
                if not bool((value[~now] == 0).all()):
                    failures.append(f"step {step}: {entry.name} {key} non-zero at a not-yet-trainable position")
            previous[entry.name] = now

    trainer.add_callback(StepRecorder(after_step, before_first))
    trainer.train()
    assert not failures, failures[:5]
    # linear over the first half of 8 steps: 1/4, 1/2, 3/4 of the pruned weights released, then all
    pruned = 0.5
    expected = [1 - pruned + pruned * min(1.0, step / 4) for step in range(1, 9)]
    assert trainable == pytest.approx(expected, abs=0.01)
    # by the end every pruned weight was trainable and most moved off 0
    parameters = dict(model.named_parameters())
    moved = torch.cat([(parameters[n][~masks.get(n)] != 0).float() for n in masks.names()])
    assert float(moved.mean()) > 0.9
    logged = [entry["released_fraction"] for entry in trainer.state.log_history if "released_fraction" in entry]
    assert logged[0] == pytest.approx(0.25, abs=0.01) and logged[-1] == 1.0


@pytest.mark.parametrize("schedule", ["linear", "cosine", "step"])
def test_schedules_monotone_from_zero_to_one(schedule):
    fractions = [regrowth.released_fraction(step, 100, schedule, 0.4, stages=4) for step in range(101)]
    assert fractions[0] == 0.0 and fractions[40] == 1.0 and fractions[-1] == 1.0
    assert all(a <= b for a, b in zip(fractions, fractions[1:]))
    if schedule == "step":
        assert sorted(set(fractions)) == [0.0, 0.25, 0.5, 0.75, 1.0]
    if schedule == "cosine":
        assert fractions[20] == pytest.approx(0.5)


def test_release_order_is_deterministic_nested_and_exact_per_byte():
    seed = regrowth.parameter_seed("layer.weight", 0)
    ranks = regrowth.byte_ranks(1000, 0, seed)
    assert torch.equal(ranks, regrowth.byte_ranks(1000, 0, seed))  # same in every call (and process)
    assert torch.equal(ranks[500:], regrowth.byte_ranks(500, 500, seed))  # a shard computes its own part
    assert not torch.equal(ranks, regrowth.byte_ranks(1000, 0, regrowth.parameter_seed("other.weight", 0)))
    previous = torch.zeros(1000, dtype=torch.uint8)
    for level in range(0, regrowth.LEVELS + 1, 8):
        bits = regrowth.released_bits(ranks, level)
        assert torch.equal(bits & previous, previous)  # released sets only grow
        per_byte = keep_bool(bits, 8000).view(1000, 8).sum(dim=1)
        assert int(per_byte.min()) >= math.floor(level / 32) and int(per_byte.max()) <= math.ceil(level / 32)
        previous = bits
    assert count_set(regrowth.released_bits(ranks, regrowth.LEVELS)) == 8000


def test_stock_trainer_with_sparse_to_dense_callback(tmp_path):
    from transformers import Trainer

    from hf_junkdna import SparsityConfig, prune

    model = tiny_bert()
    masks = prune(model, SparsityConfig(sparsity=0.5))
    callback = SparseToDenseRegimeCallback(masks, schedule="step", end_fraction=1.0, stages=2)
    trainable = []
    recorder = StepRecorder(lambda model, optimizer, step: trainable.append(callback.binding.count()[2]))
    trainer = Trainer(
        model,
        training_args(tmp_path, sparse=False, max_steps=4, weight_decay=0.1),
        train_dataset=TokenData(),
        callbacks=[callback, recorder],
    )
    trainer.train()
    total = masks.num_weights()
    # two stages over 4 steps: half the pruned weights from step 2, all from step 4
    assert trainable[0] == total - masks.num_zeros()
    assert trainable[1] / total == pytest.approx(0.75, abs=0.01)
    assert trainable[-1] == total


def test_custom_loop_with_a_weight_size_8_does_not_divide():
    """13 weights: the padding bits of the last mask byte must stay clear, and everything is released."""
    from hf_junkdna import MaskSet

    model = torch.nn.Linear(13, 1, bias=False)
    keep = torch.zeros(1, 13, dtype=torch.bool)
    keep[0, :4] = True
    with torch.no_grad():
        model.weight.mul_(keep)
    masks = MaskSet({"weight": keep})
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    callback = SparseToDenseRegimeCallback(masks, end_fraction=1.0)
    binding = callback.bind(model, optimizer, max_steps=2)
    assert binding.count() == (13, 9, 4)
    for _ in range(2):
        model(torch.randn(4, 13)).pow(2).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert binding.count()[2] == 13
    assert int(binding.entries[0].bits[-1]) >> 5 == 0  # padding bits of the last byte clear
    callback.unbind()


def test_schedule_follows_the_trainers_step_count_over_skipped_steps():
    """An optimizer step skipped by fp16 loss scaling runs no post-step hook, but the Trainer's global_step
    advances: the release level must then be the one a run resumed at that step would have."""
    from types import SimpleNamespace

    from hf_junkdna import MaskSet

    def run(bound_at: int, skipped: int):
        torch.manual_seed(0)
        model = torch.nn.Linear(64, 8, bias=False)
        keep = torch.rand(8, 64) > 0.5
        with torch.no_grad():
            model.weight.mul_(keep)
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
        callback = SparseToDenseRegimeCallback(MaskSet({"weight": keep}), end_fraction=1.0)
        binding = callback.bind(model, optimizer, step=bound_at, max_steps=8)
        state = SimpleNamespace(global_step=bound_at + skipped)  # steps the Trainer counted, hooks never ran
        callback.on_step_begin(None, state, None)
        model(torch.randn(4, 64)).pow(2).sum().backward()
        optimizer.step()
        return int(binding.count()[2]), callback.statistics()["released_fraction"]

    assert run(bound_at=0, skipped=5) == run(bound_at=5, skipped=0)  # both end after step 6 of 8
    assert run(bound_at=0, skipped=5) != run(bound_at=0, skipped=0)
