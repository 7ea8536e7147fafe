"""Layer-by-layer calibration: orchestration only, no pruning maths.

Calibration-based criteria (Wanda, SparseGPT) need the inputs each prunable layer sees. Running the
whole model with hooks on every layer would keep every layer's statistics alive at once and, worse, would
let block k see the *dense* blocks before it. Instead (as in the Wanda and SparseGPT papers):

1. run the model on every calibration batch only up to the first transformer block, and store what that
   block receives (its positional and keyword arguments: hidden states, attention masks, position ids,
   rotary cos/sin...), with caches disabled; a forward pre-hook raises a private exception to stop there.
   Hybrid models (sliding-window and full-attention layers) give each block its own mask or rotary
   embeddings: the first batch runs on through every block to find out, and where contexts differ every
   batch does, keeping each block's context (references, no activations);
2. for each block k in order: hook its prunable Linear/Conv1D layers to accumulate statistics, run block
   k on the stored inputs, let the criterion prune the block, then run block k again so that its outputs
   (from the already pruned block) become the inputs of block k+1.

Peak memory is about the model plus one block's inputs and outputs for the calibration set (and the
criterion's statistics for one block). Encoder-decoder models have one list of blocks per stack: each
stack's first-block inputs are captured by a forward of the model as pruned so far, so the decoder
sees the pruned encoder's states.

If anything fails after a weight has been modified, every modified weight is restored from a CPU copy
taken just before its block was pruned, and the error is re-raised: the model ends untouched. Those
copies cost host memory of the size of the prunable weights (in their own dtype).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from ..targets import PrunableWeight, find_blocks
from .base import PruningCriterion

BATCH_SIZE = 8  # rows per calibration batch when a [n, seq] tensor is given
_CACHE_KWARGS = ("cache", "past_key_value", "past_key_values", "layer_past")

try:
    from transformers.cache_utils import Cache
except ImportError:  # pragma: no cover - transformers is a hard dependency
    Cache = ()


class Statistics(Protocol):
    """What a criterion accumulates for one layer from its inputs."""

    def update(self, inputs: torch.Tensor) -> None:
        """``inputs``: the layer's input activations as a 2-D (tokens, in_features) tensor."""


@dataclass
class CalibrationBatch:
    """Keyword arguments for one model call, on the CPU, and which tokens count (None = all)."""

    inputs: dict[str, torch.Tensor]
    token_mask: torch.Tensor | None = None

    @property
    def num_sequences(self) -> int:
        return int(self.inputs["input_ids"].shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.inputs["input_ids"].shape[1])


@dataclass
class _BlockCall:
    """The arguments one block receives for one calibration batch."""

    args: tuple
    kwargs: dict[str, Any]
    token_mask: torch.Tensor | None
    hidden_in_kwargs: bool = field(default=False)

    @property
    def hidden(self) -> torch.Tensor:
        return self.kwargs["hidden_states"] if self.hidden_in_kwargs else self.args[0]

    def with_hidden(self, hidden: torch.Tensor) -> _BlockCall:
        if self.hidden_in_kwargs:
            return _BlockCall(self.args, {**self.kwargs, "hidden_states": hidden}, self.token_mask, True)
        return _BlockCall((hidden, *self.args[1:]), self.kwargs, self.token_mask, False)

    def context(self) -> tuple[tuple, dict[str, Any]]:
        """Everything but the hidden states (masks, positions, rotary cos/sin...)."""
        if self.hidden_in_kwargs:
            return self.args, {key: value for key, value in self.kwargs.items() if key != "hidden_states"}
        return self.args[1:], self.kwargs

    def with_context(self, context: tuple[tuple, dict[str, Any]], hidden_in_kwargs: bool) -> _BlockCall:
        """These hidden states with another block's context (its own attention mask, rotary embeddings...)."""
        args, kwargs = context
        if hidden_in_kwargs:
            return _BlockCall(args, {**kwargs, "hidden_states": self.hidden}, self.token_mask, True)
        return _BlockCall((self.hidden, *args), kwargs, self.token_mask, False)


_BlockContext = tuple[tuple[tuple, dict[str, Any]], bool]  # (context, hidden_in_kwargs) of one block call


class _StopForward(Exception):
    """Raised by the capture hook to end a forward once the first block's inputs are stored."""


