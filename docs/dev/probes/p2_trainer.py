"""Real transformers Trainer + DeepSpeed ZeRO-2/3 on CPU, 2 ranks: masks via inner-optimizer step hooks.

torchrun --nproc_per_node 2 p2_trainer.py --stage 2|3 [--bf16] [--thr 0] [--mode pos|neg] [--regime sparse|freeze]
         [--client-opt] [--offload]
Phase 1: train 4 steps (GA 2), checkpoints at 2 and 4, save_model. Checks gathered weights, fp32 master,
save_model output, zero_to_fp32 of checkpoint-4. Phase 2: new Trainer resumes from checkpoint-2, checks at
on_train_begin (master as loaded) and after 2 more steps.
"""

import argparse
import glob
import os
import shutil
import time

import common as C
import deepspeed
import torch
import torch.distributed as dist
from common import log
from datasets import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments

ap = argparse.ArgumentParser()
ap.add_argument("--stage", type=int, default=2)
ap.add_argument("--bf16", action="store_true")
ap.add_argument("--thr", type=float, default=None)
ap.add_argument("--mode", default="pos")
ap.add_argument("--regime", default="sparse")
ap.add_argument("--client-opt", action="store_true", help="no optimizer section: Trainer's own AdamW (2 groups)")
ap.add_argument("--offload", action="store_true")
ap.add_argument("--no-gather16", action="store_true", help="ZeRO-3 without stage3_gather_16bit_weights_on_model_save")
ap.add_argument("--out", default="/tmp/dsprobe/out")
a = ap.parse_args()
zero3 = a.stage == 3
out = f"{a.out}_s{a.stage}{'_bf16' if a.bf16 else ''}_{a.mode}_{a.regime}"
T0 = time.time()

zcfg = {"stage": a.stage}
if zero3:
    zcfg["stage3_gather_16bit_weights_on_model_save"] = not a.no_gather16
    if a.thr is not None:
        zcfg["stage3_param_persistence_threshold"] = a.thr
if a.offload:
    zcfg["offload_optimizer"] = {"device": "cpu"}
ds = {
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "train_batch_size": "auto",
    "zero_optimization": zcfg,
    "bf16": {"enabled": "auto"},
    "steps_per_print": 10**9,
}
if not a.client_opt:
    ds["optimizer"] = {
        "type": "AdamW",
        "params": {"lr": "auto", "weight_decay": "auto", "betas": "auto", "eps": "auto", "torch_adam": not a.offload},
    }
if a.client_opt and a.offload:
    ds["zero_force_ds_cpu_optimizer"] = False


def targs(max_steps):
    return TrainingArguments(
        output_dir=out,
        use_cpu=True,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=max_steps,
        save_steps=2,
        learning_rate=1e-2,
        weight_decay=0.1,
        max_grad_norm=1.0,
        bf16=a.bf16,
        report_to=[],
        logging_steps=100,
        deepspeed=ds,
        disable_tqdm=True,
        seed=0,
        lr_scheduler_type="constant",
    )


torch.manual_seed(123)
data = Dataset.from_list(
    [{"input_ids": (ids := torch.randint(0, 128, (16,)).tolist()), "labels": ids} for _ in range(64)]
)
model = C.tiny_llama()
masks = {n: C.make_mask(n, p.shape) for n, p in model.named_parameters() if n in C.prunable_names(model)}
pretrained = {n: p.detach().clone() for n, p in model.named_parameters()}  # fp32, before any bf16 cast
if a.regime == "sparse":
    with torch.no_grad():  # prune before the Trainer/engine exists
        for n, p in model.named_parameters():
            if n in masks:
                p.mul_(masks[n])
reference = {n: p.detach().clone() for n, p in model.named_parameters()}  # values pruned positions must keep


def bad(state):
    """pruned/frozen positions that differ from the reference (0 for sparse, pretrained for freeze)."""
    return sum(
        int((state[n].float().reshape(masks[n].shape) != reference[n].to(state[n].dtype).float())[~masks[n]].sum())
        for n in masks
        if n in state
    )


