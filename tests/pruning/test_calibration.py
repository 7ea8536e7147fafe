"""Layer-by-layer calibration: input formats, block inputs vs a full forward, restore on error."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_bert, tiny_gpt2, tiny_llama
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hf_junkdna import SparsityConfig, find_blocks, find_prunable_weights, prune
from hf_junkdna.pruning.calibration import layer_by_layer, prepare_calibration_data

VOCAB = 128  # tiny_models' vocabulary


MODELS = {"llama": lambda: tiny_llama(layers=3), "bert": tiny_bert, "gpt2": tiny_gpt2}


def token_batches(seed: int = 1, count: int = 3, rows: int = 2, length: int = 12, padded: bool = False):
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        batch = {"input_ids": torch.randint(0, VOCAB, (rows, length), generator=generator)}
        if padded:
            mask = torch.ones(rows, length, dtype=torch.long)
            mask[0, length - 4 :] = 0  # right padding in the first row
            batch["attention_mask"] = mask
        batches.append(batch)
    return batches


def block_inputs_during(model, run) -> list[list[torch.Tensor]]:
    """Hidden states each block receives while ``run()`` executes (pre-hooks on every block)."""
    blocks = find_blocks(model)
    seen: list[list[torch.Tensor]] = [[] for _ in blocks]
    handles = []
    for index, (_, block) in enumerate(blocks):

        def hook(module, args, kwargs, index=index):
            hidden = args[0] if args else kwargs["hidden_states"]
            seen[index].append(hidden.detach().clone())

        handles.append(block.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return seen


def weights_of(model) -> dict[str, torch.Tensor]:
    return {name: parameter.detach().clone() for name, parameter in model.named_parameters()}


class Recorder:
    """Statistics that keep every input they see (for tests)."""

    def __init__(self, weight=None):
        self.inputs = []

    def update(self, inputs):
        self.inputs.append(inputs.clone())


# ------------------------------------------------------------------------------------------ formats
def test_tensor_is_split_into_batches_and_truncated():
    data = torch.randint(0, VOCAB, (20, 7))
    batches = prepare_calibration_data(data, batch_size=8)
    assert [b.num_sequences for b in batches] == [8, 8, 4]
    assert torch.equal(torch.cat([b.inputs["input_ids"] for b in batches]), data)
    assert sum(b.num_sequences for b in prepare_calibration_data(data, max_sequences=10)) == 10
    assert prepare_calibration_data(torch.arange(5))[0].inputs["input_ids"].shape == (1, 5)


def test_a_tuple_of_tensors_is_one_batch_with_its_attention_mask():
    ids = torch.randint(2, VOCAB, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0
    (batch,) = prepare_calibration_data((ids, mask))
    assert torch.equal(batch.inputs["input_ids"], ids) and torch.equal(batch.token_mask, mask.bool())
    with pytest.raises(ValueError, match=r"attention_mask holds values other than 0 and 1.*as a list"):
        prepare_calibration_data((ids, torch.randint(2, VOCAB, (2, 8))))  # two id tensors meant as two batches
    assert len(prepare_calibration_data([ids, ids])) == 2


def test_lists_dicts_and_dataloaders():
    ids = torch.randint(0, VOCAB, (6, 5))
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0
    as_list = prepare_calibration_data([ids[0], ids[1:3]])
    assert [b.num_sequences for b in as_list] == [1, 2]
    as_dicts = prepare_calibration_data([{"input_ids": ids, "attention_mask": mask, "text": "ignored"}])
    assert set(as_dicts[0].inputs) == {"input_ids", "attention_mask"}
    assert as_dicts[0].token_mask is not None and int(as_dicts[0].token_mask.sum()) == ids.numel() - 2
    loader = DataLoader(TensorDataset(ids, mask), batch_size=4)
    from_loader = prepare_calibration_data(loader, max_sequences=5)
    assert [b.num_sequences for b in from_loader] == [4, 1]
    dict_loader = DataLoader([{"input_ids": row} for row in ids], batch_size=3)
    assert [b.num_sequences for b in prepare_calibration_data(dict_loader)] == [3, 3]
    ragged_ok = prepare_calibration_data({"input_ids": [[1, 2, 3], [4, 5, 6]]})
    assert ragged_ok[0].inputs["input_ids"].shape == (2, 3)
    # an all-ones attention mask needs no token filtering
    assert prepare_calibration_data({"input_ids": ids, "attention_mask": torch.ones_like(ids)})[0].token_mask is None


@pytest.mark.parametrize(
    "data, message",
    [
        ([], "empty"),
        ("some text", "tokenize"),
        (torch.randn(2, 4), "integer"),
        (torch.zeros(2, 3, 4, dtype=torch.long), r"\[batch, seq_len\]"),
        (torch.zeros(2, 0, dtype=torch.long), "empty input_ids"),
        ({"input_ids": torch.zeros(2, 4, dtype=torch.long), "attention_mask": torch.ones(2, 3)}, "attention_mask"),
        ({"input_ids": torch.zeros(1, 4, dtype=torch.long), "attention_mask": torch.zeros(1, 4)}, "all-zero"),
        ([{"attention_mask": torch.ones(1, 4)}], "no 'input_ids'"),
        ({"input_ids": [[1, 2], [3]]}, "ragged"),
        (42, "expected a tensor"),
        ([3.5], "expected an input_ids tensor"),
    ],
)
def test_bad_calibration_data_is_rejected_before_the_model_is_touched(data, message):
    model = tiny_llama(layers=2)
    before = weights_of(model)
    with pytest.raises(ValueError, match=message) as info:
        prune(model, SparsityConfig(method="wanda"), data)
    assert "calibration_data" in str(info.value)
    assert all(torch.equal(before[name], parameter) for name, parameter in model.named_parameters())


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_model_aware_checks(method):
    model = tiny_llama(layers=2)
    with pytest.raises(ValueError, match="vocabulary"):
        prune(model, SparsityConfig(method=method), torch.full((1, 4), VOCAB))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        prune(model, SparsityConfig(method=method), torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="calibration_data"):
        prune(model, SparsityConfig(method=method), None)


# ----------------------------------------------------------------------------- block-by-block inputs
@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("padded", [False, True])
def test_block_inputs_equal_a_full_forward_for_the_dense_model(kind, padded):
    model = MODELS[kind]()
    data = token_batches(padded=padded)
    batches = prepare_calibration_data(data)
    weights = find_prunable_weights(model)

    def full_forward():
        with torch.no_grad():
            for batch in data:
                model(**batch)

    expected = block_inputs_during(model, full_forward)
    observed = block_inputs_during(model, lambda: layer_by_layer(model, weights, batches, Recorder))
    assert len(observed) == len(expected) >= 2
    # block 0 is also entered (and stopped) once per batch while its inputs are captured, and on the first batch
    # the capture runs on through the other blocks once, to see whether their contexts (masks...) differ
    assert [len(seen) for seen in observed] == [2 * len(data)] + [len(data) + 1] * (len(observed) - 1)
    for block_expected, block_observed in zip(expected, observed):
        for a, b in zip(block_expected, block_observed[-len(data) :]):
            torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_statistics_see_the_layer_inputs_of_a_full_forward_without_padding_tokens():
    model = tiny_llama(layers=2)
    data = token_batches(padded=True)
    weights = find_prunable_weights(model)
    target = next(w for w in weights if w.name.endswith("layers.1.mlp.down_proj.weight"))
    captured = []
    handle = target.module.register_forward_hook(lambda m, args, out: captured.append(args[0].detach().clone()))
    with torch.no_grad():
        for batch in data:
            model(**batch)
    handle.remove()
    statistics = layer_by_layer(model, [target], prepare_calibration_data(data), Recorder)
    recorded = statistics[target.name].inputs
    for full, batch, seen in zip(captured, data, recorded):
        real = batch["attention_mask"].bool()
        torch.testing.assert_close(seen, full[real], rtol=0, atol=0)
        assert seen.shape[0] == int(real.sum()) < full.shape[0] * full.shape[1]


def tiny_gemma3(sliding_window: int = 4):
    """Sliding-window and full-attention layers: each gets its own attention mask and rotary embeddings."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, sliding_window=sliding_window, max_position_embeddings=64,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
    )  # fmt: skip
    return Gemma3ForCausalLM(config).eval()


