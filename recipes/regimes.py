#!/usr/bin/env python
"""The study's four fine-tuning regimes side by side: dense, sparse, freeze and sparse_to_dense.

The same pretrained encoder is fine-tuned four ways on the same recipe, so that the small-magnitude weights
are the only difference: kept (dense), removed and held at 0 (sparse), kept but frozen at their pretrained
values (freeze), removed then regrown during training (sparse_to_dense). The script prints the held-out
accuracy of each and writes all_results.json.

Offline default (packaged all-MiniLM-L6-v2, real Rotten Tomatoes review sentences from a PyPI package, CPU):

    python recipes/regimes.py
    python recipes/regimes.py --sparsity 0.7 --num_train 2000 --output_dir outputs/regimes-70
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field

from hf_junkdna.experiments.args import parse_args
from hf_junkdna.experiments.store import atomic_write_text
from hf_junkdna.training import REGIMES
from hf_junkdna.training.compare import format_comparison, run_regime_comparison


@dataclass
class RegimeArguments:
    regimes: list[str] = field(default_factory=lambda: list(REGIMES), metadata={"help": "Regimes to compare."})
    sparsity: float = field(
        default=0.5, metadata={"help": "Pruned fraction (sparse, sparse_to_dense) and frozen fraction (freeze)."}
    )
    num_train: int = field(
        default=480,
        metadata={
            "help": "Training sentences, half per label (the packaged 12,808 sentences have 5,405 negative ones, so "
            "num_train + num_eval <= 10,810)."
        },
    )
    num_eval: int = field(default=256, metadata={"help": "Held-out sentences for the accuracy (>= 1)."})
    max_length: int = field(default=48, metadata={"help": "Tokens per sentence."})
    num_train_epochs: float = field(default=2.0, metadata={"help": "Epochs per regime."})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate."})
    seed: int = field(default=0, metadata={"help": "Seed for data order and classifier initialisation."})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Encoder to fine-tune (default: the packaged all-MiniLM-L6-v2)."}
    )
    output_dir: str = field(default="outputs/regimes", metadata={"help": "Where all_results.json goes."})


def main(argv: list[str] | None = None) -> dict[str, float]:
    (args,) = parse_args((RegimeArguments,), argv)
    results = run_regime_comparison(
        regimes=args.regimes,
        sparsity=args.sparsity,
        num_train=args.num_train,
        num_eval=args.num_eval,
        max_length=args.max_length,
        num_train_epochs=args.num_train_epochs,
        learning_rate=args.learning_rate,
        seed=args.seed,
        model_path=args.model_name_or_path,
    )
    print(f"held-out accuracy at {args.sparsity:.0%} sparsity / freeze fraction:")
    print(format_comparison(results))
    os.makedirs(args.output_dir, exist_ok=True)
    report = {"accuracy": results, "arguments": asdict(args)}
    atomic_write_text(os.path.join(args.output_dir, "all_results.json"), json.dumps(report, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
