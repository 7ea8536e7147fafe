"""One 2-rank launch per backend configuration: train tiny models under the regimes and record what holds.

    torchrun --nproc_per_node 2 tests/distributed/worker.py --config zero3_thr0 --out DIR [--phases a,b]

Each rank writes DIR/rank{R}.json ({phase: {check: value}}) and ends with os._exit(0): 2-rank CPU runs abort
at interpreter teardown about once in 20 (docs/dev/zero_fsdp_notes.md), after the results are written.
The pytest side (test_*.py here) asserts on the files. Counts named ``bad_*`` are pruned (or, for freeze,
frozen) positions that differ from what they must be; every positive phase must report 0 and every
negative control more than 0 in at least one place.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
import traceback

import torch
import torch.distributed as dist
from transformers import Trainer, TrainerCallback, TrainingArguments

from hf_junkdna import SparsityConfig, prune
from hf_junkdna.training import (
    FreezeRegimeCallback,
    SparseRegimeCallback,
    SparseTrainer,
    SparseTrainingArguments,
    UnsupportedBackendError,
)

STEPS = 4
CONFIGS = {
    # backend, zero stage, bf16, stage3_param_persistence_threshold, CPU offload, sub_group_size, DS optimizer
    "ddp": dict(backend="ddp"),
    "zero2": dict(backend="deepspeed", stage=2),
    "zero2_bf16_ga": dict(backend="deepspeed", stage=2, bf16=True),
    "zero3_thr0": dict(backend="deepspeed", stage=3, threshold=0, sub_group_size=2000),  # 6 flat masters
    # default threshold: every tiny parameter persists; the Trainer's AdamW: 2 param groups
    "zero3_default": dict(backend="deepspeed", stage=3, ds_optimizer=False),
    "zero3_bf16_ga": dict(backend="deepspeed", stage=3, bf16=True, threshold=0),
    "zero3_offload": dict(backend="deepspeed", stage=3, bf16=True, threshold=0, offload=True),
    "zero2_offload": dict(backend="deepspeed", stage=2, bf16=True, offload=True, ds_optimizer=False),
    "fsdp2": dict(backend="fsdp2"),
}


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", 0))


class TokenData(torch.utils.data.Dataset):
    def __init__(self, n: int = 64, length: int = 16, seed: int = 0):
        self.ids = torch.randint(0, 128, (n, length), generator=torch.Generator().manual_seed(seed))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        return {"input_ids": self.ids[index], "labels": self.ids[index]}


def model(seed: int = 0):
    """A 2-layer Llama with hidden size 36: shard and partition boundaries then fall mid-byte (offsets 4 or 2
    modulo 8) in some weights under ZeRO-2, ZeRO-3 and FSDP2, which the packed-bit slicing must handle."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=36,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=128,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).train()


# ------------------------------------------------------------------------------------------ configuration
def ds_config(c: dict, **override) -> dict:
    c = {**c, **override}
    zero = {"stage": c["stage"]}
    if c["stage"] == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
        if c.get("threshold") is not None:
            zero["stage3_param_persistence_threshold"] = c["threshold"]
        if c.get("sub_group_size"):
            zero["sub_group_size"] = c["sub_group_size"]
    if c.get("offload"):
        zero["offload_optimizer"] = {"device": "cpu"}
    config = {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "zero_optimization": zero,
        "bf16": {"enabled": "auto"},
        "steps_per_print": 10**9,
    }
    if c.get("ds_optimizer", True):
        params = {"lr": "auto", "weight_decay": "auto", "betas": "auto", "eps": "auto"}
        if not c.get("offload"):
            params["torch_adam"] = True
        config["optimizer"] = {"type": "AdamW", "params": params}
    elif c.get("offload"):
        config["zero_force_ds_cpu_optimizer"] = False
    return config


def training_args(c: dict, out: str, sparse: bool = True, **kw):
    values = dict(
        output_dir=out,
        use_cpu=True,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=STEPS,
        save_steps=2,
        learning_rate=1e-2,
        weight_decay=0.1,
        max_grad_norm=1.0,
        bf16=bool(c.get("bf16")),
        report_to=[],
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
        data_seed=0,
        lr_scheduler_type="constant",
    )
    if c["backend"] == "deepspeed":
        values["deepspeed"] = ds_config(c)
    if c["backend"] == "fsdp2":
        values["fsdp"] = "full_shard"
        values["fsdp_config"] = {
            "version": 2,
            "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"],
            "state_dict_type": "SHARDED_STATE_DICT",
        }
    values.update(kw)
    return SparseTrainingArguments(**values) if sparse else TrainingArguments(**values)