class MaskCallback(TrainerCallback):
    def __init__(self):
        self.pre_opt_grads, self.hooks, self.begin = [], None, None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kw):
        zopt = C.zero_optimizer_of(optimizer)  # accelerate DeepSpeedOptimizerWrapper .optimizer
        inner = zopt.optimizer
        log(
            f"Trainer.optimizer={type(optimizer).__name__} .optimizer={type(zopt).__name__} "
            f".optimizer.optimizer={type(inner).__name__} groups={len(inner.param_groups)} "
            f"is engine.optimizer: {zopt is self.trainer.model_wrapped.optimizer}"
        )
        # state at train begin (after a resume: as loaded from the checkpoint)
        self.begin = (bad(C.gathered_state(model, zero3)), bad(C.full_master(model)))
        if a.mode != "pos":
            return
        keep = C.build_flat_keep(zopt, model, masks)
        frozen = C.build_flat_frozen(zopt, model, masks, pretrained) if a.regime == "freeze" else None
        self.hooks = C.MasterMaskHooks(zopt, keep, frozen)
        for n, p in model.named_parameters():
            if n in masks:
                p.register_hook(lambda g, m=masks[n]: g * m.to(g.dtype))

    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
        self.pre_opt_grads.append(sum(p.grad is not None for p in model.parameters()))

    def on_step_end(self, args, state, control, model=None, **kw):
        if a.mode != "neg":
            return
        with torch.no_grad():  # NEGATIVE CONTROL: fix only the module weights
            ps = [p for n, p in model.named_parameters() if n in masks]
            with deepspeed.zero.GatheredParameters(ps, modifier_rank=0, enabled=zero3):
                if not zero3 or dist.get_rank() == 0:
                    for n, p in model.named_parameters():
                        if n in masks:
                            p.copy_(torch.where(masks[n], p, reference[n].to(p.dtype)))


# ---------------- phase 1 ----------------
shutil.rmtree(out, ignore_errors=True) if int(os.environ.get("RANK", 0)) == 0 else None
cb = MaskCallback()
trainer = Trainer(model=model, args=targs(4), train_dataset=data, callbacks=[cb])
cb.trainer = trainer
t1 = time.time()
trainer.train()
t_train = time.time() - t1
log(f"on_pre_optimizer_step: params with grad (per step) {cb.pre_opt_grads}")
W, M = C.gathered_state(trainer.model, zero3), C.full_master(trainer.model)
moved = sum(int((W[n].float() != reference[n].to(W[n].dtype).float())[masks[n]].sum()) for n in masks)
trainer.save_model(f"{out}/final")
dist.barrier()
res = {"weights": bad(W), "master": bad(M), "kept_moved": moved}
if dist.get_rank() == 0:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from safetensors.torch import load_file

    f = glob.glob(f"{out}/final/*.safetensors")
    sd = load_file(f[0]) if f else {}
    res["save_model"] = (
        bad(sd),
        str(next(iter(sd.values())).dtype) if sd else "NO SAFETENSORS: " + str(os.listdir(f"{out}/final")),
    )
    z = get_fp32_state_dict_from_zero_checkpoint(f"{out}/checkpoint-4")
    res["zero_to_fp32(ckpt-4)"] = (bad(z), str(next(iter(z.values())).dtype))
    log(
        "checkpoint-4 files:",
        sorted(os.listdir(f"{out}/checkpoint-4")),
        os.listdir(glob.glob(f"{out}/checkpoint-4/global_step*")[0]),
    )
    if a.regime == "freeze":  # bit-identical to fp32 pretrained? (bf16 cast of the pretrained in bf16 runs)
        res["frozen==pretrained fp32 in zero_to_fp32"] = all(
            torch.equal(z[n][~masks[n]], pretrained[n][~masks[n]]) for n in masks
        )
        res["frozen==bf16(pretrained) in save_model"] = all(
            torch.equal(sd[n][~masks[n]], pretrained[n].to(sd[n].dtype)[~masks[n]]) for n in masks
        )
log(f"PHASE1 {a.stage=} {a.bf16=} {a.thr=} {a.mode=} {a.regime=}: {res}; train {t_train:.1f}s")

# ---------------- phase 2: resume from checkpoint-2 in a fresh model/trainer ----------------
model2 = C.tiny_llama(seed=99)  # different init: everything must come from the checkpoint
cb2 = MaskCallback()
trainer2 = Trainer(model=model2, args=targs(4), train_dataset=data, callbacks=[cb2])
cb2.trainer = trainer2
trainer2.train(resume_from_checkpoint=f"{out}/checkpoint-2")
W2, M2 = C.gathered_state(trainer2.model, zero3), C.full_master(trainer2.model)
same = all(torch.equal(W2[n], W[n]) for n in W)
maxdiff = max(float((W2[n].float() - W[n].float()).abs().max()) for n in W)
log(
    f"PHASE2 resume: at on_train_begin (weights, master) bad = {cb2.begin}; after 2 more steps weights {bad(W2)} "
    f"master {bad(M2)}; resumed run == uninterrupted run: {same} (max |diff| {maxdiff:.2e}); total {time.time() - T0:.1f}s"
)
dist.barrier()
dist.destroy_process_group()
