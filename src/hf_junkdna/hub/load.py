"""``load_pruned``: a pruned checkpoint (Hub repo or folder) back as ``(model, MaskSet)``, checked before use.

Order of work, so that nothing is half-loaded: resolve the files (one ``snapshot_download`` that only fetches
JSON, safetensors and tokenizer files), read and check the mask file, open every weight file's header (truncated
files fail here) and compare the mask shapes with them, then build the model with stock ``from_pretrained``
(``use_safetensors=True``), check the mask against the model's parameters and, for the sparse regime, that every
pruned weight is zero. Any failure raises before the model is returned (and drops it).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..masks import MaskMismatchError, MaskSet
from .compressed import SAFE_WEIGHTS_INDEX_NAME, decompress_folder, is_compressed_config, weight_files
from .errors import CheckpointNotFoundError, CorruptCheckpointError, MaskFileError, RevisionNotFoundError
from .layout import (
    MASKS_NAME,
    SPARSITY_CONFIG_NAME,
    WEIGHTS_SPARSE_BITMASK,
    ZERO_REGIMES,
    check_regime,
    read_json,
)
from .save import nonzero

logger = logging.getLogger(__name__)

# What a snapshot fetches: configs, safetensors weights, tokenizer files. Never pickles (*.bin, *.pt, ...).
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]


def _is_local(name: str) -> bool:
    """A folder that exists, or something no repo id looks like ("./x", "/x", "~/x", "a/b/c")."""
    if os.path.isdir(os.path.expanduser(name)):
        return True
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)


def resolve_folder(
    repo_id_or_path: str | os.PathLike,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    trust_remote_code: bool = False,
    allow_patterns: list[str] | None = None,
) -> tuple[Path, str]:
    """(local folder, description for messages). Downloads a Hub snapshot when given a repo id.

    ``allow_patterns`` narrows the download (default: everything a model needs, no code unless trusted).
    """
    name = os.fspath(repo_id_or_path)
    if _is_local(name):
        folder = Path(name).expanduser()
        if not folder.is_dir():
            raise CheckpointNotFoundError(f"{name!r}: no such folder")
        if revision is not None:
            raise ValueError(f"revision={revision!r} only applies to Hub repos, and {name!r} is a local folder")
        return folder, repr(name)

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError
    from huggingface_hub.errors import RevisionNotFoundError as HubRevisionNotFoundError

    patterns = list(allow_patterns or ALLOW_PATTERNS) + (["*.py"] if trust_remote_code else [])
    where = f"{name!r}" + (f" at revision {revision!r}" if revision else "")
    try:
        folder = snapshot_download(
            name,
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            allow_patterns=patterns,
        )
    except HubRevisionNotFoundError as error:
        raise RevisionNotFoundError(
            f"{name!r} has no revision {revision!r} (branch, tag or commit); list them with "
            "HfApi().list_repo_refs(repo_id)"
        ) from error
    except RepositoryNotFoundError as error:
        raise CheckpointNotFoundError(
            f"{name!r}: no such model repo on the Hub, or it is private/gated and the token cannot read it"
        ) from error
    except LocalEntryNotFoundError as error:  # offline (HF_HUB_OFFLINE, local_files_only, no network), not cached
        raise CheckpointNotFoundError(
            f"{name!r}: no such local folder, and the Hub repo of that name is neither cached nor reachable (offline "
            "or local_files_only); give a folder path (e.g. './name') or connect"
        ) from error
    return Path(folder), where


def _read_record(folder: Path, where: str) -> dict[str, Any]:
    path = folder / SPARSITY_CONFIG_NAME
    if not path.is_file():
        return {}
    try:
        return read_json(path)
    except (OSError, ValueError) as error:
        raise CorruptCheckpointError(f"{where}: {SPARSITY_CONFIG_NAME} is not valid JSON ({error})") from error


def _read_masks(folder: Path, where: str) -> MaskSet:
    path = folder / MASKS_NAME
    if not path.is_file():
        raise MaskFileError(
            f"{where} has no {MASKS_NAME}: it was not saved with save_pruned/push_pruned_to_hub (or the file was "
            "deleted). A stock transformers checkpoint loads with from_pretrained; for a sparse-regime model "
            "MaskSet.from_zeros(model, names) re-derives a mask from the zeros, which is wrong after freeze or "
            "sparse-to-dense training"
        )
    try:
        return MaskSet.load(path)
    except ValueError as error:
        raise MaskFileError(f"{where}: the mask file {MASKS_NAME} cannot be read: {error}") from error


def checkpoint_shapes(folder: Path, where: str) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every weight in the folder's safetensors files, from their headers (compressed groups
    report their dense shape). A truncated or unreadable file raises CorruptCheckpointError naming it."""
    files = weight_files(folder)
    if not files:
        raise CorruptCheckpointError(
            f"{where} has no safetensors weights (model.safetensors or model.safetensors.index.json); only "
            "safetensors checkpoints are loaded"
        )
    shapes: dict[str, tuple[int, ...]] = {}
    for path in files:
        if not path.is_file():
            raise CorruptCheckpointError(f"{where}: the index lists {path.name}, which is missing")
        try:
            with safe_open(str(path), framework="pt") as handle:
                keys = list(handle.keys())
                for key in keys:
                    if key.endswith(".shape") and f"{key[: -len('.shape')]}.compressed" in keys:
                        dims = tuple(int(d) for d in handle.get_tensor(key).tolist())
                        shapes[f"{key[: -len('.shape')]}.weight"] = dims
                    else:
                        shapes[key] = tuple(handle.get_slice(key).get_shape())
        except Exception as error:  # safetensors raises SafetensorError (not an OSError) on truncated files
            if type(error).__name__ != "SafetensorError" and not isinstance(error, OSError):
                raise
            raise CorruptCheckpointError(
                f"{where}: weight file {path.name} is truncated or not a safetensors file ({error})"
            ) from error
    return shapes


