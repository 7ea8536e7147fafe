"""Optional compressed weight files in compressed-tensors' "sparse-bitmask" layout.

Each compressed weight ``<module>.weight`` of shape (R, C) is replaced, in the same safetensors shard, by four
tensors named after its module (the layout compressed-tensors' BitmaskCompressor wrote, up to its removal)::

    <module>.shape        int64 [2]                  the dense shape
    <module>.compressed   dtype of the weight [nnz]  the non-zero values, row-major
    <module>.bitmask      uint8 [R, ceil(C/8)]       1 = non-zero; numpy.packbits(axis=-1, bitorder="little")
    <module>.row_offsets  int64 [R]                  index in ``compressed`` where each row starts

and config.json gets ``quantization_config = {"quant_method": "compressed-tensors", "version": ...,
"sparsity_config": {"format": "sparse-bitmask", "global_sparsity": <percent>, "sparsity_structure": ...,
"targets": [...], "ignore": []}}``. At 50 % sparsity in bf16 a weight takes 0.5 (values) + 1/16 (bitmask)
+ 4/C (row offsets) of its dense bytes; tensors without a mask (embeddings, norms, heads) stay dense.

"Non-zero" is a float comparison, as in compressed-tensors: a stored ``-0.0`` comes back as ``+0.0`` (the two
compare equal; every other value, NaN and infinities included, comes back bit for bit).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..stable_files import canonicalize_safetensors
from .errors import CorruptCheckpointError
from .layout import WEIGHTS_SPARSE_BITMASK

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
BITMASK_PARAMS = ("shape", "compressed", "bitmask", "row_offsets")
COMPRESSED_TENSORS_VERSION = "0.20.0"  # the compressed-tensors release whose config schema this follows


# ------------------------------------------------------------------------------------------------ tensors
def bitmask_compress(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """One 2-D weight -> {"shape", "compressed", "bitmask", "row_offsets"} (see module docstring)."""
    if weight.dim() != 2:
        raise ValueError(f"sparse-bitmask compresses 2-D weights, got shape {tuple(weight.shape)}")
    weight = weight.detach().cpu().contiguous()
    keep = weight != 0
    row_counts = keep.sum(dim=-1)
    return {
        "shape": torch.tensor(list(weight.shape), dtype=torch.int64),
        "compressed": weight[keep].contiguous(),
        "bitmask": torch.from_numpy(np.packbits(keep.numpy(), axis=-1, bitorder="little")),
        "row_offsets": (torch.cumsum(row_counts, 0) - row_counts).to(torch.int64),
    }


def bitmask_decompress(
    shape: torch.Tensor, compressed: torch.Tensor, bitmask: torch.Tensor, name: str = "weight"
) -> torch.Tensor:
    """Inverse of ``bitmask_compress``; raises CorruptCheckpointError naming ``name`` if the parts disagree."""
    dims = [int(d) for d in shape.tolist()]
    if len(dims) != 2 or bitmask.dtype != torch.uint8 or tuple(bitmask.shape) != (dims[0], (dims[1] + 7) // 8):
        raise CorruptCheckpointError(
            f"{name}: bitmask of shape {tuple(bitmask.shape)} ({bitmask.dtype}) does not fit dense shape {dims}"
        )
    keep = np.unpackbits(bitmask.numpy(), axis=-1, count=dims[1], bitorder="little").astype(bool)
    keep = torch.from_numpy(keep)
    if int(keep.sum()) != compressed.numel():
        raise CorruptCheckpointError(
            f"{name}: the bitmask marks {int(keep.sum())} non-zero values but {compressed.numel()} are stored"
        )
    dense = torch.zeros(dims, dtype=compressed.dtype)
    dense[keep] = compressed
    return dense


# ------------------------------------------------------------------------------------------------ folders
def weight_files(folder: str | os.PathLike) -> list[Path]:
    """The safetensors weight files of a transformers folder (single file, or the shards its index lists)."""
    folder = Path(folder)
    index = folder / SAFE_WEIGHTS_INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError) as error:
            raise CorruptCheckpointError(f"{str(index)!r} is not a valid safetensors index: {error}") from error
        return [folder / name for name in dict.fromkeys(weight_map.values())]
    single = folder / SAFE_WEIGHTS_NAME
    return [single] if single.is_file() else []


def is_compressed_config(config: dict) -> bool:
    sparsity = (config.get("quantization_config") or {}).get("sparsity_config") or {}
    return sparsity.get("format") == WEIGHTS_SPARSE_BITMASK


def sparsity_config_entry(names: list[str], global_sparsity: float, structure: str) -> dict:
    """The ``quantization_config`` block compressed-tensors/llm-compressor put in config.json for sparse-bitmask.

    Sparsity only: no quantization keys (compressed-tensors 0.12 reads any key besides quant_method, version and
    sparsity_config as a quantization config, which then fails validation). ``global_sparsity`` is in percent,
    as llm-compressor writes it.
    """
    return {
        "quant_method": "compressed-tensors",
        "version": COMPRESSED_TENSORS_VERSION,
        "sparsity_config": {
            "format": WEIGHTS_SPARSE_BITMASK,
            "global_sparsity": 100.0 * global_sparsity,
            "sparsity_structure": structure,
            "targets": sorted(name[: -len(".weight")] for name in names),
            "ignore": [],
            "registry_requires_subclass": False,
        },
    }


def compress_folder(folder: str | os.PathLike, names: list[str], global_sparsity: float, structure: str) -> list[str]:
    """Rewrite the weight files of a ``save_pretrained`` folder in place, compressing the weights in ``names``.

    Only names ending in ``.weight`` with a 2-D tensor in the files are compressed; the names compressed are
    returned. The index (if sharded) and config.json are updated to match.
    """
    folder = Path(folder)
    wanted = {name for name in names if name.endswith(".weight")}
    compressed_names: list[str] = []
    renamed: dict[str, list[str]] = {}
    total_size = 0
    for path in weight_files(folder):
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        out: dict[str, torch.Tensor] = {}
        for key, tensor in tensors.items():
            if key in wanted and tensor.dim() == 2 and tensor.is_floating_point():
                prefix = key[: -len(".weight")]
                parts = {f"{prefix}.{part}": value for part, value in bitmask_compress(tensor).items()}
                out.update(parts)
                renamed[key] = list(parts)
                compressed_names.append(key)
            else:
                out[key] = tensor
        total_size += sum(t.numel() * t.element_size() for t in out.values())
        staged = path.with_name(path.name + ".tmp")
        save_file(out, str(staged), metadata={"format": "pt", **metadata})
        canonicalize_safetensors(staged)
        os.replace(staged, path)
    index_path = folder / SAFE_WEIGHTS_INDEX_NAME
    if index_path.is_file():
        index = json.loads(index_path.read_text(encoding="utf-8"))
        weight_map = {}
        for key, shard in index["weight_map"].items():
            for new_key in renamed.get(key, [key]):
                weight_map[new_key] = shard
        index["weight_map"] = dict(sorted(weight_map.items()))
        index.setdefault("metadata", {})["total_size"] = total_size
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["quantization_config"] = sparsity_config_entry(compressed_names, global_sparsity, structure)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return compressed_names


def iter_decompressed(path: str | os.PathLike) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, dense tensor) for every tensor of one safetensors file, sparse-bitmask groups decompressed.

    A group is the tensors ``<prefix>.shape/.compressed/.bitmask`` (``.row_offsets`` is optional: it is not needed
    to decompress); it yields ``<prefix>.weight``. Files written by compressed-tensors itself read the same way.
    """
    with safe_open(str(path), framework="pt") as handle:
        keys = list(handle.keys())
        prefixes = [k[: -len(".compressed")] for k in keys if k.endswith(".compressed")]
        grouped = set()
        for prefix in prefixes:
            if f"{prefix}.shape" in keys and f"{prefix}.bitmask" in keys:
                grouped.update(f"{prefix}.{part}" for part in BITMASK_PARAMS)
        for key in keys:
            if key in grouped:
                continue
            yield key, handle.get_tensor(key)
        for prefix in prefixes:
            if f"{prefix}.compressed" not in grouped:
                continue
            yield (
                f"{prefix}.weight",
                bitmask_decompress(
                    handle.get_tensor(f"{prefix}.shape"),
                    handle.get_tensor(f"{prefix}.compressed"),
                    handle.get_tensor(f"{prefix}.bitmask"),
                    name=f"{Path(path).name}: {prefix}.weight",
                ),
            )