class _ForceFSDP2:
    """TEST-ONLY: accelerate drops the FSDP plugin on MULTI_CPU (and silently runs DDP); put it back."""

    def create_accelerator_and_postprocess(self):
        super().create_accelerator_and_postprocess()
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

        state = self.accelerator.state
        if state.distributed_type == DistributedType.MULTI_CPU and self.args.fsdp_plugin_args is not None:
            state.distributed_type = DistributedType.FSDP
            state.fsdp_plugin = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args)
            self.is_fsdp_enabled = True


class ForcedFSDP2SparseTrainer(_ForceFSDP2, SparseTrainer):
    pass


class ForcedFSDP2Trainer(_ForceFSDP2, Trainer):
    pass


def trainer_class(c: dict, sparse: bool = True):
    if c["backend"] == "fsdp2":
        return ForcedFSDP2SparseTrainer if sparse else ForcedFSDP2Trainer
    return SparseTrainer if sparse else Trainer


# ------------------------------------------------------------------------------------------- inspection
def gathered(c: dict, module) -> dict[str, torch.Tensor]:
    """Full module weights on every rank (collective under ZeRO-3 and FSDP2)."""
    params = list(module.named_parameters())
    if c["backend"] == "fsdp2":
        return {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone() for n, p in params}
    if c["backend"] == "deepspeed" and c["stage"] == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=None):
            return {n: p.detach().clone() for n, p in params}
    return {n: p.detach().clone() for n, p in params}


def master(c: dict, module) -> dict[str, torch.Tensor] | None:
    """Full fp32 master of every parameter (collective), or None outside DeepSpeed."""
    if c["backend"] != "deepspeed":
        return None
    from deepspeed.utils import safe_get_full_fp32_param

    return {n: safe_get_full_fp32_param(p).detach().clone() for n, p in module.named_parameters()}


def bad(state, masks, reference) -> int:
    """Masked-out positions whose value differs from ``reference`` (0 for pruned; pretrained for frozen)."""
    if state is None:
        return -1
    total = 0
    for name, keep in masks.items():
        value = state[name].float().reshape(keep.shape)
        ref = reference[name].to(state[name].dtype).float().reshape(keep.shape)
        total += int((value != ref)[~keep].sum())
    return total


def moved(state, masks, reference) -> int:
    return sum(
        int((state[n].float().reshape(k.shape) != reference[n].to(state[n].dtype).float())[k].sum())
        for n, k in masks.items()
    )


def saved_model(path: str) -> dict[str, torch.Tensor] | None:
    from safetensors.torch import load_file

    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    files = [f for f in files if not f.endswith("sparsity_masks.safetensors")]
    if not files:
        return None
    state = {}
    for f in files:
        state.update(load_file(f))
    return state


def zero_to_fp32(checkpoint: str) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(checkpoint)


def zeros_reference(masks) -> dict[str, torch.Tensor]:
    return {n: torch.zeros(k.shape) for n, k in masks.items()}


class BeginState(TrainerCallback):
    """Records bad counts of the weights (and master) right at train begin: after a resume, as loaded."""

    def __init__(self, c, masks, reference):
        self.c, self.masks, self.reference, self.result = c, masks, reference, None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.result = (
            bad(gathered(self.c, model), self.masks, self.reference),
            bad(master(self.c, model), self.masks, self.reference),
        )


class HeldMasks(TrainerCallback):
    """While training: bytes of masks this rank holds (packed), their type, and the elements bound here."""

    def __init__(self, trainer):
        self.trainer, self.seen = trainer, None

    def on_step_end(self, args, state, control, **kwargs):
        callback = self.trainer.regime_callback
        local = sum(entry.numel for entry in callback.binding.entries)
        self.seen = (callback.resident_bytes(), type(self.trainer.masks).__name__, local)