@pytest.mark.parametrize("padded", [False, True])
def test_hybrid_attention_blocks_each_get_their_own_mask_and_rotary_embeddings(padded):
    """Every layer's statistics equal its inputs in a full forward, in full-attention layers too (capturing
    block 0's context alone would run them with the sliding-window mask and the local rotary embeddings)."""
    model = tiny_gemma3()
    data = token_batches(padded=padded, length=12)
    weights = find_prunable_weights(model)
    captured = {weight.name: [] for weight in weights}
    handles = [
        weight.module.register_forward_hook(lambda m, args, out, name=weight.name: captured[name].append(args[0]))
        for weight in weights
    ]
    with torch.no_grad():
        for batch in data:
            model(**batch)
    for handle in handles:
        handle.remove()
    statistics = layer_by_layer(model, weights, prepare_calibration_data(data), Recorder)
    for weight in weights:
        for full, batch, seen in zip(captured[weight.name], data, statistics[weight.name].inputs):
            real = batch["attention_mask"].bool() if padded else torch.ones(full.shape[:2], dtype=torch.bool)
            torch.testing.assert_close(seen, full[real], rtol=1e-5, atol=1e-6, msg=weight.name)


def test_padding_is_excluded_where_a_block_flattens_its_tokens_opt():
    """OPT runs fc1/fc2 on [batch * seq, features]: padding tokens must be dropped there too."""
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    model = OPTForCausalLM(
        OPTConfig(vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=2,
                  word_embed_proj_dim=32, max_position_embeddings=64)
    ).eval()  # fmt: skip
    data = token_batches(padded=True)
    weights = [
        w for w in find_prunable_weights(model) if w.name.endswith(("fc1.weight", "fc2.weight", "q_proj.weight"))
    ]
    statistics = layer_by_layer(model, weights, prepare_calibration_data(data), Recorder)
    real_tokens = [int(batch["attention_mask"].sum()) for batch in data]
    for weight in weights:
        assert [inputs.shape[0] for inputs in statistics[weight.name].inputs] == real_tokens, weight.name


