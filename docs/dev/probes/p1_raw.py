"""Raw deepspeed.initialize probe: inner optimizer, hook order, local_fragments pattern test, masking.

torchrun --nproc_per_node 2 p1_raw.py --stage 2|3 [--bf16] [--thr 0] [--offload] [--mode pos|neg|gradonly]
"""

import argparse
import os
import sys
import time

import common as C
import deepspeed
import deepspeed.runtime.zero.stage_1_and_2 as s12
import torch
import torch.distributed as dist
from common import log

ap = argparse.ArgumentParser()
ap.add_argument("--stage", type=int, default=2)
ap.add_argument("--bf16", action="store_true")
ap.add_argument("--thr", type=float, default=None)  # stage3_param_persistence_threshold (None -> DS default 1e5)
ap.add_argument("--offload", action="store_true")
ap.add_argument(
    "--fp16", action="store_true", help="fp16 with initial loss scale 2**32 (forces overflow-skipped steps)"
)
ap.add_argument("--mode", default="pos")
ap.add_argument("--steps", type=int, default=3)
ap.add_argument("--subgroup", type=int, default=None, help="ZeRO-3 sub_group_size (several flat masters)")
ap.add_argument("--groups", action="store_true", help="2 param groups (decay / no decay)")
a = ap.parse_args()
t0 = time.time()
deepspeed.init_distributed(dist_backend="gloo")
zero3 = a.stage == 3

model = C.tiny_llama()
names = C.prunable_names(model)
masks = {n: C.make_mask(n, p.shape) for n, p in model.named_parameters() if n in names}
pretrained = {n: p.detach().clone() for n, p in model.named_parameters()}
with torch.no_grad():  # prune BEFORE the engine exists (the normal order)
    for n, p in model.named_parameters():
        if n in masks:
            p.mul_(masks[n])

zcfg = {"stage": a.stage}
if a.thr is not None:
    zcfg["stage3_param_persistence_threshold"] = a.thr
if a.subgroup:
    zcfg["sub_group_size"] = a.subgroup
if a.offload:
    zcfg["offload_optimizer"] = {"device": "cpu"}
opt_params = {"lr": 1e-2, "weight_decay": 0.1}
if not a.offload:
    opt_params["torch_adam"] = True
cfg = {
    "train_micro_batch_size_per_gpu": 2,
    "gradient_accumulation_steps": 2,
    "gradient_clipping": 1.0,
    "zero_optimization": zcfg,
    "optimizer": {"type": "AdamW", "params": opt_params},
    "bf16": {"enabled": a.bf16},
    "steps_per_print": 10**9,
}
if a.fp16:
    cfg["fp16"] = {"enabled": True, "initial_scale_power": 32, "loss_scale_window": 1000}
mp = model.parameters()
if a.groups:
    mp = [
        {"params": [p for n, p in model.named_parameters() if p.dim() == 2]},
        {"params": [p for n, p in model.named_parameters() if p.dim() != 2], "weight_decay": 0.0},
    ]
engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=mp, config=cfg)
t_init = time.time() - t0
zopt = engine.optimizer
inner = zopt.optimizer
log(
    f"engine.optimizer={type(zopt).__name__} engine.optimizer.optimizer={type(inner).__module__}.{type(inner).__name__}"
    f" is engine.basic_optimizer: {inner is engine.basic_optimizer}"
)
masters = C.flat_masters(zopt)
log(
    "inner param_groups (outside step):",
    [[(tuple(t.shape), str(t.dtype), str(t.device)) for t in pg["params"]] for pg in inner.param_groups],
)
log(
    "flat masters:",
    [(m.numel(), str(m.dtype), any(m is t for pg in inner.param_groups for t in pg["params"])) for m in masters],
)
if zero3:
    p0 = dict(model.named_parameters())[names[0]]
    log(
        f"ZeRO-3 {names[0]}: ds_numel={p0.ds_numel} ds_tensor={tuple(p0.ds_tensor.shape)} {p0.ds_tensor.dtype} "
        f"partition_numel={p0.partition_numel()} ds_status={p0.ds_status} data.shape={tuple(p0.data.shape)} "
        f"persist={p0.ds_persist}; persistent params: {len(zopt.persistent_parameters)}"
    )

frags = C.local_fragments(engine, model)
cover = sum(f.length for f in frags.values())
log(f"local fragments: {len(frags)} params, {cover} elements; masters total {sum(m.numel() for m in masters)}")

# ------------- event order tracing ----------------------------------------------------------------
events = []
_ag = s12.all_gather_dp_groups
s12.all_gather_dp_groups = lambda *x, **k: (events.append("z2.all_gather_dp_groups"), _ag(*x, **k))[1]
if zero3:
    for meth in ("_reassign_or_swap_out_partitioned_parameters", "_post_step"):
        orig = getattr(zopt, meth)
        setattr(zopt, meth, (lambda o, m: lambda *x, **k: (events.append("z3." + m), o(*x, **k))[1])(orig, meth))

pname = names[0]
P = dict(model.named_parameters())[pname]
F = frags.get(pname)


def lp_local_view():
    """This rank's lp (bf16/fp32 model) copy of fragment F, read without gathering."""
    if zero3:
        return P.ds_tensor.view(-1)[: F.length].float()
    return P.data.view(-1)[F.param_start : F.param_start + F.length].float()


def probe_pre(opt, args, kwargs):
    events.append("inner.pre")