# ------------------------------------------------------------------------------------------ input data
def _as_batch(item: Any, where: str) -> dict[str, torch.Tensor]:
    """One calibration item (tensor, mapping, or a (input_ids[, attention_mask]) tuple) -> model kwargs."""
    if isinstance(item, torch.Tensor):
        return {"input_ids": item}
    if isinstance(item, Mapping):
        batch = {}
        for key, value in item.items():
            if isinstance(value, list) and key in ("input_ids", "attention_mask", "token_type_ids"):
                try:
                    value = torch.as_tensor(value)
                except (ValueError, TypeError) as error:
                    raise ValueError(
                        f"calibration_data{where}: {key!r} is a ragged list; pad it or pass return_tensors='pt'"
                    ) from error
            if isinstance(value, torch.Tensor):
                batch[key] = value
        return batch
    if isinstance(item, (list, tuple)) and item and all(isinstance(part, torch.Tensor) for part in item):
        if len(item) > 2:
            raise ValueError(
                f"calibration_data{where}: a tuple item must be (input_ids,) or (input_ids, attention_mask), "
                f"got {len(item)} tensors"
            )
        return dict(zip(("input_ids", "attention_mask"), item))
    if isinstance(item, (str, bytes)):
        raise ValueError(f"calibration_data{where}: got text; tokenize it first (input_ids tensors)")
    raise ValueError(
        f"calibration_data{where}: expected an input_ids tensor or a dict of tensors, got {type(item).__name__}"
    )


def _check_batch(batch: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    if "input_ids" not in batch:
        raise ValueError(f"calibration_data{where}: no 'input_ids' tensor (keys: {sorted(batch)})")
    input_ids = batch["input_ids"]
    if input_ids.dtype.is_floating_point or input_ids.dtype in (torch.bool, torch.complex64, torch.complex128):
        raise ValueError(f"calibration_data{where}: input_ids must hold integer token ids, got {input_ids.dtype}")
    if input_ids.dim() == 1:
        batch = {key: value.unsqueeze(0) if value.dim() == 1 else value for key, value in batch.items()}
        input_ids = batch["input_ids"]
    if input_ids.dim() != 2:
        raise ValueError(
            f"calibration_data{where}: input_ids must be [batch, seq_len] (or [seq_len]), got {tuple(input_ids.shape)}"
        )
    if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError(f"calibration_data{where}: empty input_ids of shape {tuple(input_ids.shape)}")
    mask = batch.get("attention_mask")
    if mask is not None and tuple(mask.shape) != tuple(input_ids.shape):
        raise ValueError(
            f"calibration_data{where}: attention_mask has shape {tuple(mask.shape)} but input_ids has "
            f"{tuple(input_ids.shape)}"
        )
    if mask is not None and not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(
            f"calibration_data{where}: attention_mask holds values other than 0 and 1 (token ids?); a tuple of tensors "
            "is read as (input_ids, attention_mask): pass several batches as a list"
        )
    if mask is not None and not bool((mask != 0).any(dim=1).all()):
        raise ValueError(f"calibration_data{where}: a sequence has an all-zero attention_mask (no real token)")
    return batch


def _take_rows(batch: dict[str, torch.Tensor], start: int, stop: int) -> dict[str, torch.Tensor]:
    rows = batch["input_ids"].shape[0]
    return {
        key: value[start:stop] if value.dim() and value.shape[0] == rows else value for key, value in batch.items()
    }


def prepare_calibration_data(
    calibration_data: Any, max_sequences: int | None = None, batch_size: int = BATCH_SIZE
) -> list[CalibrationBatch]:
    """Normalise calibration data into CPU batches of model keyword arguments (the model is not used).

    Accepts a tensor of token ids ([n, seq] or [seq]), a dict/BatchEncoding of tensors (input_ids and
    optionally attention_mask, token_type_ids...), or an iterable of such items: a list, a DataLoader
    (dict batches, or (input_ids[, attention_mask]) tuples as a TensorDataset yields). At most
    ``max_sequences`` sequences are taken (iteration stops there). Large tensors are split into batches of
    ``batch_size`` rows. Raises ValueError naming ``calibration_data`` on anything unusable.
    """
    if calibration_data is None:
        raise ValueError("calibration_data is None; Wanda/SparseGPT need tokenized calibration sequences")
    if isinstance(calibration_data, (str, bytes)):
        raise ValueError("calibration_data: got text; tokenize it first (a tensor or list of input_ids tensors)")
    one_tuple = isinstance(calibration_data, tuple) and all(
        isinstance(part, torch.Tensor) for part in calibration_data
    )
    if isinstance(calibration_data, (torch.Tensor, Mapping)) or (one_tuple and calibration_data):
        # a tuple of tensors is one (input_ids, attention_mask) batch, as a TensorDataset's DataLoader yields
        # them; a sequence of batches is a list
        items: Iterable = [calibration_data]
        single = True
    elif isinstance(calibration_data, Iterable):
        items = calibration_data
        single = False
    else:
        raise ValueError(
            f"calibration_data: expected a tensor, a dict of tensors, a list or a DataLoader, got "
            f"{type(calibration_data).__name__}"
        )
    batches: list[CalibrationBatch] = []
    taken = 0
    for index, item in enumerate(items):
        if max_sequences is not None and taken >= max_sequences:
            break
        where = "" if single else f"[{index}]"
        batch = _check_batch(_as_batch(item, where), where)
        rows = batch["input_ids"].shape[0]
        if max_sequences is not None:
            rows = min(rows, max_sequences - taken)
        step = batch_size if single else rows  # keep the user's own batches as they are
        for start in range(0, rows, step):
            part = _take_rows(batch, start, min(start + step, rows))
            part = {key: value.detach().cpu() for key, value in part.items()}
            mask = part.get("attention_mask")
            token_mask = None if mask is None or bool((mask != 0).all()) else mask != 0
            batches.append(CalibrationBatch(part, token_mask))
        taken += rows
    if not batches:
        raise ValueError("calibration_data is empty: give at least one tokenized sequence")
    return batches


def check_calibration_fits(model: nn.Module, batches: Sequence[CalibrationBatch]) -> None:
    """Model-aware checks (token ids within the vocabulary, lengths within the position limit)."""
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    for index, batch in enumerate(batches):
        input_ids = batch.inputs["input_ids"]
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or (isinstance(vocab, int) and high >= vocab):
            raise ValueError(
                f"calibration_data: batch {index} has token id {low if low < 0 else high} outside the model's "
                f"vocabulary [0, {vocab})"
            )
        if isinstance(limit, int) and batch.seq_len > limit:
            raise ValueError(
                f"calibration_data: batch {index} has sequences of {batch.seq_len} tokens, more than the model's "
                f"max_position_embeddings={limit}; truncate them"
            )


# ------------------------------------------------------------------------------------------- running
def _input_device(model: nn.Module) -> torch.device:
    """Where the calibration batches go: the input embeddings' device (else the first parameter's)."""
    try:
        embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    except NotImplementedError:
        embeddings = None
    weight = getattr(embeddings, "weight", None)
    if isinstance(weight, torch.Tensor):
        return weight.device
    return next(model.parameters()).device


def _block_device(block: nn.Module, fallback: torch.device) -> torch.device:
    for parameter in block.parameters():
        return parameter.device
    return fallback


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to(part, device) for part in value)
    if isinstance(value, list):
        return [_to(part, device) for part in value]
    if isinstance(value, dict):
        return {key: _to(part, device) for key, part in value.items()}
    return value