def test_blocks_sharing_one_context_are_captured_at_the_first_block_only():
    model = tiny_gemma3(sliding_window=64)  # a window longer than the sequences: one mask for every layer?
    weights = find_prunable_weights(model)
    seen = block_inputs_during(
        model, lambda: layer_by_layer(model, weights, prepare_calibration_data(token_batches()), Recorder)
    )
    # sliding and full layers still get different rotary embeddings in Gemma3: the capture runs every batch up to
    # the last block (3 calls each), then the observing pass (3 more)
    assert [len(s) for s in seen] == [6, 6, 6, 6]
    llama = tiny_llama(layers=3)
    seen = block_inputs_during(
        llama,
        lambda: layer_by_layer(
            llama, find_prunable_weights(llama), prepare_calibration_data(token_batches()), Recorder
        ),
    )
    assert [len(s) for s in seen] == [6, 4, 4]  # one shared context: only the first batch runs on (to find out)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_each_block_sees_the_already_pruned_blocks_before_it(kind):
    """Block k's inputs during calibration equal a full forward of the final model: blocks < k pruned."""
    model = MODELS[kind]()
    data = token_batches()
    weights = find_prunable_weights(model)

    def prune_block(block_weights, statistics):  # zero the first half of each weight's rows
        for weight in block_weights:
            weight.as_out_in(weight.weight)[: weight.weight.shape[1 - weight.input_dim] // 2] = 0

    during = block_inputs_during(
        model, lambda: layer_by_layer(model, weights, prepare_calibration_data(data), Recorder, prune_block)
    )

    def full_forward():
        with torch.no_grad():
            for batch in data:
                model(**batch)

    after = block_inputs_during(model, full_forward)
    for index, (seen, final) in enumerate(zip(during, after)):
        # capture (block 0), statistics pass, then the pass that feeds the next block (not after the last)
        # blocks after the first are also run once by the capture of the first batch (see above)
        assert len(seen) - (index > 0) in (len(data), 2 * len(data), 3 * len(data)), index
        for a, b in zip(seen[-len(data) :], final):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_blocks_after_the_last_pruned_block_are_not_run():
    model = tiny_llama(layers=3)
    weights = [w for w in find_prunable_weights(model) if w.block_index == 0]
    seen = block_inputs_during(
        model, lambda: layer_by_layer(model, weights, prepare_calibration_data(token_batches()), Recorder)
    )
    assert [len(s) for s in seen] == [6, 0, 0]  # capture + statistics pass, no output pass


# --------------------------------------------------------------------------------- errors and modes
@pytest.mark.parametrize("failing_block", [0, 1, 2])
def test_weights_are_restored_when_pruning_fails_midway(failing_block):
    model = tiny_llama(layers=3)
    before = weights_of(model)
    weights = find_prunable_weights(model)

    def prune_block(block_weights, statistics):
        for weight in block_weights:
            weight.weight.mul_(0.5)
            if weight.block_index == failing_block and weight is block_weights[-1]:
                raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        layer_by_layer(model, weights, prepare_calibration_data(token_batches()), Recorder, prune_block)
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, before[name]), name


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_prune_leaves_the_model_untouched_when_a_later_block_fails(method):
    model = tiny_llama(layers=3)
    before = weights_of(model)
    first = next(name for name in before if "layers.0." in name and name.endswith("q_proj.weight"))
    seen = {}

    def explode(module, args):  # block 2's first run after blocks 0 and 1 are pruned
        if torch.equal(dict(model.named_parameters())[first], before[first]):
            return  # the capture pass, before any pruning, also enters block 2
        seen["block0_modified"] = True
        raise KeyboardInterrupt

    handle = find_blocks(model)[2][1].register_forward_pre_hook(explode)
    with pytest.raises(KeyboardInterrupt):
        prune(model, SparsityConfig(method=method, sparsity=0.5), token_batches())
    handle.remove()
    assert seen["block0_modified"]
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, before[name]), name


