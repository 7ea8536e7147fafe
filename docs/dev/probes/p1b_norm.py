"""Does gradient clipping see masked grads?  Compare the engine's global grad norm for
A: param.register_hook masking (full mask per param on every rank)
B: ZeRO-3 only: wrap engine.optimizer.step and mask LOCAL fp32 grad partitions via safe_get/set_local_grad
   (only this rank's mask needed) before DeepSpeed computes the norm
C: no grad masking before the norm (mask only in the inner optimizer pre-hook)
torchrun --nproc_per_node 2 p1b_norm.py --stage 3 [--offload]
"""

import argparse

import common as C
import deepspeed
import torch
import torch.distributed as dist
from common import log
from deepspeed.utils import safe_get_local_grad, safe_set_local_grad

ap = argparse.ArgumentParser()
ap.add_argument("--stage", type=int, default=3)
ap.add_argument("--offload", action="store_true")
a = ap.parse_args()
deepspeed.init_distributed(dist_backend="gloo")


def run(variant):
    model = C.tiny_llama()
    masks = {n: C.make_mask(n, p.shape) for n, p in model.named_parameters() if n in C.prunable_names(model)}
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in masks:
                p.mul_(masks[n])
    z = {"stage": a.stage, "stage3_param_persistence_threshold": 0}
    op = {"lr": 1e-2, "weight_decay": 0.1}
    if a.offload:
        z["offload_optimizer"] = {"device": "cpu"}
    else:
        op["torch_adam"] = True
    cfg = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 2,
        "gradient_clipping": 1e-3,
        "zero_optimization": z,
        "optimizer": {"type": "AdamW", "params": op},
        "steps_per_print": 10**9,
    }
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=cfg)
    zopt = engine.optimizer
    keep = C.build_flat_keep(engine, model, masks)
    C.MasterMaskHooks(zopt, keep)  # always: pre-hook zeroes master grads, post-hook zeroes master
    if variant == "A":
        for n, p in model.named_parameters():
            if n in masks:
                p.register_hook(lambda g, m=masks[n]: g * m.to(g.dtype))
    if variant == "B":
        frags = C.local_fragments(engine, model)
        named = dict(model.named_parameters())
        local = {
            n: masks[n].reshape(-1)[f.param_start : f.param_start + f.length] for n, f in frags.items() if n in masks
        }
        orig_step = zopt.step

        def step(*args, **kw):
            for n, lm in local.items():
                p = named[n]
                g = safe_get_local_grad(p)  # partition_numel() long, padding at the tail of the last rank
                g[: lm.numel()] *= lm.to(g.dtype)
                safe_set_local_grad(p, g)
            return orig_step(*args, **kw)

        zopt.step = step  # instance attribute: engine._take_model_step calls self.optimizer.step()
    torch.manual_seed(1 + C.rank())
    norms = []
    for _ in range(3):
        for _ in range(2):
            ids = torch.randint(0, 128, (2, 16))
            engine.backward(engine(input_ids=ids, labels=ids).loss)
            engine.step()
        norms.append(round(float(engine.get_global_grad_norm()), 6))
    bad = C.count_bad(C.full_master(model), masks)
    return norms, bad


res = {v: run(v) for v in (["A", "B", "C"] if a.stage == 3 else ["A", "C"])}
for v, (norms, bad) in res.items():
    log(f"variant {v}: global grad norms {norms}, pruned non-zero in master {bad}")
dist.destroy_process_group()
