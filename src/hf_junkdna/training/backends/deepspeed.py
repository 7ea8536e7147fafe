"""DeepSpeed ZeRO-2/3: masks on this rank's fragments of the fp32 master, and ZeRO-3 partitioned pruning.

What the optimizer updates (docs/dev/zero_fsdp_notes.md has the measurements behind every line here):

- ZeRO-2 (``DeepSpeedZeroOptimizer``): one flat fp32 partition per param group,
  ``zopt.single_partition_of_fp32_groups[g]``; a parameter may be split across ranks, and its local
  fragment is ``p._hp_mapping`` (offset in the flat master, offset in the parameter, length).
- ZeRO-3 (``DeepSpeedZeroOptimizer_Stage3``): one flat fp32 partition per sub-group,
  ``zopt.fp32_partitioned_groups_flat[s]``; every parameter is partitioned on its own, rank r holding
  elements ``[r * partition_numel, (r + 1) * partition_numel)`` (``zopt.grad_position`` gives where).
- The innermost torch optimizer (``zopt.optimizer``: torch AdamW, FusedAdam or DeepSpeedCPUAdam) is called
  once per group / sub-group with only that flat master in its param groups; the binding's hooks act on
  the fragments of the master being stepped. DeepSpeed then copies the master into the module's bf16/fp32
  weights (``p.data`` under ZeRO-2, ``p.ds_tensor`` under ZeRO-3): masking the master masks both, and with
  them ``save_model``, ``zero_to_fp32`` and resumed runs.
- DeepSpeed clips inside ``zopt.step()`` with a norm computed from the reduced local gradients. The
  binding wraps ``zopt.step`` to mask those (this rank's fragments only) first, so the norm is the sparse
  model's: ZeRO-3 through ``safe_get_local_grad``/``safe_set_local_grad``, ZeRO-2 through the fragments
  ``p._hp_mapping`` points at (the per-parameter norms of the CPU-offload path are recomputed).

Configurations none of this was verified on are refused at start, naming the config key
(``check_deepspeed_config``). ``prune_partitioned`` prunes a model ZeRO-3 has already partitioned
(``from_pretrained`` under ``zero.Init``) by magnitude without gathering any weight: each rank scores its
own ``ds_tensor`` slices and only histograms and tie counts cross ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ...masks import MaskSet, pack_bool, unpack_bool
from ..bitops import scale_by_bits_
from ..mask_binding import BackendView, MaskedTensor, UnsupportedBackendError, _Removable, unwrap_model
from . import all_reduce_sum, comm_device
from .shards import ShardMaskSet, local_bits, pack_local

_OPTIMIZERS = ("adam", "adamw", "adagrad", "lamb", "lion", "sgd")


# ------------------------------------------------------------------------------------------ config check
def _enabled(section) -> bool:
    return isinstance(section, dict) and section.get("enabled") not in (None, False, "false", "False")


def _device(section) -> str:
    return str((section or {}).get("device") or "none").lower() if isinstance(section, dict) else "none"


def check_deepspeed_config(config: dict) -> None:
    """Raise ``UnsupportedBackendError`` naming the first key of ``config`` the mask code cannot serve.

    Served: ZeRO stage 2 or 3, fp32/bf16 (fp16 takes the same code path; not verified on a GPU here),
    ``offload_optimizer`` to the CPU, any ``stage3_param_persistence_threshold`` and ``sub_group_size``.
    """
    zero = config.get("zero_optimization") or {}
    stage = zero.get("stage", 0)
    if isinstance(stage, str) and stage.strip().isdigit():  # DeepSpeed itself takes "2"
        stage = int(stage)

    def refuse(key: str, value: Any, why: str):
        raise UnsupportedBackendError(
            f"DeepSpeed config {key}={value!r}: {why}. Masks are enforced under ZeRO stage 2 and 3 (optionally with "
            "offload_optimizer.device='cpu'); without that they would silently not hold, so training stops here. "
            "See docs/distributed.md for the supported matrix."
        )

    if stage not in (2, 3):
        refuse(
            "zero_optimization.stage",
            stage,
            "stages 0 and 1 keep other optimizer wrappers (BF16_Optimizer / FP16_Optimizer / ZeRO-1 unpartitioned "
            "gradients) whose master copies this library does not map; use stage 2 or 3, or plain DDP",
        )
    offload_optimizer = zero.get("offload_optimizer")
    if _device(offload_optimizer) not in ("none", "cpu"):
        refuse(
            "zero_optimization.offload_optimizer.device",
            _device(offload_optimizer),
            "NVMe offload swaps the fp32 master in and out, so fragments move",
        )
    ratio = (offload_optimizer or {}).get("ratio", 1.0) if isinstance(offload_optimizer, dict) else 1.0
    if ratio not in (None, "auto") and float(ratio) < 1.0:
        refuse(
            "zero_optimization.offload_optimizer.ratio",
            ratio,
            "partial offload steps part of the master with a second optimizer the hooks do not see",
        )
    if isinstance(offload_optimizer, dict) and offload_optimizer.get("super_offload"):
        refuse(
            "zero_optimization.offload_optimizer.super_offload",
            offload_optimizer["super_offload"],
            "SuperOffload steps the CPU sub-groups in a worker process with its own optimizer, which the mask "
            "hooks never see",
        )
    if _device(zero.get("offload_param")) != "none":
        refuse(
            "zero_optimization.offload_param.device",
            _device(zero.get("offload_param")),
            "parameter offload was not verified (offload the optimizer only)",
        )
    if zero.get("cpu_offload_param"):  # the legacy spelling of offload_param.device='cpu'
        refuse("zero_optimization.cpu_offload_param", zero["cpu_offload_param"], "parameter offload was not verified")
    for key in ("round_robin_gradients", "zero_quantized_weights", "zero_quantized_gradients"):
        if zero.get(key):
            refuse(f"zero_optimization.{key}", zero[key], "this changes where each parameter's fragment lives")
    if zero.get("zero_quantized_nontrainable_weights"):
        refuse(
            "zero_optimization.zero_quantized_nontrainable_weights",
            True,
            "ZeRO++ quantized weights were not verified",
        )
    if _count(zero, "zero_hpz_partition_size", 1, refuse) > 1:
        refuse(
            "zero_optimization.zero_hpz_partition_size",
            zero["zero_hpz_partition_size"],
            "ZeRO++ hierarchical partitions were not verified",
        )
    if _count(zero, "mics_shard_size", -1, refuse) > 0:
        refuse("zero_optimization.mics_shard_size", zero["mics_shard_size"], "MiCS sharding was not verified")
    for where, section in (("zero_optimization.zenflow", zero.get("zenflow")), ("zenflow", config.get("zenflow"))):
        if section:
            refuse(where, section, "ZenFlow steps part of the model on the CPU outside the hooked optimizer")
    optimizer = (config.get("optimizer") or {}).get("type")
    if optimizer is not None and str(optimizer).lower() not in _OPTIMIZERS:
        refuse(
            "optimizer.type",
            optimizer,
            f"only element-wise optimizers are served ({', '.join(_OPTIMIZERS)}); Muon and 1-bit optimizers "
            "compress or orthogonalize the update across elements",
        )
    if _enabled(config.get("compile")) or (config.get("compile") or {}).get("deepcompile"):
        refuse("compile.deepcompile", True, "DeepCompile rewrites the gradient buffers")
    if _count(config.get("tensor_parallel") or {}, "autotp_size", 1, refuse, "tensor_parallel.") > 1:
        refuse("tensor_parallel.autotp_size", config["tensor_parallel"]["autotp_size"], "AutoTP was not verified")


def _count(section: dict, key: str, default: int, refuse, prefix: str = "zero_optimization.") -> int:
    """An integer setting; anything else ("auto" included: its value decides what is served) is refused by name."""
    value = section.get(key, default)
    if value is None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        refuse(f"{prefix}{key}", value, "expected an integer here, so whether the masks can serve it is unknown")


def current_deepspeed_config(model=None) -> dict | None:
    """The config of the DeepSpeed run ``model`` belongs to (engine, accelerate state or transformers)."""
    config = getattr(getattr(model, "_config", None), "_param_dict", None)  # a DeepSpeedEngine
    if config is not None:
        return config
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state:  # only an existing state: AcceleratorState() would create one
        plugin = getattr(AcceleratorState(), "deepspeed_plugin", None)
        if plugin is not None:
            return plugin.deepspeed_config
    from transformers.integrations.deepspeed import deepspeed_config

    return deepspeed_config()


# --------------------------------------------------------------------------------------------- the view
def zero_optimizer(chain: list):
    """The ZeRO optimizer in an optimizer chain (accelerate wrapper -> ZeRO optimizer -> torch optimizer)."""
    for optimizer in chain:
        if hasattr(optimizer, "fp32_partitioned_groups_flat") or hasattr(optimizer, "single_partition_of_fp32_groups"):
            return optimizer
    names = " -> ".join(type(optimizer).__name__ for optimizer in chain)
    raise UnsupportedBackendError(
        f"DeepSpeed without a ZeRO-2/3 optimizer ({names}): zero_optimization.stage 0/1 (BF16_Optimizer, "
        "FP16_Optimizer) is not served; use stage 2 or 3"
    )


def _check_optimizer(zopt) -> None:
    """The attribute-level twin of ``check_deepspeed_config`` (for runs whose config dict is not at hand)."""
    checks = (
        ("partition_gradients", False, "zero_optimization.stage=1"),
        ("round_robin_gradients", True, "zero_optimization.round_robin_gradients=True"),
        ("swap_optimizer", True, "zero_optimization.offload_optimizer.device='nvme'"),
        ("zenflow", True, "zero_optimization.zenflow"),
        ("use_muon", True, "optimizer.type='Muon'"),
        ("offload_param", True, "zero_optimization.offload_param"),
    )
    for attribute, bad, key in checks:
        if hasattr(zopt, attribute) and bool(getattr(zopt, attribute)) == bad:
            raise UnsupportedBackendError(
                f"DeepSpeed config {key}: masks are not served under it (docs/distributed.md)"
            )
    if getattr(zopt, "backup_optimizer", None) is not None:
        raise UnsupportedBackendError(
            "DeepSpeed config zero_optimization.offload_optimizer.ratio<1: a second optimizer steps part of the master"
        )


def flat_masters(zopt) -> list[torch.Tensor]:
    if hasattr(zopt, "fp32_partitioned_groups_flat"):
        return zopt.fp32_partitioned_groups_flat
    return zopt.single_partition_of_fp32_groups


@dataclass(eq=False)
class ZeroFragment(MaskedTensor):
    """This rank's fragment of one parameter inside a flat fp32 master partition of a ZeRO optimizer.

    ``tensor`` is a view of ``masters[index][start : start + length]`` (looked up on every access);
    ``offset`` is the fragment's first element in the flattened parameter; ``param`` is the module parameter.
    """

    param: Any = None
    masters: Any = None
    index: int = 0
    start: int = 0
    length: int = 0

    @property
    def tensor(self) -> torch.Tensor:
        return self.masters[self.index].narrow(0, self.start, self.length)

    @tensor.setter
    def tensor(self, value) -> None:  # the dataclass __init__ assigns it; the view is always recomputed
        pass

    @property
    def owner(self) -> torch.Tensor:
        return self.masters[self.index]

    @property
    def numel(self) -> int:
        return self.length

    def grad(self) -> torch.Tensor | None:
        grad = self.owner.grad
        return None if grad is None else grad.narrow(0, self.start, self.length)

    def state_tensors(self, optimizer) -> list[torch.Tensor]:
        owner = self.owner
        state = optimizer.state.get(owner, {})
        return [
            value.narrow(0, self.start, self.length)
            for value in state.values()
            if torch.is_tensor(value) and value.shape == owner.shape
        ]

    @property
    def hook_tensor(self) -> None:
        return None  # gradients are masked on the reduced partitions (zero_view's install), not per backward


def _fragments(zopt, model) -> list[tuple[str, Any, int, int, int, int]]:
    """(name, param, master index, start in the master, start in the parameter, length) for this rank."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = []
    if hasattr(zopt, "fp32_partitioned_groups_flat"):  # ZeRO-3: each parameter partitioned on its own
        for sub_group in zopt.fp16_groups:
            for p in sub_group:
                index, master_start, partition = zopt.grad_position[zopt.get_param_id(p)]
                param_start = dist.get_rank(group=p.ds_process_group) * p.partition_numel()
                length = max(0, min(partition, p.ds_numel - param_start))  # the last rank's tail is padding
                if length and id(p) in names:
                    out.append((names[id(p)], p, int(index), int(master_start), param_start, length))
    else:  # ZeRO-1/2: _hp_mapping is None where a parameter has nothing on this rank
        for index, group in enumerate(zopt.bit16_groups):
            for p in group:
                mapping = getattr(p, "_hp_mapping", None)
                if mapping is not None and id(p) in names:
                    address = mapping.hp_fragment_address
                    out.append(
                        (names[id(p)], p, index, address.start, mapping.lp_fragment_address.start, address.numel)
                    )
    return out