def _check_against_files(masks: MaskSet, shapes: dict[str, tuple[int, ...]], where: str) -> None:
    for name in masks.names():
        if name in shapes and tuple(masks.shape(name)) != shapes[name]:
            raise MaskMismatchError(
                f"{where}: {MASKS_NAME} does not match the weights: mask for {name!r} has shape "
                f"{tuple(masks.shape(name))} but the weight file has {shapes[name]}"
            )


def _model_class(config: dict, model_class: Any, trust_remote_code: bool) -> Any:
    if model_class is not None:
        return model_class
    import transformers

    for architecture in config.get("architectures") or []:
        found = getattr(transformers, architecture, None)
        if found is not None:
            return found
    if config.get("auto_map") and not trust_remote_code:
        raise ValueError(
            f"the checkpoint's model class {config.get('architectures')} is custom code shipped with the repo; "
            "read that code, then pass trust_remote_code=True (or pass model_class=...)"
        )
    return transformers.AutoModelForCausalLM


@torch.no_grad()
def _check_zeros(model: torch.nn.Module, masks: MaskSet, where: str, files_folder: Path) -> None:
    """Sparse regime: no weight the mask marks as pruned is non-zero. Weights that ``device_map`` offloaded (meta
    tensors in the model) are read one at a time from the safetensors files in ``files_folder`` instead."""
    parameters = dict(model.named_parameters())
    offloaded = {name for name in masks.names() if parameters[name].device.type == "meta"}

    def pruned_nonzeros(name: str, weight: torch.Tensor) -> int:
        return int(nonzero(weight).logical_and_(~masks.get(name, device=weight.device)).sum())

    counts = {
        name: pruned_nonzeros(name, parameters[name].detach()) for name in masks.names() if name not in offloaded
    }
    for path in weight_files(files_folder) if offloaded else []:
        with safe_open(str(path), framework="pt") as weights:
            for name in offloaded & set(weights.keys()):
                counts[name] = pruned_nonzeros(name, weights.get_tensor(name))
    unread = offloaded - set(counts)
    if unread:  # saved under another key than the parameter's name: nothing to compare against
        logger.warning(
            "%s: could not verify the zeros of %d offloaded weight(s), e.g. %r", where, len(unread), min(unread)
        )
    for name, count in counts.items():
        if count:
            raise MaskMismatchError(
                f"{where}: {MASKS_NAME} does not match the weights: the checkpoint says regime 'sparse', but "
                f"{count} weights of {name!r} that the mask marks as pruned are non-zero"
            )