def probe_post(opt, args, kwargs):
    if F is not None and any(t is masters[F.group] for pg in opt.param_groups for t in pg["params"]):
        m = masters[F.group][F.master_start : F.master_start + F.length]
        lp_dtype = torch.bfloat16 if a.bf16 else torch.float32
        events.append(f"inner.post(lp==master:{torch.equal(lp_local_view(), m.to(lp_dtype).float())})")
    else:
        events.append("inner.post")


hp = [inner.register_step_pre_hook(probe_pre), inner.register_step_post_hook(probe_post)]

# ------------- grad hooks (Q3) --------------------------------------------------------------------
ghook = {"calls": 0, "shapes": set()}
full_masks_for_grad = a.mode in ("pos", "gradonly")


def mk_ghook(n):
    def h(g):
        ghook["calls"] += 1
        ghook["shapes"].add((n.split(".")[-2], tuple(g.shape), str(g.dtype)))
        if full_masks_for_grad and n in masks:
            return g * masks[n].to(g.dtype)
        return g

    return h


for n, p in model.named_parameters():
    p.register_hook(mk_ghook(n))

keep = C.build_flat_keep(engine, model, masks)
rec = []
if a.mode == "pos":
    hooks = C.MasterMaskHooks(zopt, keep, record=rec)


gl = {"max_pruned_grad_in_pre": 0.0}


def leak_pre(opt, args, kwargs):  # what the grads look like BEFORE the mask pre-hook touches them
    for g, t in enumerate(masters):
        if any(t is x for pg in opt.param_groups for x in pg["params"]) and t.grad is not None and (~keep[g]).any():
            gl["max_pruned_grad_in_pre"] = max(gl["max_pruned_grad_in_pre"], float(t.grad[~keep[g]].abs().max()))


# torch runs step hooks in registration order: move this one in front of the mask pre-hook
inner._optimizer_step_pre_hooks.move_to_end(inner.register_step_pre_hook(leak_pre).id, last=False)

torch.manual_seed(1 + C.rank())
t1 = time.time()
for _step in range(a.steps):
    for _micro in range(2):
        ids = torch.randint(0, 128, (2, 16))
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
    if a.mode == "neg":  # NEGATIVE CONTROL: zero only the module weights after the step
        with torch.no_grad():
            if zero3:
                ps = [p for n, p in model.named_parameters() if n in masks]
                with deepspeed.zero.GatheredParameters(ps, modifier_rank=0):
                    if C.rank() == 0:
                        for n, p in model.named_parameters():
                            if n in masks:
                                p.mul_(masks[n])
            else:
                for n, p in model.named_parameters():
                    if n in masks:
                        p.mul_(masks[n])
t_steps = time.time() - t1
log("event order (first 12 events):", events[:12])
log(f"grad hooks: {ghook['calls']} calls over {a.steps} steps x 2 micro; shapes e.g. {sorted(ghook['shapes'])[:3]}")
log(
    f"max |fp32 grad| at pruned positions seen by inner pre-hook (before mask pre-hook): {gl['max_pruned_grad_in_pre']:.3g}"
)

W = C.gathered_state(model, zero3)
M = C.full_master(model)
bad_w, bad_m = C.count_bad(W, masks), C.count_bad(M, masks)
moved = sum(int(((W[n].float() - pretrained[n]).abs() > 0)[masks[n]].sum()) for n in masks)
log(
    f"mode={a.mode}: pruned non-zero: gathered weights {bad_w}, fp32 master {bad_m}; kept moved {moved}; "
    f"W dtype {W[names[0]].dtype}"
)

# ------------- Q2 pattern test: write a known pattern through local_fragments -------------------------
for h in hp:
    h.remove()
if a.mode == "pos":
    hooks.remove()
sid = {n: i for i, n in enumerate(dict(model.named_parameters()))}
with torch.no_grad():
    for n, f in frags.items():
        idx = torch.arange(f.param_start, f.param_start + f.length, dtype=torch.float32)
        masters[f.group][f.master_start : f.master_start + f.length] = (sid[n] + 1) * 1000 + idx
for pg in inner.param_groups:
    pg["lr"] = 0.0
for _micro in range(2):  # one step with lr=0: copies master -> lp and all-gathers
    ids = torch.randint(0, 128, (2, 16))
    engine.backward(engine(input_ids=ids, labels=ids).loss)
    engine.step()
W = C.gathered_state(model, zero3)
M = C.full_master(model)
wrong_w = wrong_m = 0
for n in W:
    exp = ((sid[n] + 1) * 1000 + torch.arange(W[n].numel(), dtype=torch.float32)).reshape(W[n].shape)
    wrong_m += int((M[n] != exp).sum())
    wrong_w += int((W[n] != exp.to(W[n].dtype)).sum())
log(f"pattern test: wrong elements in full fp32 master {wrong_m}, in gathered model weights {wrong_w}")
log(
    f"mask hook calls (pre/post per flat master): {sum(1 for r in rec if r[0] == 'pre')}/{sum(1 for r in rec if r[0] == 'post')} over {a.steps} steps"
)
log(f"skipped (overflow) steps: {engine.skipped_steps}, global_steps {engine.global_steps}")
log(f"timing: init {t_init:.1f}s, {a.steps} steps {t_steps:.2f}s")
dist.barrier()
dist.destroy_process_group()
sys.stdout.flush()
sys.stderr.flush()
# GOTCHA: ZeRO-3 on CPU sometimes aborts at interpreter teardown ("terminate called without an active exception")
os._exit(0)
