"""Shared helpers for the ZeRO/FSDP mask probes (hf_junkdna research, not product code)."""

import hashlib
from dataclasses import dataclass

import torch
import torch.distributed as dist

PRUNABLE = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "query",
    "key",
    "value",
    "dense",
)


def tiny_llama(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg)


def prunable_names(model):
    # GOTCHA: under zero.Init / ZeRO-3 p.shape is torch.Size([0]); the real shape is p.ds_shape
    return [
        n
        for n, p in model.named_parameters()
        if len(getattr(p, "ds_shape", p.shape)) == 2 and "layers." in n and any(k in n for k in PRUNABLE)
    ]


def make_mask(name, shape, sparsity=0.5):
    """Deterministic (same on every rank) random mask, True = kept."""
    seed = int(hashlib.sha1(name.encode()).hexdigest()[:8], 16)
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) >= sparsity


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def log(*a):
    print(f"[rank{rank()}]", *a, flush=True)


# ----------------------------------------------------------------------------------------------
# The core finding: where each module parameter lives in this rank's flat fp32 master partition
# ----------------------------------------------------------------------------------------------
@dataclass
class Fragment:
    name: str
    group: int  # index into the ZeRO optimizer's flat fp32 groups (sub-group for ZeRO-3)
    master_start: int  # offset inside that flat fp32 partition
    param_start: int  # offset inside param.view(-1) (the FULL, unpartitioned parameter)
    length: int  # number of elements (0 elements -> no fragment on this rank)


def zero_optimizer_of(obj):
    """Accept a DeepSpeedEngine, accelerate's DeepSpeedOptimizerWrapper, or the ZeRO optimizer."""
    from deepspeed.runtime.engine import DeepSpeedEngine

    if isinstance(obj, DeepSpeedEngine):
        return obj.optimizer
    while not (hasattr(obj, "single_partition_of_fp32_groups") or hasattr(obj, "fp32_partitioned_groups_flat")):
        obj = obj.optimizer  # accelerate wrapper -> ZeRO optimizer
    return obj


def flat_masters(zopt):
    if hasattr(zopt, "fp32_partitioned_groups_flat"):  # ZeRO-3 (DeepSpeedZeroOptimizer_Stage3)
        return zopt.fp32_partitioned_groups_flat
    return zopt.single_partition_of_fp32_groups  # ZeRO-1/2 (DeepSpeedZeroOptimizer)


def local_fragments(engine_or_optimizer, model):
    """{param_name: Fragment} for the elements of each parameter that THIS rank's fp32 master holds."""
    zopt = zero_optimizer_of(engine_or_optimizer)
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    if hasattr(zopt, "fp32_partitioned_groups_flat"):  # ZeRO-3
        for sub_group in zopt.fp16_groups:
            for p in sub_group:
                g, master_start, n = zopt.grad_position[zopt.get_param_id(p)]
                r = dist.get_rank(group=p.ds_process_group)
                param_start = r * p.partition_numel()  # == r * p.ds_tensor.ds_numel
                length = max(0, min(n, p.ds_numel - param_start))  # tail of last rank is padding
                if length:
                    out[names[id(p)]] = Fragment(names[id(p)], g, master_start, param_start, length)
    else:  # ZeRO-1/2: _hp_mapping set by _link_all_hp_params(); None when p has nothing on this rank
        for g, group in enumerate(zopt.bit16_groups):
            for p in group:
                m = getattr(p, "_hp_mapping", None)
                if m is None:
                    continue
                out[names[id(p)]] = Fragment(
                    names[id(p)],
                    g,
                    m.hp_fragment_address.start,
                    m.lp_fragment_address.start,
                    m.hp_fragment_address.numel,
                )
    return out


class MasterMaskHooks:
    """Step pre/post hooks on the innermost torch optimizer that act on the flat fp32 master partitions.

    keep[g]   : flat bool tensor over master partition g (True = kept / trainable; padding True)
    frozen[g] : optional flat fp32 values to write back at ~keep (freeze regime); None -> write 0 (sparse)
    """

    def __init__(self, zopt, keep, frozen=None, mask_grad=True, record=None):
        self.zopt, self.keep, self.frozen, self.mask_grad = zopt, keep, frozen or {}, mask_grad
        self.record = record if record is not None else []
        inner = zopt.optimizer
        self.handles = [inner.register_step_pre_hook(self.pre), inner.register_step_post_hook(self.post)]

    def _stepped(self, opt):
        masters = flat_masters(self.zopt)
        for pg in opt.param_groups:
            for t in pg["params"]:
                for g, m in enumerate(masters):
                    if t is m:
                        yield g, t

    def pre(self, opt, args, kwargs):
        for g, t in self._stepped(opt):
            self.record.append(("pre", g, t.grad is not None))
            if self.mask_grad and t.grad is not None:
                t.grad.mul_(self.keep[g].to(t.grad.dtype))

    @torch.no_grad()
    def post(self, opt, args, kwargs):
        for g, t in self._stepped(opt):
            self.record.append(("post", g))
            k = self.keep[g]
            if g in self.frozen:
                t.copy_(torch.where(k, t, self.frozen[g]))
            else:
                t.mul_(k.to(t.dtype))

    def remove(self):
        for h in self.handles:
            h.remove()


def build_flat_keep(engine_or_optimizer, model, masks):
    """Slice full masks {name: bool tensor} down to this rank's partitions -> {group: flat bool}."""
    zopt = zero_optimizer_of(engine_or_optimizer)
    frags = local_fragments(zopt, model)
    keep = {g: torch.ones(m.numel(), dtype=torch.bool, device=m.device) for g, m in enumerate(flat_masters(zopt))}
    for name, f in frags.items():
        if name in masks:
            keep[f.group][f.master_start : f.master_start + f.length] = (
                masks[name].reshape(-1)[f.param_start : f.param_start + f.length].to(keep[f.group].device)
            )
    return keep


def build_flat_frozen(engine_or_optimizer, model, masks, values):
    """{group: flat fp32} holding pretrained values (values[name], full fp32) at this rank's positions."""
    zopt = zero_optimizer_of(engine_or_optimizer)
    frags = local_fragments(zopt, model)
    out = {g: m.detach().clone() for g, m in enumerate(flat_masters(zopt))}
    for name, f in frags.items():
        if name in masks:
            out[f.group][f.master_start : f.master_start + f.length] = (
                values[name].reshape(-1)[f.param_start : f.param_start + f.length].to(out[f.group])
            )
    return out


def gathered_state(model, zero3):
    """Full module weights (as the model holds them) on every rank."""
    import deepspeed

    params = list(model.named_parameters())
    if zero3:
        with deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=None):
            return {n: p.detach().clone() for n, p in params}
    return {n: p.detach().clone() for n, p in params}


def full_master(model):
    """Full fp32 master of every parameter (collective!)."""
    from deepspeed.utils import safe_get_full_fp32_param

    return {n: safe_get_full_fp32_param(p).detach().clone() for n, p in model.named_parameters()}


def count_bad(state, masks):
    """Number of pruned positions that are non-zero."""
    return sum(int((state[n].float().reshape(masks[n].shape)[~masks[n]] != 0).sum()) for n in masks)
