"""Regime "freeze": frozen weights bit-identical to their pretrained values under AdamW with weight decay."""

import pytest
import torch
from training.training_helpers import TokenData, optimizer_state, snapshot, tiny_bert, training_args
from transformers import TrainerCallback

from hf_junkdna.training import FreezeRegimeCallback, SparseTrainer


def _frozen_report(model, masks, pretrained):
    """(names whose frozen weights moved, names whose trainable weights did not move)."""
    parameters = dict(model.named_parameters())
    moved, stuck = [], []
    for name in masks.names():
        keep = masks.get(name)
        weight = parameters[name].detach()
        if not torch.equal(weight[~keep], pretrained[name][~keep]):
            moved.append(name)
        if torch.equal(weight[keep], pretrained[name][keep]):
            stuck.append(name)
    return moved, stuck


def _train_freeze(tmp_path, callback_class=None, **overrides):
    model = tiny_bert()
    pretrained = snapshot(model)
    args = training_args(tmp_path, regime="freeze", freeze_fraction=0.5, weight_decay=0.1, **overrides)
    trainer = SparseTrainer(model, args, train_dataset=TokenData())
    if callback_class is not None:  # swap the regime callback for a variant under test
        trainer.remove_callback(trainer.regime_callback)
        trainer.regime_callback = callback_class(trainer.masks)
        trainer.add_callback(trainer.regime_callback)
    trainer.train()
    return trainer, model, pretrained


def test_frozen_weights_bit_identical_with_adamw_weight_decay(tmp_path):
    trainer, model, pretrained = _train_freeze(tmp_path, max_grad_norm=1.0, gradient_accumulation_steps=2)
    masks = trainer.masks
    assert masks.sparsity() == pytest.approx(0.5, abs=1e-6)  # half the prunable weights frozen
    # the frozen ones are the smallest in magnitude
    parameters = dict(model.named_parameters())
    frozen = torch.cat([pretrained[n][~masks.get(n)].abs() for n in masks.names()])
    kept = torch.cat([pretrained[n][masks.get(n)].abs() for n in masks.names()])
    assert frozen.max() <= kept.min()
    moved, stuck = _frozen_report(model, masks, pretrained)
    assert moved == []
    assert stuck == []
    # nothing is pruned, and the optimizer's moments at frozen positions are 0
    assert all(bool((parameters[n] != 0).all()) for n in masks.names())
    optimizer = trainer.optimizer
    for name in masks.names():
        for key, value in optimizer_state(optimizer, parameters[name]).items():
            assert bool((value[~masks.get(name)] == 0).all()), (name, key)
    # weights outside the masks (embeddings, classifier) trained with weight decay as usual
    assert not torch.equal(parameters["classifier.weight"], pretrained["classifier.weight"])
    # the fast path stores nothing but the packed masks: 1 bit per masked weight
    assert trainer.regime_callback.resident_bytes() <= masks.num_weights() / 8 + len(masks)


class UnguardedFreeze(FreezeRegimeCallback):
    _guard_weight_decay = False  # gradients masked, weight decay left to AdamW


def test_negative_control_without_weight_decay_handling_frozen_weights_move(tmp_path):
    """The check above can fail: with the weight-decay handling off, AdamW's decay moves frozen weights."""
    trainer, model, pretrained = _train_freeze(tmp_path, callback_class=UnguardedFreeze)
    moved, stuck = _frozen_report(model, trainer.masks, pretrained)
    assert sorted(moved) == sorted(trainer.masks.names())
    # the movement is the decay alone: gradients at frozen positions were masked
    parameters = dict(model.named_parameters())
    name = trainer.masks.names()[0]
    frozen = ~trainer.masks.get(name)
    shrink = parameters[name].detach()[frozen].abs() / pretrained[name][frozen].abs()
    assert bool((shrink < 1).all()) and bool((shrink > 0.99).all())


@pytest.mark.parametrize(
    "optimizer_cls, kwargs",
    [(torch.optim.Adam, {"lr": 5e-3, "weight_decay": 0.1}), (torch.optim.RMSprop, {"lr": 1e-3, "weight_decay": 0.1})],
    ids=["adam-l2", "rmsprop"],
)
def test_restore_path_for_other_optimizers(tmp_path, optimizer_cls, kwargs):
    """L2 decay (Adam) or an optimizer not in optim_facts: frozen values are stored (only they) and restored."""
    model = tiny_bert()
    pretrained = snapshot(model)
    args = training_args(tmp_path, regime="freeze", freeze_fraction=0.3, weight_decay=0.1)
    trainer = SparseTrainer(model, args, train_dataset=TokenData(), optimizer_cls_and_kwargs=(optimizer_cls, kwargs))
    sizes = []
    trainer.add_callback(_ResidentProbe(trainer.regime_callback, sizes))
    trainer.train()
    moved, stuck = _frozen_report(model, trainer.masks, pretrained)
    assert moved == [] and stuck == []
    masks = trainer.masks
    frozen_bytes = 4 * masks.num_zeros()
    assert max(sizes) == masks.resident_bytes() + frozen_bytes  # the frozen values, nothing more


class _ResidentProbe(TrainerCallback):
    def __init__(self, regime_callback, sizes):
        self.regime_callback, self.sizes = regime_callback, sizes

    def on_step_end(self, args, state, control, **kwargs):
        self.sizes.append(self.regime_callback.resident_bytes())


def test_stock_trainer_with_freeze_callback(tmp_path):
    from transformers import Trainer

    from hf_junkdna import SparsityConfig
    from hf_junkdna.pruning import get_criterion, prunable_weights_for

    model = tiny_bert()
    pretrained = snapshot(model)
    config = SparsityConfig(sparsity=0.4)
    masks = get_criterion("magnitude").compute_masks(prunable_weights_for(model, config), config)
    trainer = Trainer(
        model,
        training_args(tmp_path, sparse=False, weight_decay=0.1),
        train_dataset=TokenData(),
        callbacks=[FreezeRegimeCallback(masks)],
    )
    trainer.train()
    moved, stuck = _frozen_report(model, masks, pretrained)
    assert moved == [] and stuck == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_trainable_weights_of_frozen_tensors_get_exactly_adamws_decay(tmp_path, dtype):
    """One step from the same weights: every trainable position must equal the dense AdamW run's, bit for bit.
    In bf16 the taken-over decay 1 - lr*wd (0.997 here) must not be rounded to bf16 (0.99609375) first. The
    first Adam step moves every weight by lr, so lr is kept small against the weights (and wd large) for the
    decay's rounding to show in bf16 at all."""
    from transformers import Trainer

    settings = dict(max_steps=1, learning_rate=1e-4, weight_decay=30.0, max_grad_norm=0.0, optim="adamw_torch")
    dense_model = tiny_bert().to(dtype)
    Trainer(
        dense_model, training_args(tmp_path / "dense", sparse=False, **settings), train_dataset=TokenData()
    ).train()
    model = tiny_bert().to(dtype)
    pretrained = snapshot(model)
    args = training_args(tmp_path / "freeze", regime="freeze", freeze_fraction=0.5, **settings)
    trainer = SparseTrainer(model, args, train_dataset=TokenData())
    trainer.train()
    dense, frozen = dict(dense_model.named_parameters()), dict(model.named_parameters())
    for name in trainer.masks.names():
        keep = trainer.masks.get(name)
        assert torch.equal(frozen[name].detach()[keep], dense[name].detach()[keep]), name
        assert torch.equal(frozen[name].detach()[~keep], pretrained[name][~keep]), name
