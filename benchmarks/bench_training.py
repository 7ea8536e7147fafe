"""Step time of each fine-tuning regime relative to the dense Trainer, measured side by side in one run.

    .venv/bin/python benchmarks/bench_training.py                  # MiniLM, then SmolLM2-135M
    .venv/bin/python benchmarks/bench_training.py --models minilm --rounds 9 --steps 4

Same model, same batch, same optimizer (the Trainer's default AdamW, weight_decay 0.01 so that the freeze
regime's weight-decay handling is on the clock) for every variant:

- dense: the stock ``Trainer`` (the reference);
- sparse / freeze / sparse_to_dense: ``SparseTrainer`` with precomputed 50 % magnitude masks (gradients
  masked in one pass right before clipping);
- sparse / freeze (callback, ...): the stock Trainer with the regime callback, gradients masked by
  per-parameter gradient hooks (so clipping sees the sparse gradient) or only in the optimizer's pre-step
  hook (clipping then sees the dense gradient): the choice SparseTrainer's clip-time masking replaces;
- torch.nn.utils.prune: ``prune.custom_from_mask`` on every masked Linear (forward pre-hook, weight_orig);
- bool re-multiply: stock Trainer + a callback multiplying each masked weight by a bool mask after the step.

Variants run interleaved: every round runs each variant for ``--steps`` optimizer steps in a shuffled order
(a fresh Trainer per round; the first step of a round is not timed). A step is timed from the Trainer's
``on_step_begin`` to ``on_step_end`` (forward, backward, clipping, optimizer, hooks). The ratio printed is
the median over rounds of (variant's median step / dense's median step in the same round), so slow drifts
of a shared machine cancel. "mask ms" is the time per step spent inside this library's gradient/optimizer
hooks and clip-time masking, measured directly (the part of the ratio that is ours; for the bool
re-multiply baseline, its callback; torch.nn.utils.prune's cost is spread over forward and backward). "B/weight" is what each variant
holds per masked weight beyond the model and the optimizer.
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import sys
import time

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    Trainer,
    TrainerCallback,
)
from transformers import TrainingArguments as HFTrainingArguments

from hf_junkdna import SparsityConfig, prune
from hf_junkdna.offline import minilm_path, smollm2_path
from hf_junkdna.pruning import get_criterion, prunable_weights_for
from hf_junkdna.training import FreezeRegimeCallback, SparseRegimeCallback, SparseTrainer
from hf_junkdna.training.mask_binding import MaskBinding

HOOK_SECONDS = [0.0]


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times: list[float] = []
        self._start = None

    def on_step_begin(self, args, state, control, **kwargs):
        _synchronize()
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        _synchronize()
        self.times.append(time.perf_counter() - self._start)


def _synchronize():
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class HookClock(TrainerCallback):
    """Reads the hook time accumulated during each step (drops the untimed first step)."""

    def __init__(self):
        self.per_step: list[float] = []
        self._mark = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._mark = HOOK_SECONDS[0]

    def on_step_end(self, args, state, control, **kwargs):
        self.per_step.append(HOOK_SECONDS[0] - self._mark)


class ResidentBytes(TrainerCallback):
    def __init__(self, regime_callback):
        self.regime_callback, self.bytes = regime_callback, 0

    def on_step_end(self, args, state, control, **kwargs):
        self.bytes = max(self.bytes, self.regime_callback.resident_bytes())


class BoolRemultiply(TrainerCallback):
    """The naive baseline: weight *= bool_mask after every optimizer step (1 byte per weight resident)."""

    def __init__(self, masks):
        self.bool_masks = {name: masks.get(name) for name in masks.names()}

    @torch.no_grad()
    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        _timed(self._multiply)(model)

    def _multiply(self, model):
        parameters = dict(model.named_parameters())
        for name, mask in self.bool_masks.items():
            weight = parameters[name]
            if mask.device != weight.device:
                mask = self.bool_masks[name] = mask.to(weight.device)
            weight.mul_(mask)


def _timed(function):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            HOOK_SECONDS[0] += time.perf_counter() - start

    return wrapper


def _install_hook_clock():
    """Wrap the binding's hooks so the time spent inside them is accumulated in HOOK_SECONDS."""
    original_attach = MaskBinding.attach

    def attach(self, pre_step, post_step):
        self.mask_grads = _timed(self.mask_grads)
        grad_hook = self._grad_hook
        self._grad_hook = lambda entry: _timed(grad_hook(entry))
        original_attach(self, _timed(pre_step), _timed(post_step))

    MaskBinding.attach = attach