class NaiveModuleMask(TrainerCallback):
    """NEGATIVE CONTROL: zero pruned positions of the module weights after each step, nothing else.

    Under ZeRO the fp32 master keeps the pruned weights (gathered for ZeRO-3, rank 0 modifies). Under FSDP2 it
    masks the parameters it captured before the Trainer wrapped the model: FSDP2 replaced them, so it masks
    nothing that trains. Under DDP masking module weights after every step would hold the weights (they are
    what the optimizer updates), so the DDP control does not mask during training at all (``active=False``).
    """

    def __init__(self, c, masks, captured, active=True):
        self.c, self.masks, self.captured, self.active = c, masks, captured, active

    @torch.no_grad()
    def on_step_end(self, args, state, control, model=None, **kwargs):
        if not self.active:
            return
        if self.c["backend"] == "fsdp2":
            for name, keep in self.masks.items():
                self.captured[name].mul_(keep)
            return
        params = [(n, p) for n, p in model.named_parameters() if n in self.masks]
        if self.c["backend"] == "deepspeed" and self.c["stage"] == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=0):
                if rank() == 0:
                    for n, p in params:
                        p.mul_(self.masks[n].to(p.dtype))
            return
        for n, p in params:
            p.mul_(self.masks[n].to(p.dtype))


# ----------------------------------------------------------------------------------------------- phases
def phase_sparse(c, out, results):
    """SparseTrainer, regime sparse: invariants after training, in save_model, zero_to_fp32 and after resume."""
    net = model()
    start = {n: p.detach().clone() for n, p in net.named_parameters()}
    trainer = trainer_class(c)(
        net, training_args(c, f"{out}/sparse", regime="sparse", sparsity=0.5), train_dataset=TokenData()
    )
    masks = dict(trainer.masks.items())  # the test keeps the full masks on every rank, to check against
    full_bytes = trainer.masks.resident_bytes()
    held = HeldMasks(trainer)
    trainer.add_callback(held)
    pruned = {n: p.detach().clone() for n, p in net.named_parameters()}
    zeros = zeros_reference(masks)
    t = time.time()
    trainer.train()
    r = {"train_s": round(time.time() - t, 2)}
    callback = trainer.regime_callback
    module = trainer.model if c["backend"] != "deepspeed" else trainer.model_wrapped.module
    weights = gathered(c, module)
    r["bad_weights"] = bad(weights, masks, zeros)
    r["bad_master"] = bad(master(c, module), masks, zeros)
    r["kept_moved"] = moved(weights, masks, pruned)
    r["kept_total"] = sum(int(k.sum()) for k in masks.values())
    r["pruned_total"] = sum(int((~k).sum()) for k in masks.values())
    r["start_pruned_nonzero"] = sum(int((start[n][~k] != 0).sum()) for n, k in masks.items())
    logged = [e["sparsity"] for e in trainer.state.log_history if "sparsity" in e]
    r["logged_sparsity"] = logged[-1] if logged else None
    r["grad_norms"] = [e["grad_norm"] for e in trainer.state.log_history if "grad_norm" in e]
    # masks held on this rank, in bytes (packed): the full set vs what this rank keeps after binding
    r["mask_bytes_full"] = full_bytes
    r["mask_bytes_held"], r["masks_type"], r["local_elements"] = held.seen
    r["mask_bytes_held_after"] = callback.resident_bytes()
    trainer.save_model(f"{out}/sparse/final")
    final = f"{out}/sparse/final"
    if c["backend"] == "fsdp2":
        # With SHARDED_STATE_DICT save_model writes no weights (transformers' FSDP rule), and on a CPU mesh
        # FULL_STATE_DICT gives DTensors safetensors cannot write: check what users merge from a sharded
        # checkpoint instead (`accelerate merge-weights`; every rank calls it, the main one writes)
        from accelerate.utils import merge_fsdp_weights

        final = f"{out}/sparse/merged"
        merge_fsdp_weights(f"{out}/sparse/checkpoint-4/pytorch_model_fsdp_0", final, safe_serialization=True)
    dist.barrier()
    if rank() == 0:
        saved = saved_model(final)
        r["bad_save_model"] = bad(saved, masks, zeros) if saved is not None else "no safetensors"
        r["save_model_dtype"] = str(next(iter(saved.values())).dtype) if saved else None
        from hf_junkdna import MaskSet

        for where in ("final", "checkpoint-2", "checkpoint-4"):
            saved_masks = MaskSet.load(f"{out}/sparse/{where}/sparsity_masks.safetensors")
            r[f"masks_file_equal_{where}"] = all(torch.equal(saved_masks.get(n), k) for n, k in masks.items())
        if c["backend"] == "deepspeed":
            r["bad_zero_to_fp32"] = bad(zero_to_fp32(f"{out}/sparse/checkpoint-4"), masks, zeros)
    dist.barrier()
    # resume from checkpoint-2 into a fresh model of another init: everything must come from the checkpoint
    begin = BeginState(c, masks, zeros)
    trainer2 = trainer_class(c)(
        model(seed=99),
        training_args(c, f"{out}/sparse", regime="sparse", sparsity=0.5),
        train_dataset=TokenData(),
        callbacks=[begin],
    )
    trainer2.train(resume_from_checkpoint=f"{out}/sparse/checkpoint-2")
    module2 = trainer2.model if c["backend"] != "deepspeed" else trainer2.model_wrapped.module
    weights2 = gathered(c, module2)
    r["bad_resume_begin_weights"], r["bad_resume_begin_master"] = begin.result
    r["bad_resume_weights"] = bad(weights2, masks, zeros)
    r["bad_resume_master"] = bad(master(c, module2), masks, zeros)
    r["resume_max_diff"] = max(float((weights2[n].float() - weights[n].float()).abs().max()) for n in weights)
    r["resume_masks_type"] = type(trainer2.masks).__name__
    results["sparse"] = r