def zero_view(model, chain: list, masks: MaskSet) -> BackendView:
    config = current_deepspeed_config(model)
    if config is not None:
        check_deepspeed_config(config)
    zopt = zero_optimizer(chain)
    _check_optimizer(zopt)
    inner = chain[-1]
    masters = flat_masters(zopt)
    zero3 = hasattr(zopt, "fp32_partitioned_groups_flat")
    module = unwrap_model(model)
    entries, in_groups = [], set()
    for name, param, index, start, param_start, length in _fragments(zopt, module):
        in_groups.add(name)
        if name not in masks:
            continue
        group_id = zopt.sub_group_to_group_id[index] if zero3 else index
        bits = local_bits(masks, name, param_start, length).to(masters[index].device)
        entries.append(
            ZeroFragment(
                name,
                None,
                bits,
                inner.param_groups[group_id],
                offset=param_start,
                param=param,
                masters=masters,
                index=index,
                start=start,
                length=length,
            )
        )
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    return BackendView(
        entries,
        grad_hooks=False,
        reduce_sum=all_reduce_sum,
        untracked=[n for n in masks.names() if n not in trainable],
        whole_parameters=False,
        sharded=True,
        last_call=lambda optimizer: any(t is masters[-1] for g in optimizer.param_groups for t in g["params"]),
        install=lambda binding: [_wrap_step(zopt, binding, zero3)],
        masks_before_clip=True,
    )


