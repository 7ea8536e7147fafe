"""Calibration-based pruning on the real packaged models (slow; runs in CI).

On SmolLM2-135M, Wanda and SparseGPT at 50 % must leave a lower perplexity on held-out text than
magnitude pruning at 50 % (the ordering published in both papers). Calibration: 8 sequences of 128
tokens of the packaged Rotten Tomatoes reviews; held-out text: tests/pruning/data/heldout.txt (prose
written for this project, ~870 tokens, evaluated as 3 windows of 256 tokens).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch

from hf_junkdna import SparsityConfig, prune
from hf_junkdna.offline import minilm_path, rotten_tomatoes, smollm2_path

pytestmark = pytest.mark.slow

HELDOUT = Path(__file__).parent / "data" / "heldout.txt"
CALIBRATION_SEQUENCES, CALIBRATION_LENGTH, WINDOW = 8, 128, 256


@pytest.fixture(scope="module")
def smollm2():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    reviews = "\n".join(row["text"] for row in rotten_tomatoes()[:400])
    ids = tokenizer(reviews, return_tensors="pt").input_ids[0]
    calibration = ids[: CALIBRATION_SEQUENCES * CALIBRATION_LENGTH].view(CALIBRATION_SEQUENCES, CALIBRATION_LENGTH)
    heldout = tokenizer(HELDOUT.read_text(), return_tensors="pt").input_ids[0]
    heldout = heldout[: heldout.numel() // WINDOW * WINDOW].view(-1, WINDOW)
    return model, calibration, heldout


@torch.no_grad()
def perplexity(model, windows: torch.Tensor) -> float:
    return math.exp(model(input_ids=windows, labels=windows).loss.item())


def test_wanda_and_sparsegpt_beat_magnitude_on_smollm2(smollm2, record_property):
    model, calibration, heldout = smollm2
    assert calibration.shape == (CALIBRATION_SEQUENCES, CALIBRATION_LENGTH) and heldout.shape[0] >= 3
    original = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    results = {"dense": perplexity(model, heldout)}
    seconds = {}
    for label, config in {
        "magnitude_global": SparsityConfig(method="magnitude", sparsity=0.5, scope="global"),
        "magnitude_layer": SparsityConfig(method="magnitude", sparsity=0.5, scope="layer"),
        "wanda": SparsityConfig(method="wanda", sparsity=0.5),
        "sparsegpt": SparsityConfig(method="sparsegpt", sparsity=0.5),
    }.items():
        model.load_state_dict(original)
        start = time.perf_counter()
        masks = prune(model, config, None if config.method == "magnitude" else calibration)
        seconds[label] = round(time.perf_counter() - start, 1)
        assert masks.sparsity() == pytest.approx(0.5, abs=1e-9)
        results[label] = perplexity(model, heldout)
    model.load_state_dict(original)
    for label, value in results.items():
        record_property(f"ppl_{label}", round(value, 2))
    print("perplexity:", {k: round(v, 2) for k, v in results.items()}, "prune seconds:", seconds)
    magnitude = min(results["magnitude_global"], results["magnitude_layer"])
    assert results["dense"] < results["wanda"] < magnitude
    assert results["dense"] < results["sparsegpt"] < magnitude


def test_wanda_and_sparsegpt_on_minilm_with_padded_calibration_batches():
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = str(minilm_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    sentences = [row["text"] for row in rotten_tomatoes()[:16]]
    batch = tokenizer(sentences, padding=True, truncation=True, max_length=64, return_tensors="pt")
    assert bool((batch["attention_mask"] == 0).any())  # real padding in the calibration data
    for method, pattern in (("wanda", "2:4"), ("sparsegpt", "unstructured")):
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()
        heads = {n: p.detach().clone() for n, p in model.named_parameters() if "encoder.layer" not in n}
        with torch.no_grad():
            before = model(**batch).logits
        masks = prune(model, SparsityConfig(method=method, sparsity=None, pattern=pattern), [batch])
        assert masks.sparsity() == pytest.approx(0.5, abs=1e-9)
        assert len(masks) == 6 * 6  # q, k, v, attention output, intermediate, output in 6 layers
        with torch.no_grad():
            after = model(**batch).logits
        assert torch.isfinite(after).all() and not torch.equal(before, after)
        for name, parameter in model.named_parameters():
            if name in heads:  # embeddings, pooler and classifier bit-identical
                assert torch.equal(parameter, heads[name]), name
