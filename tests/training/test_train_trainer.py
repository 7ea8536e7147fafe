"""SparseTrainer as a drop-in Trainer: identical when dense, logs sparsity, saves masks, calibrates."""

import os

import pytest
import torch
from training.training_helpers import TokenData, tiny_bert, training_args
from transformers import Trainer, TrainerCallback

from hf_junkdna import MaskSet
from hf_junkdna.training import MASKS_NAME, SparseTrainer
from hf_junkdna.training import trainer as trainer_module


def _train(trainer_class, tmp_path, sparse_args=False, **kwargs):
    model = tiny_bert()
    args = training_args(tmp_path, sparse=sparse_args, max_steps=4, weight_decay=0.1, max_grad_norm=0.5)
    trainer = trainer_class(model, args, train_dataset=TokenData(), **kwargs)
    trainer.train()
    return model, trainer


@pytest.mark.parametrize("sparse_args", [False, True], ids=["TrainingArguments", "SparseTrainingArguments-dense"])
def test_dense_sparse_trainer_is_the_stock_trainer(tmp_path, sparse_args):
    reference, _ = _train(Trainer, tmp_path)
    model, trainer = _train(SparseTrainer, tmp_path, sparse_args=sparse_args)
    assert trainer.regime == "dense" and trainer.masks is None and trainer.regime_callback is None
    for (name, expected), (_, actual) in zip(reference.named_parameters(), model.named_parameters()):
        assert torch.equal(expected, actual), name
    assert not any("sparsity" in entry for entry in trainer.state.log_history)


class LogRecorder(TrainerCallback):
    """Stands in for a report_to integration: those see exactly the logs on_log receives."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def test_sparsity_reaches_the_integrations_and_masks_are_saved(tmp_path):
    recorder = LogRecorder()
    model = tiny_bert()
    args = training_args(
        tmp_path, regime="sparse", sparsity=0.5, max_steps=4, logging_steps=2, save_strategy="steps", save_steps=2
    )
    trainer = SparseTrainer(model, args, train_dataset=TokenData(), callbacks=[recorder])
    trainer.train()
    training_logs = [logs for logs in recorder.logs if "loss" in logs]
    assert len(training_logs) == 2
    assert all(logs["sparsity"] == pytest.approx(0.5, abs=1e-6) for logs in training_logs)
    assert all(logs["trainable_fraction"] == pytest.approx(0.5, abs=1e-6) for logs in training_logs)
    for step in (2, 4):  # every checkpoint holds the masks
        saved = MaskSet.load(tmp_path / "out" / f"checkpoint-{step}" / MASKS_NAME)
        assert saved == trainer.masks and saved.metadata["regime"] == "sparse"
    trainer.save_model(str(tmp_path / "final"))
    assert MaskSet.load(tmp_path / "final" / MASKS_NAME) == trainer.masks
    assert not [name for name in os.listdir(tmp_path / "final") if name.endswith(".tmp")]  # atomic writes


def test_calibration_from_the_train_dataset_through_the_collator(tmp_path, monkeypatch):
    seen = {}
    real_prune = trainer_module.prune

    def spy(model, config, calibration_data=None):
        seen["data"] = calibration_data
        return real_prune(model, config, calibration_data=calibration_data)

    monkeypatch.setattr(trainer_module, "prune", spy)
    model = tiny_bert()
    args = training_args(
        tmp_path, regime="sparse", sparsity_method="wanda", sparsity=0.5, num_calibration_samples=12, max_steps=1
    )
    trainer = SparseTrainer(model, args, train_dataset=TokenData())
    batches = seen["data"]
    assert [batch["input_ids"].shape for batch in batches] == [torch.Size([8, 16]), torch.Size([4, 16])]
    assert all("labels" not in batch for batch in batches)
    assert torch.equal(torch.cat([batch["input_ids"] for batch in batches]), TokenData().ids[:12])
    assert trainer.masks.sparsity() == pytest.approx(0.5, abs=1e-6)
    trainer.train()


def test_calibration_data_given_is_used_as_is(tmp_path, monkeypatch):
    seen = {}
    real_prune = trainer_module.prune

    def spy(model, config, calibration_data=None):
        seen["data"] = calibration_data
        return real_prune(model, config, calibration_data=calibration_data)

    monkeypatch.setattr(trainer_module, "prune", spy)
    data = [TokenData(4, seed=3).ids]
    args = training_args(tmp_path, regime="sparse_to_dense", sparsity_method="wanda", max_steps=1)
    SparseTrainer(tiny_bert(), args, train_dataset=TokenData(), calibration_data=data)
    assert seen["data"] is data