def _wrap_step(zopt, binding, zero3: bool) -> _Removable:
    """Mask this rank's reduced gradient fragments before ``zopt.step`` computes the clipping norm."""
    original = zopt.step

    def step(*args, **kwargs):
        with torch.no_grad():
            mask_reduced_grads(zopt, binding.entries, zero3)
        return original(*args, **kwargs)

    zopt.step = step  # an instance attribute: engine._take_model_step calls self.optimizer.step()

    def undo():
        if zopt.__dict__.get("step") is step:
            del zopt.step

    return _Removable(undo)


def mask_reduced_grads(zopt, entries: list[ZeroFragment], zero3: bool) -> None:
    if zero3:
        from deepspeed.utils import safe_get_local_grad, safe_set_local_grad

        for entry in entries:
            grad = safe_get_local_grad(entry.param)  # partition_numel long: padding at the last rank's tail
            if grad is None:
                continue
            scale_by_bits_(grad[: entry.length], entry.bits.to(grad.device))
            safe_set_local_grad(entry.param, grad)  # also refreshes the CPU-offload per-parameter norm
        return
    if getattr(zopt, "cpu_offload", False) and hasattr(zopt, "_wait_for_offload_copies"):
        zopt._wait_for_offload_copies()  # the fp32 gradient partition is filled by asynchronous copies
    norms = getattr(zopt, "norm_for_param_grads", None) if getattr(zopt, "cpu_offload", False) else None
    for entry in entries:
        try:
            grad = entry.param._hp_mapping.get_lp_grad_fragment(entry.param._index_in_param_group)
        except ValueError:  # "Gradients are only available immediately after backward and before engine step"
            continue
        if grad is None:
            continue
        scale_by_bits_(grad, entry.bits.to(grad.device))
        if norms is not None:  # the offload path sums per-parameter norms taken during backward
            param_id = zopt.get_param_id(entry.param)
            if param_id in norms:
                old = norms[param_id]
                norms[param_id] = grad.to(old.dtype).norm(2).to(old.device)