def test_training_mode_is_restored_and_dropout_is_off_during_calibration():
    model = tiny_bert()
    model.config.hidden_dropout_prob = 0.5
    model.train()
    data = token_batches()
    a = layer_by_layer(model, find_prunable_weights(model), prepare_calibration_data(data), Recorder)
    b = layer_by_layer(model, find_prunable_weights(model), prepare_calibration_data(data), Recorder)
    assert model.training
    for name in a:
        for x, y in zip(a[name].inputs, b[name].inputs):
            assert torch.equal(x, y)


def test_a_dataloader_is_iterated_once_and_prune_is_deterministic():
    data = torch.randint(0, VOCAB, (6, 10), generator=torch.Generator().manual_seed(3))

    class CountingLoader:
        def __init__(self):
            self.iterations = 0

        def __iter__(self):
            self.iterations += 1
            yield from DataLoader(TensorDataset(data), batch_size=3)

    loader = CountingLoader()
    first, second = tiny_llama(layers=2), tiny_llama(layers=2)
    masks_loader = prune(first, SparsityConfig(method="wanda"), loader)
    masks_tensor = prune(second, SparsityConfig(method="wanda"), data)
    assert loader.iterations == 1
    assert masks_loader == masks_tensor


def test_num_calibration_samples_limits_the_sequences_used():
    data = torch.randint(0, VOCAB, (6, 10), generator=torch.Generator().manual_seed(3))
    few = prune(tiny_llama(layers=2), SparsityConfig(method="wanda", num_calibration_samples=2), data)
    same = prune(tiny_llama(layers=2), SparsityConfig(method="wanda"), data[:2])
    assert few == same


class TwoStacks(nn.Module):
    """Encoder-decoder shaped toy: the decoder list needs the encoder's output as a second input."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, 8)
        self.encoder = nn.ModuleList([nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(2)])
        self.decoder = nn.ModuleList([Cross() for _ in range(2)])

    def forward(self, input_ids, attention_mask=None):
        hidden = self.embed(input_ids)
        for block in self.encoder:
            hidden = block(hidden)
        states = hidden
        for block in self.decoder:
            hidden = block(hidden, memory=states)
        return hidden


class Cross(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, hidden, memory):
        return torch.tanh(self.fc(hidden) + memory)


def test_each_stack_is_captured_from_the_model_pruned_so_far():
    model = TwoStacks()
    data = token_batches(count=2)
    weights = find_prunable_weights(model)
    assert {w.block_index for w in weights} == {0, 1, 2, 3}

    def prune_block(block_weights, statistics):
        for weight in block_weights:
            weight.weight[0] = 0

    during = block_inputs_during(
        model, lambda: layer_by_layer(model, weights, prepare_calibration_data(data), Recorder, prune_block)
    )
    after = block_inputs_during(model, lambda: [model(**batch) for batch in data])
    for seen, final in zip(during, after):
        for a, b in zip(seen[-len(data) :], final):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_t5_decoder_is_calibrated_on_the_shifted_inputs(method):
    """T5 (unlike BART) does not derive decoder inputs from input_ids: calibration gives it the shifted ids."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    model = T5ForConditionalGeneration(
        T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
                 decoder_start_token_id=0, pad_token_id=0)
    ).eval()  # fmt: skip
    masks = prune(model, SparsityConfig(method=method, sparsity=0.5), token_batches())
    decoder = [name for name in masks.names() if name.startswith("decoder.")]
    assert decoder and masks.num_zeros() == round(0.5 * masks.num_weights())
    assert all(masks.get(name).float().mean() < 1 for name in decoder)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_calibrated_pruning_on_cuda_matches_cpu(method):
    data = torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(5))
    cpu_model, gpu_model = tiny_llama(layers=2), tiny_llama(layers=2).cuda()
    config = SparsityConfig(method=method, sparsity=0.5)
    cpu_masks = prune(cpu_model, config, data)
    gpu_masks = prune(gpu_model, config, data)  # data stays on the CPU: moved to the model's device
    assert gpu_masks.num_zeros() == cpu_masks.num_zeros()
    agreement = (
        sum(int((cpu_masks.get(name) == gpu_masks.get(name)).sum()) for name in cpu_masks) / cpu_masks.num_weights()
    )
    assert agreement > 0.97
    assert all(p.device.type == "cuda" for p in gpu_model.parameters())