def load_sparse_bitmask_state_dict(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The dense state dict of a folder whose weights use the sparse-bitmask layout (ours or compressed-tensors')."""
    files = weight_files(folder)
    if not files:
        raise CorruptCheckpointError(f"{str(folder)!r} has no {SAFE_WEIGHTS_NAME} nor {SAFE_WEIGHTS_INDEX_NAME}")
    state: dict[str, torch.Tensor] = {}
    for path in files:
        state.update(iter_decompressed(path))
    return state


def decompress_folder(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Write a dense copy of a compressed folder's weights and configs into ``target`` (shard by shard).

    config.json loses its ``quantization_config``, so stock ``from_pretrained(target)`` reads it as a plain model.
    """
    source, target = Path(source), Path(target)
    files = weight_files(source)
    if not files:
        raise CorruptCheckpointError(f"{str(source)!r} has no {SAFE_WEIGHTS_NAME} nor {SAFE_WEIGHTS_INDEX_NAME}")
    renamed: dict[str, str] = {}
    total_size = 0
    for path in files:
        dense = dict(iter_decompressed(path))
        total_size += sum(t.numel() * t.element_size() for t in dense.values())
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        save_file(dense, str(target / path.name), metadata={"format": "pt", **metadata})
        for name in dense:
            renamed[name] = path.name
    index_path = source / SAFE_WEIGHTS_INDEX_NAME
    if index_path.is_file():
        index = json.loads(index_path.read_text(encoding="utf-8"))
        index["weight_map"] = dict(sorted(renamed.items()))
        index.setdefault("metadata", {})["total_size"] = total_size
        (target / SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2), encoding="utf-8")
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    config.pop("quantization_config", None)
    (target / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