class Batch(torch.utils.data.Dataset):
    def __init__(self, inputs: dict[str, torch.Tensor]):
        self.inputs = inputs

    def __len__(self):
        return len(next(iter(self.inputs.values())))

    def __getitem__(self, index):
        return {key: value[index] for key, value in self.inputs.items()}


def load(name: str, config_dir: str | None = None):
    """The packaged model, or (``config_dir``) a randomly initialised one of the same architecture: the step
    time does not depend on the weights' values, and the configs travel where the weights cannot."""
    torch.manual_seed(0)
    model_class = AutoModelForSequenceClassification if name == "minilm" else AutoModelForCausalLM
    if config_dir:
        config = AutoConfig.from_pretrained(f"{config_dir}/{name}")
        if name == "minilm":
            config.num_labels = 2
        model = model_class.from_config(config, dtype=torch.float32)
    elif name == "minilm":
        model = model_class.from_pretrained(str(minilm_path()), num_labels=2)
    else:
        model = model_class.from_pretrained(str(smollm2_path()), dtype=torch.float32)
    if name == "minilm":
        batch, seq = 16, 64
        ids = torch.randint(1000, model.config.vocab_size, (batch, seq))
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 2, (batch,))}
    else:
        batch, seq = 4, 64
        ids = torch.randint(0, model.config.vocab_size, (batch, seq))
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    return model, Batch(inputs), batch


def variants(base: nn.Module, batch_size: int):
    config = SparsityConfig(sparsity=0.5)
    pruned = copy.deepcopy(base)
    masks = prune(pruned, config)
    freeze_masks = get_criterion("magnitude").compute_masks(prunable_weights_for(base, config), config)
    numel = masks.num_weights()

    def torch_prune_model():
        model = copy.deepcopy(pruned)
        modules = dict(model.named_modules())
        for name in masks.names():
            torch_prune.custom_from_mask(modules[name.rsplit(".", 1)[0]], "weight", masks.get(name))
        return model

    models = {
        "dense": copy.deepcopy(base),
        "sparse": copy.deepcopy(pruned),
        "sparse (callback, grad hooks)": copy.deepcopy(pruned),
        "sparse (callback, pre-step)": copy.deepcopy(pruned),
        "freeze": copy.deepcopy(base),
        "freeze (callback, grad hooks)": copy.deepcopy(base),
        "sparse_to_dense": copy.deepcopy(pruned),
        "torch.nn.utils.prune": torch_prune_model(),
        "bool re-multiply": copy.deepcopy(pruned),
    }

    def build(name, args, extra_callbacks):
        model = models[name]
        if name == "dense" or name == "torch.nn.utils.prune":
            return Trainer(model, args, train_dataset=DATA[0], callbacks=extra_callbacks), None
        if name == "bool re-multiply":
            return Trainer(
                model, args, train_dataset=DATA[0], callbacks=[BoolRemultiply(masks), *extra_callbacks]
            ), None
        if name.startswith("sparse (callback"):
            callback = SparseRegimeCallback(masks, grad_hooks="grad hooks" in name)
            return Trainer(model, args, train_dataset=DATA[0], callbacks=[callback, *extra_callbacks]), callback
        if name.startswith("freeze (callback"):
            callback = FreezeRegimeCallback(freeze_masks, grad_hooks=True)
            return Trainer(model, args, train_dataset=DATA[0], callbacks=[callback, *extra_callbacks]), callback
        regime = name
        chosen = freeze_masks if regime == "freeze" else masks
        trainer = SparseTrainer(
            model, args, train_dataset=DATA[0], masks=chosen, regime=regime, callbacks=extra_callbacks
        )
        if regime == "sparse_to_dense":  # release over the whole round so every timed step releases weights
            trainer.regime_callback.end_fraction = 1.0
        return trainer, trainer.regime_callback

    fixed_bytes = {"torch.nn.utils.prune": 8.0, "bool re-multiply": 1.0, "dense": 0.0}
    return models, build, numel, fixed_bytes