def _without_cache(value: Any) -> Any:
    return None if Cache and isinstance(value, Cache) else value


def _accepts(function: Callable, name: str) -> bool:
    try:
        return name in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def _model_inputs(model: nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch as the model's forward needs it: encoder-decoder models that do not derive decoder inputs
    themselves (T5; BART does) get the input ids shifted right, the decoder's usual teacher-forcing input."""
    config = getattr(model, "config", None)
    if (
        getattr(config, "is_encoder_decoder", False)
        and "decoder_input_ids" not in inputs
        and "labels" not in inputs
        and hasattr(model, "prepare_decoder_input_ids_from_labels")
    ):
        return {**inputs, "decoder_input_ids": model.prepare_decoder_input_ids_from_labels(labels=inputs["input_ids"])}
    return inputs


def _sanitized_call(args: tuple, kwargs: dict[str, Any], token_mask) -> _BlockCall:
    """A block's call as stored: caches removed (the blocks run once per batch, no generation)."""
    hidden_in_kwargs = not args and "hidden_states" in kwargs
    kwargs = {key: _without_cache(value) for key, value in kwargs.items()}
    for key in _CACHE_KWARGS:
        if key in kwargs:
            kwargs[key] = None
    if "use_cache" in kwargs:
        kwargs["use_cache"] = False
    args = tuple(_without_cache(value) for value in args)
    return _BlockCall(args, kwargs, token_mask, hidden_in_kwargs)


def _same(a: Any, b: Any) -> bool:
    """Structural equality of block arguments (tensors: same object, or same shape, dtype and values)."""
    if a is b:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.shape == b.shape
            and a.dtype == b.dtype
            and a.device == b.device
            and bool(torch.equal(a, b))
        )
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[key], b[key]) for key in a)
    try:
        return bool(a == b)
    except Exception:  # objects without a usable ==: treat as different, which is always safe
        return False


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module, blocks: nn.Module | Sequence[nn.Module], batches: Sequence[CalibrationBatch]
) -> tuple[list[_BlockCall], list[list[_BlockContext]] | None]:
    """Run ``model`` on each batch up to the first of ``blocks`` and return what it was called with.

    Hybrid models call their blocks with different contexts: sliding-window and full-attention layers get
    different attention masks (Gemma2/3, Qwen2, Mistral variants, Cohere2), Gemma3 different rotary
    embeddings. On the first batch the forward therefore runs on to the last of ``blocks``, recording every
    block's call; if any block's context differs from the first's, every batch is run that far and the
    per-block calls come back as the second item (``[block position][batch]``), else None and the other
    batches stop at the first block.
    """
    blocks = [blocks] if isinstance(blocks, nn.Module) else list(blocks)
    device = _input_device(model)
    calls: list[_BlockCall] = []
    # per block, per batch: the context alone (a reference to tensors the model shares between its blocks),
    # never the hidden states, so this costs no activations
    per_block: list[list[_BlockContext]] = [[] for _ in blocks]
    state: dict[str, Any] = {"stop_at": len(blocks) - 1, "per_block": True}

    def make_hook(position: int):
        def hook(module, args, kwargs):
            call = _sanitized_call(args, kwargs, state["token_mask"])
            if state["per_block"]:
                per_block[position].append((call.context(), call.hidden_in_kwargs))
            if position == 0:
                calls.append(call)
            if position >= state["stop_at"]:
                raise _StopForward

        return hook

    extra = {"use_cache": False} if _accepts(model.forward, "use_cache") else {}
    handles = [
        block.register_forward_pre_hook(make_hook(position), with_kwargs=True) for position, block in enumerate(blocks)
    ]
    try:
        for index, batch in enumerate(batches):
            state["token_mask"] = None if batch.token_mask is None else batch.token_mask.to(device)
            try:
                model(**_to(_model_inputs(model, batch.inputs), device), **extra)
            except _StopForward:
                pass
            else:
                raise RuntimeError(
                    f"calibration: the model's forward on calibration batch {index} finished without calling the "
                    f"transformer block {type(blocks[state['stop_at']]).__name__}; layer-by-layer calibration cannot "
                    "capture its inputs"
                )
            if index == 0:
                first = per_block[0][0]
                if all(_same(first, contexts[0]) for contexts in per_block[1:]):
                    state.update(stop_at=0, per_block=False)  # one context for all: stop at the first block
    finally:
        for handle in handles:
            handle.remove()
    return calls, per_block if state["per_block"] else None


