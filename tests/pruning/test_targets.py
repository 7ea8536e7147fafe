"""Which weights are prunable: blocks' Linear/Conv1D weights only, never embeddings or heads."""

import pytest
import torch

from hf_junkdna import NoPrunableWeightsError, find_blocks, find_prunable_weights


def test_llama_blocks_and_weights(llama):
    assert [name for name, _ in find_blocks(llama)] == ["model.layers.0", "model.layers.1"]
    names = [w.name for w in find_prunable_weights(llama)]
    assert len(names) == 14
    assert all(name.startswith("model.layers.") and name.endswith("_proj.weight") for name in names)
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" not in names


def test_bert_excludes_pooler_and_classifier(bert):
    names = [w.name for w in find_prunable_weights(bert)]
    assert len(names) == 12
    assert not any("pooler" in n or "classifier" in n or "embeddings" in n for n in names)


def test_gpt2_conv1d_input_dim_is_zero(gpt2):
    weights = find_prunable_weights(gpt2)
    assert {w.input_dim for w in weights} == {0}
    c_fc = next(w for w in weights if w.name.endswith("mlp.c_fc.weight"))
    assert c_fc.in_features == 32 and c_fc.as_out_in(c_fc.weight).shape == (128, 32)


def test_encoder_decoder_finds_both_stacks():
    from transformers import MBartConfig, MBartForConditionalGeneration

    config = MBartConfig(
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        vocab_size=128,
        max_position_embeddings=64,
    )
    model = MBartForConditionalGeneration(config)
    blocks = [name for name, _ in find_blocks(model)]
    assert blocks == [
        "model.encoder.layers.0",
        "model.encoder.layers.1",
        "model.decoder.layers.0",
        "model.decoder.layers.1",
    ]
    assert all(".layers." in w.name for w in find_prunable_weights(model))


def test_tied_linear_inside_a_block_is_skipped():
    class Block(torch.nn.Module):
        def __init__(self, embedding):
            super().__init__()
            self.proj = torch.nn.Linear(8, 8)
            self.tied = torch.nn.Linear(8, 16, bias=False)
            self.tied.weight = embedding.weight

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(16, 8)
            self.layers = torch.nn.ModuleList([Block(self.embed) for _ in range(2)])

    names = [w.name for w in find_prunable_weights(Model())]
    assert names == ["layers.0.proj.weight", "layers.1.proj.weight"]


def test_include_ignore_filters_and_errors(llama):
    mlp = [w.name for w in find_prunable_weights(llama, include=[r"mlp\."])]
    assert len(mlp) == 6
    no_down = [w.name for w in find_prunable_weights(llama, ignore=["down_proj"])]
    assert len(no_down) == 12 and not any("down_proj" in n for n in no_down)
    with pytest.raises(ValueError, match=r"include pattern 'mpl' matches no prunable weight"):
        find_prunable_weights(llama, include=["mpl"])
    with pytest.raises(NoPrunableWeightsError):
        find_prunable_weights(llama, ignore=["."])
    with pytest.raises(NoPrunableWeightsError, match="Linear"):
        find_prunable_weights(torch.nn.Sequential(torch.nn.Embedding(4, 4)))


def test_hybrid_stacks_of_different_block_classes():
    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(8, 8)

    class Mixer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.in_proj = torch.nn.Linear(8, 16)
            self.conv = torch.nn.Conv1d(16, 16, 4, groups=16)

    class Hybrid(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([Attention(), Mixer(), Attention()])
            self.heads = torch.nn.ModuleList([torch.nn.Linear(8, 2), torch.nn.Linear(8, 3)])  # not blocks

    names = [w.name for w in find_prunable_weights(Hybrid())]
    assert names == ["layers.0.proj.weight", "layers.1.in_proj.weight", "layers.2.proj.weight"]


def test_unprunable_matrices_inside_blocks_are_reported(caplog):
    class Experts(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.router = torch.nn.Linear(16, 4)
            self.gate_up = torch.nn.Parameter(torch.zeros(4, 64, 16))  # fused experts, as in transformers 5

    class MoE(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([Experts(), Experts()])

    with caplog.at_level("WARNING", logger="hf_junkdna.targets"):
        names = [w.name for w in find_prunable_weights(MoE())]
    assert names == ["layers.0.router.weight", "layers.1.router.weight"]
    assert "2 weight tensors" in caplog.text and "layers.0.gate_up" in caplog.text
