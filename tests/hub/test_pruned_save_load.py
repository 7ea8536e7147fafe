"""save_pruned / load_pruned on local folders: layout, round trip, atomic writes, and every refusal."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import tiny_bert, tiny_llama
from transformers import AutoModelForCausalLM, BertForSequenceClassification

from hf_junkdna import MaskMismatchError, MaskSet, SparsityConfig, prune
from hf_junkdna.hub import (
    MASKS_NAME,
    SPARSITY_CONFIG_NAME,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    MaskFileError,
    load_pruned,
    save_pruned,
)
from hf_junkdna.hub import save as save_module


def pruned_llama(sparsity=0.5, seed=0, **kwargs):
    model = tiny_llama(seed=seed, **kwargs)
    return model, prune(model, SparsityConfig(sparsity=sparsity))


def assert_same_weights(expected: torch.nn.Module, actual: torch.nn.Module) -> None:
    a, b = expected.state_dict(), actual.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), name


def test_layout_and_round_trip(tmp_path):
    model, masks = pruned_llama()
    folder = save_pruned(model, tmp_path / "out", masks, task="sst2", command="python train.py --sparsity 0.5")
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        SPARSITY_CONFIG_NAME,
        MASKS_NAME,
    ]  # no results: no plot, no results file
    record = json.loads((folder / SPARSITY_CONFIG_NAME).read_text())
    assert record["format"] == "hf_junkdna.pruned_checkpoint" and record["format_version"] == 1
    assert record["regime"] == "sparse" and record["weights_format"] == "dense"
    assert record["sparsity"] == pytest.approx(0.5) and record["num_zeros"] == masks.num_zeros()
    assert record["sparsity_config"]["method"] == "magnitude"
    assert set(record["per_layer"]) == set(masks.names())
    assert {"hf_junkdna", "transformers", "torch", "huggingface_hub", "safetensors"} <= set(record["library_versions"])
    assert record["command"] == "python train.py --sparsity 0.5" and record["task"] == "sst2"

    stock = AutoModelForCausalLM.from_pretrained(folder)  # the weights are a plain transformers checkpoint
    assert_same_weights(model, stock)
    loaded, loaded_masks = load_pruned(str(folder))
    assert type(loaded).__name__ == "LlamaForCausalLM"
    assert_same_weights(model, loaded)
    assert loaded_masks == masks and loaded_masks.metadata["regime"] == "sparse"

    # Saving the same model again gives the same bytes (what makes a re-push upload nothing).
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    save_pruned(model, folder, masks, task="sst2", command="python train.py --sparsity 0.5")
    assert before == {p.name: p.read_bytes() for p in folder.iterdir()}


def test_no_local_path_is_written_into_any_file(tmp_path):
    """A model loaded from a local folder carries that path (``_name_or_path``, the masks' base_model): only
    its last component may reach the published files (it can name users and private folders)."""
    private = tmp_path / "home" / "alice" / "private-project" / "base-model"
    tiny_llama().save_pretrained(private)
    model = AutoModelForCausalLM.from_pretrained(private)
    masks = prune(model, SparsityConfig(sparsity=0.5))
    assert masks.metadata["base_model"] == str(private)  # the leak this test guards against is real
    folder = save_pruned(model, tmp_path / "out", masks)
    for path in folder.iterdir():
        assert b"alice" not in path.read_bytes(), path.name
    assert MaskSet.load(folder / MASKS_NAME).metadata["base_model"] == "base-model"
    assert masks.metadata["base_model"] == str(private)  # the caller's MaskSet is not modified


def test_bert_bf16_sharded_with_explicit_class(tmp_path):
    model = tiny_bert().to(torch.bfloat16)
    masks = prune(model, SparsityConfig(sparsity=0.3, scope="layer"))
    folder = save_pruned(model, tmp_path / "bert", masks, regime="sparse", max_shard_size="20KB")
    assert (folder / "model.safetensors.index.json").is_file()
    loaded, loaded_masks = load_pruned(folder, BertForSequenceClassification)
    assert loaded.dtype == torch.bfloat16
    assert_same_weights(model, loaded)
    assert loaded_masks == masks


def test_freeze_regime_keeps_nonzero_pruned_weights(tmp_path):
    model = tiny_llama()
    masks = prune(tiny_llama(), SparsityConfig(sparsity=0.5))  # same shapes; `model` itself is not pruned
    with pytest.raises(ValueError, match="regime='sparse'.*non-zero"):
        save_pruned(model, tmp_path / "refused", masks)  # sparse regime: zeros are promised
    assert not (tmp_path / "refused").exists()
    folder = save_pruned(model, tmp_path / "freeze", masks, regime="freeze")
    loaded, loaded_masks = load_pruned(folder)
    assert loaded_masks.metadata["regime"] == "freeze" and loaded_masks == masks
    assert_same_weights(model, loaded)


def test_failure_leaves_existing_folder_intact(tmp_path, monkeypatch):
    model, masks = pruned_llama()
    folder = save_pruned(model, tmp_path / "out", masks)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    other, other_masks = pruned_llama(seed=1)

    def broken_card(*args, **kwargs):
        raise RuntimeError("disk full while writing the card")

    monkeypatch.setattr(save_module, "build_model_card", broken_card)
    with pytest.raises(RuntimeError, match="disk full"):
        save_pruned(other, folder, other_masks)
    assert before == {p.name: p.read_bytes() for p in folder.iterdir()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the staging folder is gone


def test_current_directory_is_refused_before_any_work(tmp_path, monkeypatch):
    model, masks = pruned_llama()
    here = tmp_path / "work"
    (here / "sub").mkdir(parents=True)
    monkeypatch.chdir(here / "sub")
    for target in (".", "..", "../sub/."):
        with pytest.raises(ValueError, match="current working directory"):
            save_pruned(model, target, masks)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["sub", "work"]  # nothing staged, nothing moved
    save_pruned(model, "../out", masks)
    assert (here / "out" / MASKS_NAME).is_file()


def test_refuses_to_replace_a_foreign_folder(tmp_path):
    model, masks = pruned_llama()
    foreign = tmp_path / "training_output"
    (foreign / "checkpoint-500").mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not written by save_pruned"):
        save_pruned(model, foreign, masks)
    assert (foreign / "notes.txt").read_text() == "mine"
    save_pruned(model, foreign / "pruned", masks)  # a subfolder is fine
    empty = tmp_path / "empty"
    empty.mkdir()
    save_pruned(model, empty, masks)
    assert (empty / MASKS_NAME).is_file()


def test_mask_that_does_not_match_the_weights(tmp_path):
    model, masks = pruned_llama()
    folder = save_pruned(model, tmp_path / "out", masks)

    # Another width: caught from the safetensors headers, before any model is built.
    _, wide_masks = pruned_llama(hidden=64, intermediate=128)
    wide_masks.save(folder / MASKS_NAME)
    with pytest.raises(MaskMismatchError, match=r"does not match the weights.*shape"):
        load_pruned(folder)

    # Same shapes, another mask: the sparse regime's zeros give it away.
    _, other_masks = pruned_llama(seed=1)
    other_masks.save(folder / MASKS_NAME)
    with pytest.raises(MaskMismatchError, match="marks as pruned are non-zero"):
        load_pruned(folder)

    # A name the model does not have.
    renamed = MaskSet({"model.layers.9.mlp.up_proj.weight": torch.ones(64, 32, dtype=torch.bool)})
    renamed.save(folder / MASKS_NAME)
    with pytest.raises(MaskMismatchError, match=r"layers\.9"):
        load_pruned(folder)


def test_a_bare_name_offline_is_checkpoint_not_found(tmp_path):
    """Neither a local folder nor a reachable/cached Hub repo: the library's error, not the client's."""
    with pytest.raises(CheckpointNotFoundError, match="no such local folder.*neither cached nor reachable"):
        load_pruned("no-such-model-folder", local_files_only=True, cache_dir=tmp_path / "cache")


def test_device_map_offloading_is_verified_from_the_files(tmp_path):
    """Weights that device_map offloads are meta tensors in the model: their zeros are checked in the files."""
    from safetensors.torch import load_file, save_file

    model, masks = pruned_llama()
    folder = save_pruned(model, tmp_path / "out", masks)
    offload = dict(device_map="auto", max_memory={"cpu": "40KB"}, offload_folder=str(tmp_path / "offload"))
    loaded, loaded_masks = load_pruned(folder, **offload)
    offloaded = [n for n, p in loaded.named_parameters() if p.device.type == "meta" and n in masks.masks]
    assert offloaded and loaded_masks == masks  # some pruned weights really were offloaded

    weights = load_file(folder / "model.safetensors")
    name = offloaded[-1]
    weights[name][~masks.get(name)] = 0.5  # a pruned weight that is not zero, in an offloaded tensor
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(MaskMismatchError, match=rf"weights of '{name}' that the mask marks as pruned are non-zero"):
        load_pruned(folder, **{**offload, "offload_folder": str(tmp_path / "offload2")})


def test_missing_truncated_and_foreign_files(tmp_path):
    model, masks = pruned_llama()
    folder = save_pruned(model, tmp_path / "out", masks)
    weights = (folder / "model.safetensors").read_bytes()
    mask_bytes = (folder / MASKS_NAME).read_bytes()

    (folder / "model.safetensors").write_bytes(weights[: len(weights) - 100])
    with pytest.raises(CorruptCheckpointError, match="model.safetensors is truncated"):
        load_pruned(folder)
    (folder / "model.safetensors").write_bytes(weights)

    (folder / MASKS_NAME).write_bytes(mask_bytes[:-7])
    with pytest.raises(MaskFileError, match="cannot be read"):
        load_pruned(folder)
    (folder / MASKS_NAME).unlink()
    with pytest.raises(MaskFileError, match=f"has no {MASKS_NAME}"):
        load_pruned(folder)
    (folder / MASKS_NAME).write_bytes(mask_bytes)

    with pytest.raises(ValueError, match="safetensors only"):
        load_pruned(folder, use_safetensors=False)
    with pytest.raises(CheckpointNotFoundError, match="no such folder"):
        load_pruned(str(tmp_path / "nowhere" / "model"))
    with pytest.raises(ValueError, match="local folder"):
        load_pruned(folder, revision="main")


def test_loaded_pair_continues_sparse_training(tmp_path):
    """The loaded pair needs no trainer: a plain loop that re-applies the mask after each step keeps it sparse."""
    model, masks = pruned_llama()
    folder = save_pruned(model, tmp_path / "out", masks)
    loaded, loaded_masks = load_pruned(folder)
    before = {n: p.detach().clone() for n, p in loaded.named_parameters()}
    loaded.train()
    optimizer = torch.optim.AdamW(loaded.parameters(), lr=1e-2)
    batch = torch.randint(0, 128, (2, 8))
    for _ in range(3):
        loss = loaded(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        loaded_masks.apply_to(loaded)
    parameters = dict(loaded.named_parameters())
    for name, mask in loaded_masks.items():
        assert not parameters[name][~mask].any(), name  # pruned weights stay exactly 0
        assert not torch.equal(parameters[name][mask], before[name][mask]), name  # kept weights trained


def test_loaded_pair_goes_into_sparse_trainer(tmp_path):
    from datasets import Dataset
    from transformers import TrainingArguments

    from hf_junkdna.training import SparseTrainer

    model, masks = pruned_llama()
    folder = save_pruned(model, tmp_path / "out", masks)
    loaded, loaded_masks = load_pruned(folder)
    data = Dataset.from_list([{"input_ids": [1, 2, 3, 4, 5, 6], "labels": [1, 2, 3, 4, 5, 6]}] * 4)
    args = TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=2,
                             learning_rate=1e-2, report_to=[], use_cpu=True, save_strategy="no")  # fmt: skip
    trainer = SparseTrainer(model=loaded, args=args, train_dataset=data, masks=loaded_masks)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.global_step == 2
    parameters = dict(trainer.model.named_parameters())
    for name, mask in loaded_masks.items():
        weight = parameters[name].detach()
        assert not weight[~mask].any(), name  # pruned weights stay exactly 0
        assert not torch.equal(weight[mask], before[name][mask]), name  # kept weights trained
