"""Calibration batches for Wanda/SparseGPT, drawn from the Trainer's train dataset through its own collator."""

from __future__ import annotations

from itertools import islice

import torch
from torch.utils.data import IterableDataset


def calibration_batches(trainer, num_samples: int) -> list[dict[str, torch.Tensor]]:
    """The first ``num_samples`` training examples, collated as the Trainer would, labels dropped.

    The first examples (not a random draw) so that every process, and every rerun, calibrates on the same
    data and prunes the same weights. Batches have the per-device training batch size and stay on the
    CPU (the pruning code moves what it needs).
    """
    dataset = trainer.train_dataset
    if dataset is None:
        raise ValueError(
            "calibration_data: the pruning method scores weights by their input activations, but there is no "
            "train_dataset to draw calibration examples from; pass train_dataset or calibration_data"
        )
    collator = trainer.data_collator
    try:
        import datasets

        is_hf_dataset = isinstance(dataset, datasets.Dataset)
    except ImportError:  # pragma: no cover - datasets is a dependency
        is_hf_dataset = False
    if is_hf_dataset:
        dataset = trainer._remove_unused_columns(dataset, description="calibration")
    else:
        collator = trainer._get_collator_with_removed_columns(collator, description="calibration")
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        examples = list(islice(iter(dataset), num_samples))
    else:
        examples = [dataset[index] for index in range(min(num_samples, len(dataset)))]
    if not examples:
        raise ValueError("calibration_data: the train_dataset is empty, nothing to calibrate on")
    batch_size = max(1, trainer.args.per_device_train_batch_size)
    labels = set(trainer.label_names or ()) | {"labels", "label", "label_ids"}
    batches = []
    for start in range(0, len(examples), batch_size):
        batch = collator(examples[start : start + batch_size])
        batches.append({key: value for key, value in batch.items() if key not in labels and torch.is_tensor(value)})
    return batches