def _first_output(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) or hasattr(output, "to_tuple"):
        return output[0]
    raise TypeError(f"calibration: cannot find the hidden states in a block output of type {type(output).__name__}")


@torch.no_grad()
def run_block(block: nn.Module, calls: Sequence[_BlockCall], keep_outputs: bool = True) -> list[_BlockCall] | None:
    """Run ``block`` on every stored call; return the calls for the next block (outputs as hidden states)."""
    device = _block_device(block, calls[0].hidden.device)
    outputs = [] if keep_outputs else None
    for call in calls:
        hidden = _first_output(block(*_to(call.args, device), **_to(call.kwargs, device)))
        if keep_outputs:
            outputs.append(call.with_hidden(hidden))
    return outputs


@contextmanager
def _observing(weights: Sequence[PrunableWeight], statistics: Mapping[str, Statistics], token_masks: list):
    """Forward hooks feeding each layer's input activations (padding tokens dropped) to its statistics."""

    def make_hook(stats: Statistics):
        def hook(module, args, output):
            inputs = args[0]
            flat = inputs.reshape(-1, inputs.shape[-1])
            mask = token_masks[0]
            # one row per token, in token order: [batch, seq, features], or flattened to [batch * seq, features]
            # as OPT's fc1/fc2 see them (rows routed to MoE experts, a subset, cannot be matched and all count)
            if mask is not None and flat.shape[0] == mask.numel():
                flat = flat[mask.reshape(-1).to(flat.device)]
            stats.update(flat.detach())

        return hook

    handles = [weight.module.register_forward_hook(make_hook(statistics[weight.name])) for weight in weights]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def _observe_block(block, calls, weights, statistics, keep_outputs: bool):
    token_masks = [None]
    outputs = [] if keep_outputs else None
    device = _block_device(block, calls[0].hidden.device)
    with _observing(weights, statistics, token_masks):
        for call in calls:
            token_masks[0] = call.token_mask
            hidden = _first_output(block(*_to(call.args, device), **_to(call.kwargs, device)))
            if keep_outputs:
                outputs.append(call.with_hidden(hidden))
    return outputs


