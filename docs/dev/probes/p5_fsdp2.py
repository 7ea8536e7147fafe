"""Q6: FSDP2 (torch fully_shard) on CPU over gloo, outside accelerate, plain torch AdamW loop.

torchrun --nproc_per_node 2 p5_fsdp2.py [--mode pos|neg_gradhook|neg_stale] [--regime sparse|freeze]
intermediate_size=99 makes gate/up (99, 64) uneven on dim 0 (rank0 50 rows, rank1 49).
"""

import argparse
import time

import common as C
import torch
import torch.distributed as dist
from common import log
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Shard
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
from transformers import LlamaConfig, LlamaForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("--mode", default="pos")
ap.add_argument("--regime", default="sparse")
a = ap.parse_args()
dist.init_process_group("gloo")
t0 = time.time()
torch.manual_seed(0)
model = LlamaForCausalLM(
    LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=99,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        tie_word_embeddings=False,
    )
)
names = C.prunable_names(model)
masks = {n: C.make_mask(n, p.shape) for n, p in model.named_parameters() if n in names}
pretrained = {n: p.detach().clone() for n, p in model.named_parameters()}
with torch.no_grad():
    for n, p in model.named_parameters():
        if n in masks and a.regime == "sparse":
            p.mul_(masks[n])
reference = {n: p.detach().clone() for n, p in model.named_parameters()}
old_params = dict(model.named_parameters())  # references taken BEFORE sharding (stale afterwards)

mesh = init_device_mesh("cpu", (dist.get_world_size(),))
for layer in model.model.layers:
    fully_shard(layer, mesh=mesh)
fully_shard(model, mesh=mesh)
P = dict(model.named_parameters())
n0, nu = names[0], [n for n in names if "gate_proj" in n][0]
p = P[nu]
log(
    f"{nu}: type {type(p).__name__} is DTensor {isinstance(p, DTensor)} placements {p.placements} global "
    f"{tuple(p.shape)} local {tuple(p.to_local().shape)}; same object as before fully_shard: {p is old_params[nu]}"
)


def shard_rows(p):
    """(row_offset, local_rows) of this rank's Shard(0) slice: DTensor's own layout function."""
    local_shape, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
    return offset[0], local_shape[0]


for n in (n0, nu):
    off, rows = shard_rows(P[n])
    log(f"{n}: row offset {off}, local rows {rows}")

# per-rank LOCAL masks (dim-0 slices), the only masks a rank needs
local_mask = {}
for n in masks:
    off, rows = shard_rows(P[n])
    local_mask[n] = masks[n][off : off + rows]
local_frozen = {n: pretrained[n][shard_rows(P[n])[0] :][: shard_rows(P[n])[1]] for n in masks}

fired = {"tensor_hook": 0, "post_acc_hook": 0, "pre": 0, "post": 0}
for q in model.parameters():
    q.register_hook(lambda g: fired.__setitem__("tensor_hook", fired["tensor_hook"] + 1))
    q.register_post_accumulate_grad_hook(lambda t: fired.__setitem__("post_acc_hook", fired["post_acc_hook"] + 1))

opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
by_param = {id(P[n]): n for n in masks}


def pre(o, args, kwargs):
    fired["pre"] += 1
    for g in o.param_groups:
        for q in g["params"]:
            n = by_param.get(id(q))
            if n is not None and q.grad is not None:
                fired["max_pruned_grad_at_pre"] = max(
                    fired.get("max_pruned_grad_at_pre", 0.0), float(q.grad.to_local()[~local_mask[n]].abs().max())
                )
            if a.mode not in ("pos", "manual", "postacc"):
                continue
            if n is not None and q.grad is not None:
                assert isinstance(q.grad, DTensor) and q.grad.placements == (Shard(0),)
                q.grad.to_local().mul_(local_mask[n])  # to_local() is a view of the local shard


@torch.no_grad()
def post(o, args, kwargs):
    fired["post"] += 1
    if a.mode not in ("pos", "manual", "postacc"):
        return
    for g in o.param_groups:
        for q in g["params"]:
            n = by_param.get(id(q))
            if n is not None:
                loc = q.to_local()
                if a.regime == "freeze":
                    loc.copy_(torch.where(local_mask[n], loc, local_frozen[n]))
                else:
                    loc.mul_(local_mask[n])


opt.register_step_pre_hook(pre)
opt.register_step_post_hook(post)
if a.mode == "postacc":  # mask the REDUCED, SHARDED grad (local mask) before clipping; FSDP2 calls these hooks
    for n in masks:  # on the sharded DTensor param right after reduce-scatter (torch _fsdp_collectives.py)
        P[n].register_post_accumulate_grad_hook(lambda q, n=n: q.grad.to_local().mul_(local_mask[n]))
if a.mode == "neg_gradhook":  # NEGATIVE: mask via param.register_hook only (never fires on FSDP2 params)
    for n in masks:
        P[n].register_hook(lambda g, n=n: g * masks[n])
torch.manual_seed(1 + dist.get_rank())
t1 = time.time()
norms = []
for _step in range(3):
    for _micro in range(2):  # gradient accumulation 2 (grads reduce-scattered each backward here)
        ids = torch.randint(0, 128, (2, 16))
        model(input_ids=ids, labels=ids).loss.backward()
    if a.mode == "manual":  # reference: mask the local grad shards by hand right before clipping
        for n in masks:
            P[n].grad.to_local().mul_(local_mask[n])
    norms.append(round(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0).full_tensor()), 6))
    opt.step()
    opt.zero_grad()
    if a.mode == "neg_stale":  # NEGATIVE: mask the references taken before fully_shard
        with torch.no_grad():
            for n in masks:
                old_params[n].mul_(masks[n])
t_steps = time.time() - t1
full = {n: P[n].full_tensor() for n in masks}  # all-gather (collective: every rank must call)
bad = sum(int((full[n] != reference[n])[~masks[n]].sum()) for n in masks)
moved = sum(int((full[n] != reference[n])[masks[n]].sum()) for n in masks)
log(
    f"mode={a.mode} regime={a.regime}: clip norms {norms}; hooks fired {fired}; pruned/frozen positions changed: {bad}; kept moved "
    f"{moved}; full_tensor dtype {full[n0].dtype} shape {tuple(full[nu].shape)}; steps {t_steps:.2f}s total "
    f"{time.time() - t0:.1f}s"
)
dist.destroy_process_group()