def phase_freeze(c, out, results):
    """Regime freeze: frozen weights bit-identical to the values training started from (see docs)."""
    net = model()
    pretrained = {n: p.detach().clone() for n, p in net.named_parameters()}
    if c["backend"] == "fsdp2":  # the stock Trainer + the callback, whose gradient hooks act on DTensor shards
        masks_set = prune(model(), SparsityConfig(sparsity=0.5))  # the smallest half, selected on a copy
        trainer = trainer_class(c, sparse=False)(
            net,
            training_args(c, f"{out}/freeze", sparse=False, max_steps=3, save_steps=3),
            train_dataset=TokenData(),
            callbacks=[FreezeRegimeCallback(masks_set)],
        )
    else:
        args = training_args(c, f"{out}/freeze", regime="freeze", freeze_fraction=0.5, max_steps=3, save_steps=3)
        trainer = trainer_class(c)(net, args, train_dataset=TokenData())
        masks_set = trainer.masks
    masks = dict(masks_set.items())
    trainer.train()
    module = trainer.model if c["backend"] != "deepspeed" else trainer.model_wrapped.module
    weights = gathered(c, module)
    # the reference: pretrained values in the module's dtype; under bf16 the master starts from (and keeps)
    # bf16(pretrained), the value DeepSpeed's cast gives (docs/distributed.md)
    if c.get("bf16"):
        master_reference = {n: v.bfloat16().float() for n, v in pretrained.items()}
    else:
        master_reference = pretrained
    r = {
        "bad_weights": bad(weights, masks, pretrained),
        "bad_master": bad(master(c, module), masks, master_reference),
        "kept_moved": moved(weights, masks, pretrained),
        "weights_dtype": str(next(iter(weights.values())).dtype),
        "frozen_total": sum(int((~k).sum()) for k in masks.values()),
    }
    if c["backend"] == "deepspeed":
        dist.barrier()
        if rank() == 0:
            r["bad_zero_to_fp32"] = bad(zero_to_fp32(f"{out}/freeze/checkpoint-3"), masks, master_reference)
    results["freeze"] = r


def phase_negative(c, out, results):
    """NEGATIVE CONTROL: prune, then the stock Trainer with a naive callback that masks module weights only."""
    net = model()
    masks_set = prune(net, SparsityConfig(sparsity=0.5))
    masks = dict(masks_set.items())
    captured = dict(net.named_parameters())  # references taken before the Trainer wraps the model
    naive = NaiveModuleMask(c, masks, captured, active=c["backend"] != "ddp")
    trainer = trainer_class(c, sparse=False)(
        net,
        training_args(c, f"{out}/negative", sparse=False, save_steps=STEPS),
        train_dataset=TokenData(),
        callbacks=[naive],
    )
    trainer.train()
    zeros = zeros_reference(masks)
    module = trainer.model if c["backend"] != "deepspeed" else trainer.model_wrapped.module
    r = {"bad_weights": bad(gathered(c, module), masks, zeros), "bad_master": bad(master(c, module), masks, zeros)}
    r["grad_norms"] = [e["grad_norm"] for e in trainer.state.log_history if "grad_norm" in e]
    if c["backend"] == "deepspeed":
        dist.barrier()
        if rank() == 0:
            r["bad_zero_to_fp32"] = bad(zero_to_fp32(f"{out}/negative/checkpoint-{STEPS}"), masks, zeros)
    results["negative"] = r


