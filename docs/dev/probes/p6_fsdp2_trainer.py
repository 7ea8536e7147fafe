"""Q6b: FSDP2 through the REAL Trainer on CPU without accelerate's FSDP plugin: transformers 5.24 native
`from_pretrained(..., distributed_config=DistributedConfig(fsdp_size=2))` (fully_shard at load time, gloo on CPU);
the Trainer sees `model.is_distributed_loading_by_transformers` and does not wrap/shard it again.
torchrun --nproc_per_node 2 p6_fsdp2_trainer.py [--mode pos|neg]
"""

import argparse
import glob
import os
import time

import common as C
import torch
import torch.distributed as dist
from common import log
from datasets import Dataset
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments
from transformers.distributed import DistributedConfig

ap = argparse.ArgumentParser()
ap.add_argument("--mode", default="pos")
a = ap.parse_args()
path = "/tmp/dsprobe/tiny_llama"
if not os.path.exists(f"{path}/model.safetensors"):  # torch.distributed is not up yet: rank 0 writes, others wait
    if os.environ.get("RANK", "0") == "0":
        C.tiny_llama().save_pretrained(path)
    while not os.path.exists(f"{path}/model.safetensors"):
        time.sleep(0.2)
    time.sleep(0.5)
model = AutoModelForCausalLM.from_pretrained(
    path, dtype=torch.float32, distributed_config=DistributedConfig(fsdp_size=2)
)
P = dict(model.named_parameters())
names = C.prunable_names(model)
p0 = P[names[0]]
log(
    f"dist backend {dist.get_backend()}; {names[0]} {type(p0).__name__} {p0.placements} local {tuple(p0.to_local().shape)}; "
    f"is_distributed_loading_by_transformers={getattr(model, 'is_distributed_loading_by_transformers', None)}"
)


def rows(p):
    shape, off = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
    return off[0], shape[0]


# prune a sharded model: mask computed on the full tensor (gather), each rank keeps + applies its row slice
local_mask, full_mask = {}, {}
with torch.no_grad():
    for n in names:
        full = P[n].full_tensor()
        m = full.abs() > full.abs().flatten().kthvalue(full.numel() // 2).values
        o, r = rows(P[n])
        local_mask[n] = m[o : o + r].clone()
        P[n].to_local().mul_(local_mask[n])
        full_mask[n] = m


class Cb(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kw):
        inner = optimizer.optimizer  # accelerate AcceleratedOptimizer -> torch AdamW over DTensor params
        log(
            f"Trainer.optimizer={type(optimizer).__name__} .optimizer={type(inner).__name__} "
            f"param types {{{', '.join(sorted({type(q).__name__ for g in inner.param_groups for q in g['params']}))}}}"
        )
        if a.mode != "pos":
            return
        P2 = dict(model.named_parameters())
        for n in names:  # mask reduced sharded grads BEFORE the Trainer clips (FSDP2 calls these after reduce-scatter)
            P2[n].register_post_accumulate_grad_hook(lambda q, n=n: q.grad.to_local().mul_(local_mask[n]))
        by_id = {id(P2[n]): n for n in names}

        @torch.no_grad()
        def post(o, args_, kwargs):
            for g in o.param_groups:
                for q in g["params"]:
                    if id(q) in by_id:
                        q.to_local().mul_(local_mask[by_id[id(q)]])

        inner.register_step_post_hook(post)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
        self.grads = sum(q.grad is not None for q in model.parameters())


torch.manual_seed(0)
data = Dataset.from_list([{"input_ids": (i := torch.randint(0, 128, (16,)).tolist()), "labels": i} for _ in range(32)])
out = f"/tmp/dsprobe/out_fsdp2_{a.mode}"
args = TrainingArguments(
    output_dir=out,
    use_cpu=True,
    per_device_train_batch_size=2,
    gradient_accumulation_steps=2,
    max_steps=4,
    learning_rate=1e-2,
    weight_decay=0.1,
    report_to=[],
    save_steps=2,
    save_only_model=True,
    disable_tqdm=True,
)
cb = Cb()
trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[cb])
trainer.train()
full = {n: dict(trainer.model.named_parameters())[n].full_tensor() for n in names}
bad = sum(int((full[n] != 0)[~full_mask[n]].sum()) for n in names)
log(f"mode={a.mode}: on_pre_optimizer_step saw {cb.grads} params with grad; pruned non-zero after 4 steps: {bad}")
trainer.save_model(f"{out}/final")
dist.barrier()
if dist.get_rank() == 0:
    from safetensors.torch import load_file

    f = glob.glob(f"{out}/final/*.safetensors") + glob.glob(f"{out}/checkpoint-4/*.safetensors")
    for fn in f:
        sd = load_file(fn)
        log(
            f"{fn.split('out_')[1]}: {len(sd)} tensors, pruned non-zero {sum(int((sd[n] != 0)[~full_mask[n]].sum()) for n in names if n in sd)}, shape {tuple(sd[names[0]].shape)}"
        )
    log("checkpoint-4:", sorted(os.listdir(f"{out}/checkpoint-4")))
dist.barrier()
dist.destroy_process_group()
