"""The public API that outside code relies on (DESIGN.md) is importable from the top-level package."""

import inspect

import hf_junkdna


def test_public_names_resolve():
    for name in hf_junkdna.__all__:
        assert getattr(hf_junkdna, name) is not None, name


def test_contract_signatures():
    assert list(inspect.signature(hf_junkdna.prune).parameters)[:3] == ["model", "config", "calibration_data"]
    config = hf_junkdna.SparsityConfig(method="magnitude", sparsity=0.5, pattern="unstructured", scope="global")
    assert config.sparsity == 0.5
    assert hf_junkdna.SparsityConfig(pattern="2:4").sparsity == 0.5
    for name in ("save", "load", "sparsity", "masks"):
        assert hasattr(hf_junkdna.MaskSet, name)
    from transformers import Trainer, TrainingArguments

    assert issubclass(hf_junkdna.SparseTrainer, Trainer)
    assert issubclass(hf_junkdna.SparseTrainingArguments, TrainingArguments)
    assert "regime" in {f.name for f in __import__("dataclasses").fields(hf_junkdna.SparseTrainingArguments)}
    assert list(inspect.signature(hf_junkdna.load_pruned).parameters)[0] == "repo_id_or_path"