def load_pruned(
    repo_id_or_path: str | os.PathLike,
    model_class: Any = None,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    trust_remote_code: bool = False,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    **from_pretrained_kwargs: Any,
) -> tuple[Any, MaskSet]:
    """Load a checkpoint written by ``save_pruned``/``push_pruned_to_hub`` and its mask: ``(model, masks)``.

    ``repo_id_or_path`` is a Hub repo id (downloaded with huggingface_hub's ``snapshot_download``: JSON,
    safetensors and tokenizer files only) or a local folder. ``model_class`` defaults to the class named in
    config.json's ``architectures`` (else ``AutoModelForCausalLM``); any transformers class or Auto class works.
    Weights load through safetensors only; remote code runs only with ``trust_remote_code=True``. Compressed
    (sparse-bitmask) checkpoints are decompressed into a temporary folder first. Other keyword arguments
    (``dtype``, ``device_map``, ...) go to ``from_pretrained``.

    Raises CheckpointNotFoundError / RevisionNotFoundError for a missing repo, folder or revision, MaskFileError
    for a missing or unreadable mask sidecar, CorruptCheckpointError for truncated weight files, and
    MaskMismatchError when the mask does not fit the weights (names or shapes; for the sparse regime also
    non-zero weights where the mask says pruned). ``masks.metadata["regime"]`` says how the model was trained;
    ``SparseTrainer(model=model, masks=masks, ...)`` continues fine-tuning with the same mask.
    """
    if from_pretrained_kwargs.get("use_safetensors", True) is not True:
        raise ValueError("load_pruned loads safetensors only (use_safetensors must stay True): pickles are refused")
    from_pretrained_kwargs.pop("use_safetensors", None)
    folder, where = resolve_folder(repo_id_or_path, revision, token, cache_dir, local_files_only, trust_remote_code)
    record = _read_record(folder, where)
    masks = _read_masks(folder, where)
    regime = check_regime(record.get("regime") or masks.metadata.get("regime") or "sparse")
    masks.metadata["regime"] = regime
    shapes = checkpoint_shapes(folder, where)
    _check_against_files(masks, shapes, where)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CorruptCheckpointError(f"{where} has no config.json")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    cls = _model_class(config, model_class, trust_remote_code)
    from_pretrained_kwargs.pop("output_loading_info", None)
    kwargs = {"trust_remote_code": trust_remote_code, "use_safetensors": True, "output_loading_info": True}
    kwargs.update(from_pretrained_kwargs)

    if is_compressed_config(config) or record.get("weights_format") == WEIGHTS_SPARSE_BITMASK:
        weights = {path.name for path in weight_files(folder)} | {SAFE_WEIGHTS_INDEX_NAME, "config.json"}
        with tempfile.TemporaryDirectory(prefix="hf_junkdna-decompressed-") as dense_folder:
            for extra in folder.iterdir():  # generation config, tokenizer, remote code: all but weights and config
                if extra.is_file() and extra.name not in weights:
                    shutil.copyfile(extra, Path(dense_folder) / extra.name)
            decompress_folder(folder, dense_folder)
            model, info = cls.from_pretrained(dense_folder, **kwargs)
            _verify_loaded(model, info, masks, regime, where, Path(dense_folder))
    else:
        model, info = cls.from_pretrained(folder, **kwargs)
        _verify_loaded(model, info, masks, regime, where, folder)
    logger.info("loaded pruned checkpoint %s (regime %s, sparsity %.4f)", where, regime, masks.sparsity())
    return model, masks


def _verify_loaded(model, info: dict, masks: MaskSet, regime: str, where: str, files_folder: Path) -> None:
    """Every pruned weight came from the files and fits the mask (raises otherwise, so the model is not returned)."""
    try:
        missing = sorted(set(masks.names()) & set(info.get("missing_keys") or ()))
        if missing:
            raise CorruptCheckpointError(
                f"{where}: the weight files lack {len(missing)} pruned weight(s) (first: {missing[0]!r}), which "
                "from_pretrained would leave randomly initialised"
            )
        masks.check_compatible(model)
        if regime in ZERO_REGIMES:
            _check_zeros(model, masks, where, files_folder)
    except MaskMismatchError as error:
        if str(error).startswith(where):
            raise
        raise MaskMismatchError(f"{where}: {MASKS_NAME} does not match the model: {error}") from error