# ------------------------------------------------------------------------- ZeRO-3 partitioned models
def is_partitioned(model) -> bool:
    """True for a model whose parameters ZeRO-3 has partitioned (``from_pretrained`` under ``zero.Init``)."""
    return any(hasattr(p, "ds_tensor") for p in model.parameters())


def _local_range(p) -> tuple[int, int]:
    """(first element of the flattened parameter on this rank, number of real elements here)."""
    partition = p.partition_numel()
    start = dist.get_rank(group=p.ds_process_group) * partition
    return start, max(0, min(partition, p.ds_numel - start))


def prunable_partitioned(model, config):
    """``prunable_weights_for`` for a partitioned model: shapes from ``p.ds_shape`` (``p.shape`` is (0,))."""
    from ...config import SparsityConfigError
    from ...targets import find_prunable_weights

    weights = find_prunable_weights(model, config.include, config.ignore)
    if config.method != "magnitude":
        raise ValueError(
            f"method={config.method!r}: a model partitioned by ZeRO-3 (zero.Init) can be pruned by magnitude only. "
            "Prune it first, then shard: load the model before creating TrainingArguments(deepspeed=<ZeRO-3 config>) "
            "(or prune and save_pruned it in a single process), then train"
        )
    if config.n_m is not None:
        n, m = config.n_m
        for weight in weights:
            p = weight.weight
            in_features = tuple(p.ds_shape)[weight.input_dim]
            if weight.input_dim != 1 or in_features % m or p.partition_numel() % m:
                raise SparsityConfigError(
                    f"pattern={config.pattern!r} on a ZeRO-3 partitioned model: {weight.name} (shape "
                    f"{tuple(p.ds_shape)}, {p.partition_numel()} elements per rank) has N:M groups that cross a "
                    "partition boundary; prune before sharding"
                )
    return weights


