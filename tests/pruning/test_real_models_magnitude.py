"""Magnitude pruning on the real pretrained models shipped in PyPI packages (OFFLINE.md)."""

import pytest
import torch

from hf_junkdna import offline, prune
from hf_junkdna.pruning.selection import target_zeros

pytestmark = pytest.mark.slow


def test_minilm_half_pruned_changes_outputs_but_not_embeddings_or_head():
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = offline.minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    batch = tokenizer(
        ["a gripping, beautifully acted film", "dull and far too long"], return_tensors="pt", padding=True
    )
    with torch.no_grad():
        dense_logits = model(**batch).logits
    before = {n: p.clone() for n, p in model.named_parameters()}
    masks = prune(model, sparsity=0.5)
    assert masks.num_zeros() == target_zeros(0.5, masks.num_weights())
    assert len(masks) == 36  # 6 layers x (q, k, v, attention out, intermediate, output)
    with torch.no_grad():
        assert not torch.allclose(model(**batch).logits, dense_logits)
    for name, p in model.named_parameters():
        if name not in masks:
            assert torch.equal(p, before[name]), name
    assert any("embeddings" in n for n in before) and any("classifier" in n for n in before)


def test_smollm2_exact_despite_ties_and_heads_untouched():
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(offline.smollm2_path(), dtype=torch.float32).eval()
    # the 4-bit GGUF origin leaves few distinct magnitudes: exactness must come from tie-breaking
    probe = model.model.layers[0].mlp.up_proj.weight
    assert probe.abs().unique().numel() < probe.numel() / 10
    embed = model.model.embed_tokens.weight.clone()
    masks = prune(model, sparsity=0.5)
    assert masks.num_zeros() == target_zeros(0.5, masks.num_weights())
    assert len(masks) == 30 * 7
    assert torch.equal(model.model.embed_tokens.weight, embed)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied, untouched
    layer = prune(model, sparsity=0.7, scope="layer")
    assert layer.num_zeros() == target_zeros(0.7, layer.num_weights())
    for name in layer:
        assert abs(layer.num_zeros(name) - 0.7 * layer.num_weights(name)) <= 1