def phase_sparse_to_dense(c, out, results):
    """Regime sparse_to_dense on shards that start mid-byte: each rank's bits equal the slice of the whole
    parameter's, and not-yet-released weights stay 0 in the master after every step."""
    from hf_junkdna.training import schedule as regrowth
    from hf_junkdna.training.backends.shards import slice_bits

    net = model()
    trainer = trainer_class(c)(
        net,
        training_args(c, f"{out}/s2d", regime="sparse_to_dense", sparsity=0.5, save_strategy="no"),
        train_dataset=TokenData(),
    )
    base = {n: trainer.masks.packed(n).clone() for n in trainer.masks.names()}
    full = dict(trainer.masks.items())
    failures, offsets = [], set()

    class Check(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            callback = trainer.regime_callback
            level = regrowth.release_level(callback._fraction)
            for entry in callback.binding.entries:
                offsets.add(entry.offset % 8)
                seed = regrowth.parameter_seed(entry.name, callback.seed)
                numel = full[entry.name].numel()
                whole = base[entry.name] | regrowth.released_bits(
                    regrowth.byte_ranks(len(base[entry.name]), 0, seed), level
                )
                if numel % 8:
                    whole[-1] &= (1 << numel % 8) - 1
                if not torch.equal(entry.bits.cpu(), slice_bits(whole, entry.offset, entry.numel)):
                    failures.append(f"step {state.global_step}: {entry.name}@{entry.offset} bits differ")
                from hf_junkdna.training.bitops import keep_bool

                keep = keep_bool(entry.bits, entry.numel)
                if bool((entry.tensor.detach().view(-1)[~keep] != 0).any()):
                    failures.append(f"step {state.global_step}: {entry.name}@{entry.offset} unreleased non-zero")

    trainer.add_callback(Check())
    trainer.train()
    logged = [e["released_fraction"] for e in trainer.state.log_history if "released_fraction" in e]
    results["sparse_to_dense"] = {
        "failures": failures[:5],
        "mid_byte_offsets": sorted(offsets),
        "released": logged,
    }


def phase_errors(c, out, results):
    """A DeepSpeed config the masks cannot serve stops SparseTrainer at construction, and the regime
    callbacks at train begin under the stock Trainer, naming the key."""
    r = {}
    bad_configs = {
        "stage1_bf16": ds_config(c, stage=1, bf16=True),
        "nvme": {**ds_config(c), "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "nvme"}}},
    }
    for label, config in bad_configs.items():
        try:
            SparseTrainer(model(), training_args(c, f"{out}/errors", regime="sparse", deepspeed=config))
            r[label] = "no error"
        except UnsupportedBackendError as error:
            r[label] = str(error)
    # the config from `accelerate launch --config_file` (environment), not from TrainingArguments(deepspeed=...)
    from accelerate.state import AcceleratorState

    path = f"{out}/errors_stage1.json"
    if rank() == 0:
        with open(path, "w") as handle:
            json.dump(ds_config(c, stage=1, bf16=True), handle)
    dist.barrier()
    AcceleratorState._reset_state()
    os.environ.update(ACCELERATE_USE_DEEPSPEED="true", ACCELERATE_DEEPSPEED_CONFIG_FILE=path)
    try:
        SparseTrainer(model(), training_args({**c, "backend": "ddp"}, f"{out}/errors", regime="sparse", bf16=True))
        r["accelerate_config_stage1"] = "no error"
    except UnsupportedBackendError as error:
        r["accelerate_config_stage1"] = str(error)
    finally:
        del os.environ["ACCELERATE_USE_DEEPSPEED"], os.environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"]
        AcceleratorState._reset_state()
    masks_set = prune(model(), SparsityConfig(sparsity=0.5))
    trainer = Trainer(
        model(),
        training_args(c, f"{out}/errors", sparse=False, deepspeed=ds_config(c, stage=1), max_steps=1),
        train_dataset=TokenData(),
        callbacks=[SparseRegimeCallback(masks_set)],
    )
    try:
        trainer.train()
        r["stock_trainer_stage1"] = "no error"
    except UnsupportedBackendError as error:
        r["stock_trainer_stage1"] = str(error)
    results["errors"] = r


def phase_zero_init(c, out, results):
    """Prune a model ZeRO-3 partitioned at load (from_pretrained under zero.Init): the masks equal those of
    pruning the whole model in one process (global, layer and 2:4), and training keeps them."""
    import deepspeed

    from hf_junkdna.training.backends.deepspeed import prune_partitioned
    from hf_junkdna.training.backends.shards import ShardMaskSet

    dtype = torch.bfloat16 if c.get("bf16") else torch.float32
    path = f"{out}/tiny_llama"
    if rank() == 0:
        model().save_pretrained(path)
    dist.barrier()
    configs = {
        "global": SparsityConfig(sparsity=0.5),
        "layer": SparsityConfig(sparsity=0.3, scope="layer"),
        "2:4": SparsityConfig(pattern="2:4"),
    }
    reference = {k: prune(model().to(dtype), v) for k, v in configs.items()}
    args = training_args(c, f"{out}/zinit", regime="sparse", max_steps=2, save_strategy="no")
    deepspeed.init_distributed(dist_backend="gloo")  # CPU: deepspeed.comm is not up otherwise (zero.Init)
    from transformers import AutoModelForCausalLM

    net = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    r = {"partitioned": all(p.numel() == 0 for p in net.parameters())}
    for label in ("layer", "2:4"):
        masks = prune_partitioned(net, configs[label], keep_full=rank() == 0, apply=False)
        r[f"equal_{label}"] = _same_masks(masks, reference[label])
    # precomputed masks on a partitioned model: each rank zeroes its own ds_tensor slices
    other = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    SparseTrainer(other, args, masks=reference["layer"])
    layer = dict(reference["layer"].items())
    r["bad_weights_given_masks"] = bad(gathered(c, other), layer, zeros_reference(layer))
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # TEST-ONLY: a second Trainer before any train() (accelerate refuses it)
    trainer = SparseTrainer(net, args, train_dataset=TokenData(), sparsity_config=configs["global"])
    r["equal_global"] = _same_masks(trainer.masks, reference["global"])
    r["masks_type_before_train"] = type(trainer.masks).__name__
    trainer.train()
    masks = dict(reference["global"].items())
    zeros = zeros_reference(masks)
    module = trainer.model_wrapped.module
    r["bad_weights"] = bad(gathered(c, module), masks, zeros)
    r["bad_master"] = bad(master(c, module), masks, zeros)
    r["isinstance_shard"] = isinstance(trainer.masks, ShardMaskSet)
    results["zero_init"] = r


def _same_masks(masks, reference) -> bool:
    """Full MaskSet: equal to the reference. ShardMaskSet: same counts and each piece the reference's slice."""
    from hf_junkdna.training.backends.shards import ShardMaskSet, slice_bits

    if isinstance(masks, ShardMaskSet):
        if any(masks.num_zeros(n) != reference.num_zeros(n) for n in reference.names()):
            return False
        return all(
            torch.equal(bits, slice_bits(reference.packed(n), start, length))
            for n, pieces in masks.pieces.items()
            for start, length, bits in pieces
        )
    return masks.names() == reference.names() and all(
        torch.equal(masks.get(n), reference.get(n)) for n in masks.names()
    )


PHASES = {
    "errors": phase_errors,
    "sparse": phase_sparse,
    "freeze": phase_freeze,
    "negative": phase_negative,
    "sparse_to_dense": phase_sparse_to_dense,
    "zero_init": phase_zero_init,
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True, choices=sorted(CONFIGS))
    parser.add_argument("--out", required=True)
    parser.add_argument("--phases", default="sparse,freeze,negative")
    a = parser.parse_args()
    c = CONFIGS[a.config]
    torch.set_num_threads(1)
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    results, timings = {"config": a.config, "rank": rank()}, {}
    status = 0
    try:
        for phase in a.phases.split(","):
            t = time.time()
            PHASES[phase](c, a.out, results)
            timings[phase] = round(time.time() - t, 1)
            dist.barrier()
    except Exception:  # record it for the pytest side, which shows it; the other rank is stopped by torchrun
        results["error"] = traceback.format_exc()
        status = 1
    results["timings"] = timings
    with open(os.path.join(a.out, f"rank{rank()}.json"), "w") as handle:
        json.dump(results, handle, indent=1, default=str)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    main()
