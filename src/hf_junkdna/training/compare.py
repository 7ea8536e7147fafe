"""The study's central comparison in miniature: one model fine-tuned four ways, accuracy side by side.

``run_regime_comparison()`` fine-tunes the packaged all-MiniLM-L6-v2 on real movie-review sentiment
(``hf_junkdna.offline.rotten_tomatoes``) under each regime at the same sparsity and recipe, so that the
small weights are the only difference, and returns ``{regime: held-out accuracy}``. Everything is offline;
it takes a few minutes on a 2-core CPU with the defaults.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .args import REGIMES, SparseTrainingArguments
from .trainer import SparseTrainer


class _Encoded(torch.utils.data.Dataset):
    def __init__(self, encodings: dict, labels: list[int]):
        self.encodings, self.labels = encodings, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        item = {key: values[index] for key, values in self.encodings.items()}
        item["labels"] = self.labels[index]
        return item


def check_split_sizes(num_train: int, num_eval: int, per_label: dict[int, int]) -> None:
    """Raise a ValueError naming the argument unless balanced, disjoint splits of ``num_train`` and ``num_eval``
    rows fit in the rows available per label (``{label: count}``)."""
    for name, value in (("num_train", num_train), ("num_eval", num_eval)):
        if value < 1:
            raise ValueError(f"{name}={value}: must be >= 1")
    total = sum(per_label.values())
    counts = ", ".join(f"{count} of label {label}" for label, count in sorted(per_label.items()))
    for label, half_train, half_eval in (
        (0, num_train // 2, num_eval // 2),
        (1, num_train - num_train // 2, num_eval - num_eval // 2),
    ):
        if half_train + half_eval > per_label.get(label, 0):
            raise ValueError(
                f"num_train={num_train} + num_eval={num_eval}: the packaged Rotten Tomatoes sentences hold {total} "
                f"rows ({counts}), and the balanced, disjoint splits need {half_train} + {half_eval} of label "
                f"{label}; at most {2 * min(per_label.values())} rows in all (num_train + num_eval)"
            )


def sentiment_splits(tokenizer, num_train: int, num_eval: int, max_length: int, seed: int = 0):
    """Balanced, disjoint train / held-out splits of the packaged Rotten Tomatoes sentences."""
    from ..offline import rotten_tomatoes

    rows = [row for row in rotten_tomatoes() if row["label"] in (0, 1)]
    random.Random(seed).shuffle(rows)
    by_label = {label: [row for row in rows if row["label"] == label] for label in (0, 1)}
    check_split_sizes(num_train, num_eval, {label: len(members) for label, members in by_label.items()})
    train = by_label[0][: num_train // 2] + by_label[1][: num_train - num_train // 2]
    held_out = (
        by_label[0][num_train // 2 :][: num_eval // 2]
        + by_label[1][num_train - num_train // 2 :][: num_eval - num_eval // 2]
    )
    random.Random(seed + 1).shuffle(train)

    def encode(split):
        encodings = tokenizer([row["text"] for row in split], truncation=True, max_length=max_length)
        return _Encoded(dict(encodings), [row["label"] for row in split])

    return encode(train), encode(held_out)


def run_regime_comparison(
    regimes: Sequence[str] = REGIMES,
    sparsity: float = 0.5,
    num_train: int = 480,
    num_eval: int = 256,
    max_length: int = 48,
    num_train_epochs: float = 2.0,
    learning_rate: float = 1e-4,
    batch_size: int = 16,
    seed: int = 0,
    model_path: str | None = None,
    output_dir: str | None = None,
    on_trained: Callable[[str, SparseTrainer], None] | None = None,
) -> dict[str, float]:
    """Fine-tune under each regime and return ``{regime: accuracy on the held-out sentences}``.

    ``sparsity`` is the pruned fraction for "sparse"/"sparse_to_dense" and the frozen fraction for
    "freeze". ``on_trained(regime, trainer)`` is called after each run (tests check invariants there).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    from ..offline import minilm_path

    unknown = [regime for regime in regimes if regime not in REGIMES]
    if unknown:
        raise ValueError(f"regimes: {unknown} are not regimes; choose from {REGIMES}")
    model_path = model_path or str(minilm_path())
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    train, held_out = sentiment_splits(tokenizer, num_train, num_eval, max_length, seed)
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="junkdna-compare-") as scratch:
        for regime in regimes:
            torch.manual_seed(seed)  # the same classifier initialisation for every regime
            model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
            amount = (
                {}
                if regime == "dense"
                else ({"freeze_fraction": sparsity} if regime == "freeze" else {"sparsity": sparsity})
            )
            args = SparseTrainingArguments(
                output_dir=f"{output_dir or scratch}/{regime}",
                regime=regime,
                num_train_epochs=num_train_epochs,
                learning_rate=learning_rate,
                warmup_steps=0.1,
                weight_decay=0.01,
                per_device_train_batch_size=batch_size,
                per_device_eval_batch_size=64,
                save_strategy="no",
                logging_strategy="no",
                report_to=[],
                disable_tqdm=True,
                seed=seed,
                data_seed=seed,
                use_cpu=not torch.cuda.is_available(),
                **amount,
            )
            trainer = SparseTrainer(
                model,
                args,
                train_dataset=train,
                data_collator=DataCollatorWithPadding(tokenizer),
                processing_class=tokenizer,
            )
            trainer.train()
            prediction = trainer.predict(held_out)
            accuracy = float(np.mean(np.argmax(prediction.predictions, axis=-1) == prediction.label_ids))
            results[regime] = accuracy
            if on_trained is not None:
                on_trained(regime, trainer)
            del trainer, model
    return results


def format_comparison(results: dict[str, float]) -> str:
    """A two-line table: regimes and their accuracies."""
    header = " ".join(f"{regime:>16s}" for regime in results)
    values = " ".join(f"{accuracy:16.3f}" for accuracy in results.values())
    return f"{header}\n{values}"