def _stacks(blocks: list[tuple[str, nn.Module]]) -> list[list[tuple[int, nn.Module]]]:
    """Blocks grouped by the ModuleList holding them (one stack per list), keeping global indices."""
    stacks: list[list[tuple[int, nn.Module]]] = []
    parent = None
    for index, (name, block) in enumerate(blocks):
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        if owner != parent:
            stacks.append([])
            parent = owner
        stacks[-1].append((index, block))
    return stacks


@torch.no_grad()
def layer_by_layer(
    model: nn.Module,
    weights: Sequence[PrunableWeight],
    batches: Sequence[CalibrationBatch],
    new_statistics: Callable[[PrunableWeight], Statistics],
    prune_block: Callable[[list[PrunableWeight], dict[str, Statistics]], None] | None = None,
) -> dict[str, Statistics]:
    """Feed the calibration batches through the blocks one at a time, observing the prunable layers.

    For each block holding weights of ``weights``: a ``new_statistics(weight)`` per weight is updated with
    the layer's inputs (padding tokens excluded), then ``prune_block(block_weights, statistics)`` may
    modify those weights in place, and the block is run again so that the next block sees the pruned one.
    Without ``prune_block`` the model is only observed (one pass per block, dense inputs throughout) and
    every weight's statistics are returned; with it, statistics are dropped once their block is pruned.
    The model is put in eval mode meanwhile. On any error every weight modified so far is restored.
    """
    blocks = find_blocks(model)
    by_block: dict[int, list[PrunableWeight]] = {}
    for weight in weights:
        by_block.setdefault(weight.block_index, []).append(weight)
    kept: dict[str, Statistics] = {}
    snapshots: list[tuple[PrunableWeight, torch.Tensor]] = []
    was_training = model.training
    model.eval()
    try:
        for stack in _stacks(blocks):
            wanted = [index for index, _ in stack if index in by_block]
            if not wanted:
                continue
            needed = [block for index, block in stack if index <= wanted[-1]]
            calls, per_block = capture_block_inputs(model, needed, batches)
            for position, (index, block) in enumerate(stack):
                if index > wanted[-1]:
                    break
                if per_block is not None and position:  # this block's own mask / rotary embeddings
                    calls = [call.with_context(*own) for call, own in zip(calls, per_block[position])]
                more = index < wanted[-1]
                block_weights = by_block.get(index, [])
                if not block_weights:
                    calls = run_block(block, calls) if more else None
                    continue
                statistics = {weight.name: new_statistics(weight) for weight in block_weights}
                if prune_block is None:
                    calls = _observe_block(block, calls, block_weights, statistics, keep_outputs=more)
                    kept.update(statistics)
                    continue
                _observe_block(block, calls, block_weights, statistics, keep_outputs=False)
                for weight in block_weights:
                    snapshots.append((weight, weight.weight.detach().to("cpu", copy=True)))
                prune_block(block_weights, statistics)
                del statistics
                calls = run_block(block, calls) if more else None
            del calls
    except BaseException:
        for weight, original in reversed(snapshots):
            weight.weight.copy_(original.to(weight.weight.device))
        raise
    finally:
        model.train(was_training)
    return kept


class CalibratedCriterion(PruningCriterion):
    """Base of the criteria that score weights from calibration activations (Wanda, SparseGPT).

    ``validate`` (called by ``prune`` before the model is touched) normalises and checks the calibration
    data once; ``calibration_batches`` hands the checked batches to ``prune`` (a DataLoader is iterated
    only once).
    """

    needs_calibration = True

    def validate(self, model: nn.Module, weights, config, calibration_data: Any) -> None:
        batches = prepare_calibration_data(calibration_data, config.num_calibration_samples)
        check_calibration_fits(model, batches)
        self._prepared = (calibration_data, batches)

    def calibration_batches(self, model: nn.Module, config, calibration_data: Any) -> list[CalibrationBatch]:
        prepared = getattr(self, "_prepared", None)
        if prepared is None or prepared[0] is not calibration_data:
            self.validate(model, None, config, calibration_data)
        return self._prepared[1]