DATA = [None]


def run(name: str, rounds: int, steps: int, seed: int = 0, config_dir=None, use_cpu=True) -> list[tuple]:
    base, dataset, batch_size = load(name, config_dir)
    DATA[0] = dataset
    models, build, numel, fixed_bytes = variants(base, batch_size)
    del base
    order = list(models)
    per_round: dict[str, list[float]] = {key: [] for key in order}
    hooks: dict[str, list[float]] = {key: [] for key in order}
    resident: dict[str, float] = dict(fixed_bytes)
    rng = random.Random(seed)
    for round_index in range(rounds):
        rng.shuffle(order)
        for key in order:
            args = HFTrainingArguments(
                output_dir="/tmp/bench_training",
                per_device_train_batch_size=batch_size,
                max_steps=steps + 1,
                learning_rate=1e-5,
                weight_decay=0.01,
                logging_strategy="no",
                save_strategy="no",
                report_to=[],
                disable_tqdm=True,
                use_cpu=use_cpu,
                seed=seed,
            )
            timer, clock = StepTimer(), HookClock()
            trainer, regime_callback = build(key, args, [timer, clock])
            if regime_callback is not None:
                bytes_callback = ResidentBytes(regime_callback)
                trainer.add_callback(bytes_callback)
            trainer.train()
            per_round[key].append(statistics.median(timer.times[1:]))
            hooks[key].extend(clock.per_step[1:])
            if regime_callback is not None:
                resident[key] = bytes_callback.bytes / numel
            del trainer
        print(f"  [{name}] round {round_index + 1}/{rounds} done", file=sys.stderr, flush=True)
    rows = []
    dense = per_round["dense"]
    for key in models:
        ratios = [value / reference for value, reference in zip(per_round[key], dense)]
        rows.append(
            (
                key,
                statistics.median(per_round[key]) * 1e3,
                statistics.median(ratios),
                min(ratios),
                max(ratios),
                statistics.median(hooks[key]) * 1e3 if hooks[key] else 0.0,
                resident.get(key, float("nan")),
            )
        )
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["minilm", "smollm2"], choices=["minilm", "smollm2"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=4, help="timed optimizer steps per variant per round")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--config-dir", default=None, help="random-init models from <dir>/<model>/config.json")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    options = parser.parse_args(argv)
    if options.threads:
        torch.set_num_threads(options.threads)
    _install_hook_clock()
    import transformers

    device = torch.cuda.get_device_name() if options.device == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    weights = f"random init from {options.config_dir}" if options.config_dir else "packaged pretrained weights"
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {device}, {weights}")
    for name in options.models:
        rounds = options.rounds if name == "minilm" else max(3, options.rounds // 2)
        rows = run(name, rounds, options.steps, config_dir=options.config_dir, use_cpu=options.device == "cpu")
        print(
            f"\n{name}: {rounds} rounds x {options.steps} timed steps per variant (ratio: median [min, max] over rounds)"
        )
        print(
            f"{'variant':30s} {'step ms':>9s} {'ratio':>7s} {'range':>15s} {'mask ms':>9s} {'mask/dense':>10s}"
            f" {'B/weight':>9s}"
        )
        dense_ms = rows[0][1]
        for key, step_ms, ratio, low, high, hook_ms, bytes_per_weight in rows:
            share = f"{100 * hook_ms / dense_ms:9.2f}%" if hook_ms else f"{'-':>10s}"
            print(
                f"{key:30s} {step_ms:9.1f} {ratio:7.3f} [{low:5.3f}, {high:5.3f}] {hook_ms:9.2f} {share}"
                f" {bytes_per_weight:9.3f}"
            )


if __name__ == "__main__":
    main()
