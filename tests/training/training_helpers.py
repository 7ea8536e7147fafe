"""Tiny models, data and recorders shared by the training tests (a module, not a conftest: importable)."""

from __future__ import annotations

import tiny_models
import torch
from transformers import TrainerCallback, TrainingArguments

from hf_junkdna.training import SparseTrainingArguments


def tiny_bert(seed: int = 0, layers: int = 2, hidden: int = 32, intermediate: int = 64):
    """The shared tiny BERT classifier (tests/tiny_models.py), in train mode as a fresh model is."""
    return tiny_models.tiny_bert(seed=seed, layers=layers, hidden=hidden, intermediate=intermediate).train()


class TokenData(torch.utils.data.Dataset):
    """Random token sequences with a learnable label (whether token 0 is in the upper half of the vocabulary)."""

    def __init__(self, n: int = 64, length: int = 16, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 128, (n, length), generator=generator)
        self.labels = (self.ids[:, 0] >= 64).long()

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        return {"input_ids": self.ids[index], "labels": self.labels[index]}


COMMON = dict(
    per_device_train_batch_size=8,
    learning_rate=5e-3,
    report_to=[],
    logging_steps=1,
    save_strategy="no",
    use_cpu=True,
    disable_tqdm=True,
    seed=0,
    data_seed=0,
)


def training_args(tmp_path, sparse: bool = True, **overrides):
    values = {**COMMON, "output_dir": str(tmp_path / "out"), "max_steps": 6, **overrides}
    return SparseTrainingArguments(**values) if sparse else TrainingArguments(**values)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: parameter.detach().clone() for name, parameter in model.named_parameters()}


class StepRecorder(TrainerCallback):
    """Calls ``check(model, optimizer, step)`` after every optimizer step (and once before the first)."""

    def __init__(self, check, before_first=None):
        self.check, self.before_first, self.steps = check, before_first, 0

    @torch.no_grad()
    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.before_first is not None:
            self.before_first(model, optimizer)

    @torch.no_grad()
    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.steps += 1
        self.check(model, optimizer, state.global_step)


def inner_optimizer(optimizer):
    while hasattr(optimizer, "optimizer") and optimizer.optimizer is not optimizer:
        optimizer = optimizer.optimizer
    return optimizer


def optimizer_state(optimizer, parameter) -> dict[str, torch.Tensor]:
    state = inner_optimizer(optimizer).state.get(parameter, {})
    return {key: value for key, value in state.items() if torch.is_tensor(value) and value.shape == parameter.shape}