def _all_gather_counts(counts: torch.Tensor) -> torch.Tensor:
    """[world, n] int64 from each rank's [n] counts."""
    device = comm_device()
    local = counts.to(device)
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    return torch.stack(gathered).cpu()


def _kth_key_distributed(scores: list[torch.Tensor], k: int, absolute: bool) -> tuple[int, int]:
    """``selection._kth_key`` over the union of every rank's ``scores``: histograms are summed over ranks."""
    from ...pruning import selection as S

    width = S._key_width(scores)
    offset = S._top_digit_offset(width, absolute)
    histogram = torch.zeros(S._DIGITS, dtype=torch.int64)
    for score in scores:
        for _, chunk in S._chunks(score):
            keys = S._ordered_keys(chunk, absolute, width)
            if width == 32:
                keys = keys >> 16
            if offset:
                keys = keys.to(torch.int32) + offset
            histogram += S._bincount(keys)
    histogram = all_reduce_sum(histogram)
    cumulative = torch.cumsum(histogram, 0)
    top = int(torch.searchsorted(cumulative, torch.tensor(k), right=False))
    below = int(cumulative[top - 1]) if top > 0 else 0
    if width == 16:
        return top - offset, below
    prefix = top - offset
    histogram.zero_()
    for score in scores:
        for _, chunk in S._chunks(score):
            keys = S._ordered_keys(chunk, absolute, width)
            histogram += S._bincount(keys[(keys >> 16) == prefix] & 0xFFFF)
    histogram = all_reduce_sum(histogram)
    cumulative = torch.cumsum(histogram, 0)
    low = int(torch.searchsorted(cumulative, torch.tensor(k - below), right=False))
    below += int(cumulative[low - 1]) if low > 0 else 0
    return (prefix << 16) | low, below


def select_smallest_partitioned(scores: list[torch.Tensor], num_zeros: int, absolute: bool) -> list[torch.Tensor]:
    """Local keep-masks (flat) that prune exactly ``num_zeros`` of the lowest scores over all ranks' slices.

    The same masks ``selection.iter_select_smallest`` gives on the gathered tensors: ties are pruned in the
    order (tensor, flattened index), and since rank r holds the r-th contiguous slice of every tensor, a
    tie's position in that order follows from every rank's per-tensor tie counts.
    """
    from ...pruning import selection as S

    total = int(all_reduce_sum(torch.tensor([sum(s.numel() for s in scores)], dtype=torch.int64))[0])
    if not 0 <= num_zeros <= total:
        raise ValueError(f"cannot prune {num_zeros} of {total} weights")
    if num_zeros in (0, total):
        return [torch.full((s.numel(),), num_zeros == 0, dtype=torch.bool, device=s.device) for s in scores]
    width = S._key_width(scores)
    threshold, below = _kth_key_distributed(scores, num_zeros, absolute)
    ties_to_prune = num_zeros - below
    keys = [S._ordered_keys(score, absolute, width) for score in scores]
    tie_counts = _all_gather_counts(torch.tensor([int((k == threshold).sum()) for k in keys], dtype=torch.int64))
    rank = dist.get_rank()
    out = []
    for i, key in enumerate(keys):
        before = int(tie_counts[:, :i].sum()) + int(tie_counts[:rank, i].sum())
        prune_here = max(0, min(int(tie_counts[rank, i]), ties_to_prune - before))
        keep = key > threshold
        ties = torch.nonzero(key == threshold).view(-1)
        keep[ties[prune_here:]] = True
        out.append(keep)
    return out


