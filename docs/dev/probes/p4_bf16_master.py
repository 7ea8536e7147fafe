"""Q7: under bf16, what does the fp32 master start from? torchrun --nproc_per_node 2 p4_bf16_master.py --stage 2|3"""

import argparse

import common as C
import deepspeed
import torch
import torch.distributed as dist
from common import log

ap = argparse.ArgumentParser()
ap.add_argument("--stage", type=int, default=2)
a = ap.parse_args()
deepspeed.init_distributed(dist_backend="gloo")
model = C.tiny_llama()
fp32 = {n: p.detach().clone() for n, p in model.named_parameters()}
cfg = {
    "train_micro_batch_size_per_gpu": 2,
    "zero_optimization": {"stage": a.stage},
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
    "bf16": {"enabled": True},
}
engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=cfg)
M = C.full_master(model)
W = C.gathered_state(model, a.stage == 3)
n = C.prunable_names(model)[0]
log(
    f"stage {a.stage}: module dtype {W[n].dtype}; master == fp32 pretrained: {torch.equal(M[n], fp32[n])}; "
    f"master == bf16(pretrained).float(): {torch.equal(M[n], fp32[n].bfloat16().float())}"
)
# write the exact fp32 pretrained value into the master: is the bf16 weight then bf16(pretrained)?
frags = C.local_fragments(engine, model)
masters = C.flat_masters(engine.optimizer)
with torch.no_grad():
    for name, f in frags.items():
        masters[f.group][f.master_start : f.master_start + f.length] = fp32[name].view(-1)[
            f.param_start : f.param_start + f.length
        ]
for pg in engine.optimizer.optimizer.param_groups:
    pg["lr"] = 0.0
ids = torch.randint(0, 128, (2, 8))
engine.backward(engine(input_ids=ids, labels=ids).loss)
engine.step()
M, W = C.full_master(model), C.gathered_state(model, a.stage == 3)
log(
    f"after writing fp32 pretrained into master + lr=0 step: master == fp32 pretrained {all(torch.equal(M[k], fp32[k]) for k in M)}; "
    f"weights == bf16(pretrained) (round-to-nearest-even) {all(torch.equal(W[k], fp32[k].bfloat16()) for k in W)}"
)
dist.destroy_process_group()
