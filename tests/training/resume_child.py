"""Child process of test_train_resume.py: train (and pause at a checkpoint to be killed), or resume and finish.

python resume_child.py MODEL_DIR OUTPUT_DIR REGIME {start,resume}
"""

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/ for the helpers

import torch  # noqa: E402
from training.training_helpers import TokenData, training_args  # noqa: E402
from transformers import BertForSequenceClassification, TrainerCallback  # noqa: E402

from hf_junkdna.training import SparseTrainer  # noqa: E402

PAUSE_AT = 4


class PauseAfterCheckpoint(TrainerCallback):
    """Runs after the checkpoint (masks included) is on disk: wait there for the parent's SIGKILL."""

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == PAUSE_AT:
            print(f"paused at checkpoint-{PAUSE_AT}", flush=True)
            time.sleep(300)


class Report(TrainerCallback):
    """At train begin (after the regime callback bound its masks): what the resumed process starts from."""

    def __init__(self, trainer, path):
        self.trainer, self.path = trainer, path

    @torch.no_grad()
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        binding = self.trainer.regime_callback.binding
        weights, zeros, trainable = binding.count()
        untrainable_are_zero = all(
            bool((entry.tensor.view(-1)[_clear(entry)] == 0).all()) for entry in binding.entries
        )
        with open(self.path, "w") as handle:
            json.dump(
                {
                    "global_step": state.global_step,
                    "trainable_fraction": trainable / weights,
                    "untrainable_are_zero": untrainable_are_zero,
                },
                handle,
            )


def _clear(entry):
    from hf_junkdna.training.bitops import keep_bool

    return ~keep_bool(entry.bits, entry.numel)


def main(model_dir, output_dir, regime, phase):
    torch.set_num_threads(1)
    model = BertForSequenceClassification.from_pretrained(model_dir)
    extra = {"freeze_fraction": 0.5} if regime == "freeze" else {"sparsity": 0.5}
    if regime == "sparse_to_dense":
        extra["regrowth_end_fraction"] = 1.0
    args = training_args(
        Path(output_dir),
        output_dir=output_dir,
        regime=regime,
        max_steps=8,
        save_strategy="steps",
        save_steps=2,
        weight_decay=0.1,
        **extra,
    )
    trainer = SparseTrainer(model, args, train_dataset=TokenData())
    if phase == "start":
        trainer.add_callback(PauseAfterCheckpoint())
        trainer.train()
    else:
        trainer.add_callback(Report(trainer, os.path.join(output_dir, "resume_report.json")))
        trainer.train(resume_from_checkpoint=True)
        trainer.save_model(os.path.join(output_dir, "final"))


if __name__ == "__main__":
    main(*sys.argv[1:5])
