"""Regime "sparse": pruned weights exactly 0 after every optimizer step, kept weights train, moments stay 0."""

import pytest
import torch
from training.training_helpers import StepRecorder, TokenData, optimizer_state, snapshot, tiny_bert, training_args

from hf_junkdna.training import SparseRegimeCallback, SparseTrainer


def _sparse_checks(masks, start, failures, moved):
    def check(model, optimizer, step):
        parameters = dict(model.named_parameters())
        for name in masks.names():
            keep = masks.get(name)
            weight = parameters[name]
            if not bool((weight[~keep] == 0).all()):
                failures.append(f"step {step}: {name} has non-zero pruned weights")
            for key, value in optimizer_state(optimizer, weight).items():
                if not bool((value[~keep] == 0).all()):
                    failures.append(f"step {step}: {name} optimizer state {key} non-zero at pruned positions")
            moved[name] = bool((weight[keep] != start[name][keep]).any())

    return check


def test_sparse_invariants_every_step_with_accumulation_and_clipping(tmp_path):
    model = tiny_bert()
    args = training_args(
        tmp_path,
        regime="sparse",
        sparsity=0.5,
        gradient_accumulation_steps=2,
        max_grad_norm=0.5,
        weight_decay=0.1,
        max_steps=4,
    )
    trainer = SparseTrainer(model, args, train_dataset=TokenData())
    masks = trainer.masks
    assert masks.sparsity() == pytest.approx(0.5, abs=1e-6)
    start, failures, moved = snapshot(model), [], {}
    recorder = StepRecorder(_sparse_checks(masks, start, failures, moved))
    trainer.add_callback(recorder)
    trainer.train()
    assert recorder.steps == 4
    assert not failures, failures[:5]
    assert all(moved.values()), [name for name, did in moved.items() if not did]
    assert trainer.regime_callback.binding is None  # unbound after training: no parameter references kept
    logged = [entry for entry in trainer.state.log_history if "sparsity" in entry]
    assert logged and all(entry["sparsity"] == pytest.approx(0.5, abs=1e-6) for entry in logged)


@pytest.mark.parametrize("grad_hooks", [True, False], ids=["grad-hooks", "pre-step-only"])
def test_stock_trainer_with_sparse_callback(tmp_path, grad_hooks):
    from transformers import Trainer

    from hf_junkdna import SparsityConfig, prune

    model = tiny_bert()
    masks = prune(model, SparsityConfig(sparsity=0.6, scope="layer"))
    failures, moved = [], {}
    trainer = Trainer(
        model,
        training_args(
            tmp_path, sparse=False, gradient_accumulation_steps=2, max_grad_norm=0.5, weight_decay=0.1, max_steps=3
        ),
        train_dataset=TokenData(),
        callbacks=[SparseRegimeCallback(masks, grad_hooks=grad_hooks)],
    )
    trainer.add_callback(StepRecorder(_sparse_checks(masks, snapshot(model), failures, moved)))
    trainer.train()
    assert not failures, failures[:5]
    assert all(moved.values())


def _pruned_grad_at_clipping(trainer, masks) -> float:
    """Train one step; return the largest |gradient| at a pruned position when clipping reads the gradients."""
    seen = []
    clip = trainer.accelerator.clip_grad_norm_

    def recording_clip(parameters, max_norm, *args, **kwargs):
        named = dict(trainer.model.named_parameters())
        seen.append(max(float(named[n].grad[~masks.get(n)].abs().max()) for n in masks.names()))
        return clip(parameters, max_norm, *args, **kwargs)

    trainer.accelerator.clip_grad_norm_ = recording_clip
    trainer.train()
    return max(seen)


def test_clipping_sees_the_sparse_gradient(tmp_path):
    """SparseTrainer masks right before clipping and gradient hooks mask during backward, so the clipped norm
    is the sparse model's; masking in the pre-step hook alone leaves the pruned positions in the norm."""
    from transformers import Trainer

    def trainers():
        model = tiny_bert()
        trainer = SparseTrainer(
            model, training_args(tmp_path, regime="sparse", max_steps=1), train_dataset=TokenData()
        )
        yield trainer, trainer.masks
        for grad_hooks in (True, False):
            model = tiny_bert()
            masks = SparseTrainer(model, training_args(tmp_path, regime="sparse"), train_dataset=TokenData()).masks
            callback = SparseRegimeCallback(masks, grad_hooks=grad_hooks)
            args = training_args(tmp_path, sparse=False, max_steps=1)
            yield Trainer(model, args, train_dataset=TokenData(), callbacks=[callback]), masks

    sparse_trainer, with_hooks, pre_step_only = (_pruned_grad_at_clipping(*pair) for pair in trainers())
    assert sparse_trainer == 0.0
    assert with_hooks == 0.0
    assert pre_step_only > 0.0  # the negative control: the same check does see dense gradients


def test_sparse_with_optimizer_not_known_to_keep_zeros_rezeroes(tmp_path):
    """Adagrad is not in optim_facts' list: the post-step re-zeroing path must hold the invariant."""
    model = tiny_bert()
    trainer = SparseTrainer(
        model,
        training_args(tmp_path, regime="sparse", sparsity=0.7),
        train_dataset=TokenData(),
        optimizers=(None, None),
        optimizer_cls_and_kwargs=(torch.optim.Adagrad, {"lr": 0.05, "weight_decay": 0.1}),
    )
    failures, moved = [], {}
    trainer.add_callback(StepRecorder(_sparse_checks(trainer.masks, snapshot(model), failures, moved)))
    trainer.train()
    assert trainer.regime_callback._rezero is True  # Adagrad is not known to keep zeros: re-zero path
    assert not failures, failures[:5]
    assert all(moved.values())


def test_custom_training_loop_bind(tmp_path):
    """Outside any Trainer: bind to a plain torch optimizer, train, unbind."""
    from hf_junkdna import SparsityConfig, prune

    model = tiny_bert()
    masks = prune(model, SparsityConfig(sparsity=0.5))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    callback = SparseRegimeCallback(masks)
    callback.bind(model, optimizer)
    data = TokenData(16)
    for _ in range(3):
        loss = model(input_ids=data.ids, labels=data.labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    callback.unbind()
    parameters = dict(model.named_parameters())
    for name in masks.names():
        assert bool((parameters[name][~masks.get(name)] == 0).all())


def test_a_skipped_optimizer_step_does_not_leave_gradients_unmasked():
    """fp16 loss scaling skips optimizer steps (no step hooks run); the next step's gradients still get masked."""
    from hf_junkdna import SparsityConfig, prune

    model = tiny_bert()
    masks = prune(model, SparsityConfig(sparsity=0.5))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    callback = SparseRegimeCallback(masks, grad_hooks=False)
    binding = callback.bind(model, optimizer)
    data = TokenData(8)
    for _ in range(2):  # as SparseTrainer does each step: step begin, backward, mask before clipping
        callback.on_step_begin(None, None, None)
        model(input_ids=data.ids, labels=data.labels).loss.backward()
        binding.mask_grads(mark=True)
        parameters = dict(model.named_parameters())
        for name in masks.names():
            assert bool((parameters[name].grad[~masks.get(name)] == 0).all()), name
        optimizer.zero_grad()  # the step was skipped: no optimizer.step(), so no post-step hook
    callback.unbind()