@torch.no_grad()
def prune_partitioned(model, config, keep_full: bool, apply: bool = True) -> MaskSet:
    """Magnitude masks of a ZeRO-3 partitioned model, computed slice by slice; prunes ``ds_tensor`` in place.

    Every rank must call it (collectives). Returns the full ``MaskSet`` where ``keep_full`` (the rank that
    writes checkpoints: the local bits are gathered to it, parameter by parameter) and a ``ShardMaskSet``
    holding only this rank's partitions elsewhere. ``apply=False`` computes masks only (the freeze regime).
    """
    from ...pruning import selection as S
    from ...pruning.api import describe_model

    weights = prunable_partitioned(model, config)
    params = [weight.weight for weight in weights]
    ranges = [_local_range(p) for p in params]
    slices = [p.ds_tensor.view(-1)[:length] for p, (_, length) in zip(params, ranges)]
    if config.n_m is not None:
        n, m = config.n_m
        keeps = [S.select_n_m(s.abs().view(-1, m), n, m).view(-1) for s in slices]
    elif config.scope == "global":
        total = sum(p.ds_numel for p in params)
        keeps = select_smallest_partitioned(slices, S.target_zeros(config.sparsity, total), absolute=True)
    else:
        counts = S.layer_zero_counts([p.ds_numel for p in params], config.sparsity)
        keeps = [select_smallest_partitioned([s], count, absolute=True)[0] for s, count in zip(slices, counts)]
    if apply:
        for s, keep in zip(slices, keeps):
            s.masked_fill_(~keep, 0)
    metadata = {"sparsity_config": config.to_dict(), **describe_model(model)}
    return _assemble(weights, ranges, keeps, keep_full, metadata)


def _assemble(weights, ranges, keeps, keep_full: bool, metadata: dict) -> MaskSet:
    """The full MaskSet on the writing rank (local bits gathered there), a ShardMaskSet elsewhere."""
    kept = all_reduce_sum(torch.tensor([int(k.sum()) for k in keeps], dtype=torch.int64))
    writers = _all_gather_counts(torch.tensor([int(keep_full)], dtype=torch.int64)).view(-1)
    shapes = {w.name: tuple(w.weight.ds_shape) for w in weights}
    full = MaskSet(metadata=metadata) if keep_full else None
    pieces = []
    device = comm_device()
    for weight, (start, length), keep in zip(weights, ranges, keeps):
        p = weight.weight
        partition = p.partition_numel()
        padded = torch.zeros(partition, dtype=torch.bool, device=keep.device)
        padded[:length] = keep
        packed = partition % 8 == 0  # partitions start on bytes: send 1 bit per weight, else 1 byte
        payload = (pack_bool(padded) if packed else padded.to(torch.uint8)).to(device)
        for writer in torch.nonzero(writers).view(-1).tolist():  # usually rank 0 alone
            mine = dist.get_rank() == writer
            gathered = [torch.empty_like(payload) for _ in range(dist.get_world_size())] if mine else None
            dist.gather(payload, gathered, dst=writer)
            if mine:
                whole = torch.cat(gathered).cpu()
                whole = unpack_bool(whole, (whole.numel() * 8,)) if packed else whole.bool()
                full.set(weight.name, whole[: p.ds_numel].view(shapes[weight.name]))
        if not keep_full and length:
            pieces.append((weight.name, start, length, pack_local(keep)))
    if keep_full:
        return full
    return ShardMaskSet(shapes, {w.name: int(c) for w, c in zip(weights, kept)}, metadata, pieces)


@torch.no_grad()
def apply_partitioned(masks: MaskSet, model) -> None:
    """Zero the pruned positions of each rank's own ``ds_tensor`` slices (no gathering)."""
    from ..bitops import keep_bool

    masks.check_compatible(model)
    parameters = dict(model.named_parameters())
    for name in masks.names():
        p = parameters[name]
        start, length = _local_range(p)
        if length:
            local = p.ds_tensor.view(-1)[:length]
            local.masked_fill_(~keep_bool(local_bits(masks, name, start, length), length).to(local.device), 0)
