"""Q5: prune a model that is ALREADY partitioned by zero.Init (from_pretrained after TrainingArguments(deepspeed=z3)).

torchrun --nproc_per_node 2 p3_zero_init.py [--bf16]
(a) read-only gather (GatheredParameters(modifier_rank=None)): every rank sees the full weight, computes the mask,
    keeps ONLY its partition slice, and prunes its own ds_tensor in place (no broadcast back).
(b) GatheredParameters(modifier_rank=0): rank 0 modifies, DeepSpeed re-partitions on exit (broadcast from rank 0).
Then the Trainer trains with master hooks + local-grad masking (only local masks), checks invariants.
"""

import argparse
import os
import time

import common as C
import deepspeed
import torch
import torch.distributed as dist
from common import log
from datasets import Dataset
from deepspeed.utils import safe_get_local_grad, safe_set_local_grad
from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments
from transformers.integrations import is_deepspeed_zero3_enabled

ap = argparse.ArgumentParser()
ap.add_argument("--bf16", action="store_true")
ap.add_argument("--way", default="a")
a = ap.parse_args()
path = "/tmp/dsprobe/tiny_llama"
ds = {
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "train_batch_size": "auto",
    "gradient_clipping": "auto",
    "bf16": {"enabled": "auto"},
    "steps_per_print": 10**9,
    "zero_optimization": {
        "stage": 3,
        "stage3_param_persistence_threshold": 0,
        "stage3_gather_16bit_weights_on_model_save": True,
    },
    "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto", "torch_adam": True}},
}
args = TrainingArguments(
    output_dir="/tmp/dsprobe/out_zinit",
    use_cpu=True,
    per_device_train_batch_size=2,
    gradient_accumulation_steps=2,
    max_steps=3,
    learning_rate=1e-2,
    weight_decay=0.1,
    bf16=a.bf16,
    report_to=[],
    deepspeed=ds,
    save_strategy="no",
    disable_tqdm=True,
)
# TrainingArguments(deepspeed=...) initialises torch.distributed and keeps a global HfTrainerDeepSpeedConfig alive.
# GOTCHA (CPU/use_cpu): deepspeed.comm is NOT initialised by that, so zero.Init's DeepSpeedConfig sees world_size 1
# and fails the batch-size assertion: initialise it explicitly (it reuses the existing torch process group).
deepspeed.init_distributed(dist_backend="gloo")
if dist.get_rank() == 0 and not os.path.exists(path):
    C.tiny_llama().save_pretrained(path)
dist.barrier()
log("is_deepspeed_zero3_enabled() after TrainingArguments:", is_deepspeed_zero3_enabled())
t = time.time()
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
names = C.prunable_names(model)
P = dict(model.named_parameters())
p0 = P[names[0]]
log(
    f"after from_pretrained ({time.time() - t:.2f}s): {names[0]} ds_id={getattr(p0, 'ds_id', None)} "
    f"data.shape={tuple(p0.data.shape)} ds_shape={tuple(p0.ds_shape)} ds_tensor={tuple(p0.ds_tensor.shape)} "
    f"{p0.ds_tensor.dtype}"
)

# ---- prune a partitioned model ----
t = time.time()
local_masks, full_masks = {}, {}
r = dist.get_rank()
for n in names:
    p = P[n]
    if a.way == "a":
        with deepspeed.zero.GatheredParameters([p], modifier_rank=None):  # read-only all-gather
            full = p.detach()
            mask = full.abs() > full.abs().flatten().kthvalue(full.numel() // 2).values  # 50% magnitude, per layer
        start = r * p.partition_numel()
        length = max(0, min(p.partition_numel(), p.ds_numel - start))
        lm = mask.reshape(-1)[start : start + length].clone()
        with torch.no_grad():
            p.ds_tensor.view(-1)[:length].mul_(lm.to(p.ds_tensor.dtype))  # prune own partition only
        local_masks[n] = (start, lm)
    else:
        with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
            mask = p.abs() > p.abs().flatten().kthvalue(p.numel() // 2).values
            if r == 0:
                with torch.no_grad():
                    p.mul_(mask)
        start = r * p.partition_numel()
        length = max(0, min(p.partition_numel(), p.ds_numel - start))
        local_masks[n] = (start, mask.reshape(-1)[start : start + length].clone())
    full_masks[n] = mask.clone()  # for the CHECK only; the product keeps local_masks
t_prune = time.time() - t
log(f"pruned {len(names)} partitioned params (way {a.way}) in {t_prune:.3f}s")


class Cb(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kw):
        zopt = C.zero_optimizer_of(optimizer)
        frags = C.local_fragments(zopt, model)
        keep = {g: torch.ones(m.numel(), dtype=torch.bool) for g, m in enumerate(C.flat_masters(zopt))}
        for n, (start, lm) in local_masks.items():
            f = frags.get(n)
            if f is None:
                continue
            assert f.param_start == start and f.length == lm.numel(), (n, f, start, lm.numel())
            keep[f.group][f.master_start : f.master_start + f.length] = lm
        self.bad_begin = C.count_bad(C.full_master(model), full_masks)
        C.MasterMaskHooks(zopt, keep)
        orig = zopt.step

        def step(*x, **k):  # mask LOCAL reduced grads before DeepSpeed computes the clip norm
            for n, (_start, lm) in local_masks.items():
                g = safe_get_local_grad(P[n])
                g[: lm.numel()] *= lm.to(g.dtype)
                safe_set_local_grad(P[n], g)
            return orig(*x, **k)

        zopt.step = step


torch.manual_seed(0)
data = Dataset.from_list([{"input_ids": (i := torch.randint(0, 128, (16,)).tolist()), "labels": i} for _ in range(32)])
cb = Cb()
trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[cb])
trainer.train()
W, M = C.gathered_state(model, True), C.full_master(model)
log(
    f"master at train begin: {cb.bad_begin} pruned non-zero; after 3 steps: weights {C.count_bad(W, full_masks)}, "
    f"master {C.count_bad(M, full_masks)}; sparsity of masks {1 - sum(int(m.sum()) for m in full_masks.values()) / sum(m.numel() for m in full_masks.values()):.3f}"
)
dist.barrier()
dist.destroy_process_group()
