"""The junkdna command, run in-process on a tiny model saved to a folder."""

import json

import pytest
from tiny_models import tiny_llama

from hf_junkdna import MaskSet, cli


@pytest.fixture
def tiny_model_dir(tmp_path):
    from transformers import AutoTokenizer

    from hf_junkdna import offline

    model = tiny_llama()
    tokenizer = AutoTokenizer.from_pretrained(offline.smollm2_path())
    model.resize_token_embeddings(len(tokenizer))
    folder = tmp_path / "tiny"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_prune_then_inspect(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "pruned"
    assert cli.main(["prune", str(tiny_model_dir), str(out), "--sparsity", "0.4"]) == 0
    masks = MaskSet.load(out / "sparsity_masks.safetensors")
    assert masks.sparsity() == pytest.approx(0.4, abs=1e-4)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    parameters = dict(model.named_parameters())
    assert all((parameters[name][~keep] == 0).all() for name, keep in masks.items())
    capsys.readouterr()
    assert cli.main(["inspect", str(out), "--json"]) == 0
    statistics = json.loads(capsys.readouterr().out)
    assert statistics["num_zeros"] == masks.num_zeros()
    assert cli.main(["inspect", str(out / "sparsity_masks.safetensors")]) == 0
    assert "overall" in capsys.readouterr().out


def test_wanda_with_a_calibration_file(tiny_model_dir, tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 200)
    out = tmp_path / "wanda"
    args = ["prune", str(tiny_model_dir), str(out), "--method", "wanda", "--pattern", "2:4"]
    assert (
        cli.main(
            [*args, "--calibration-file", str(text), "--num-calibration-samples", "4", "--calibration-seq-len", "32"]
        )
        == 0
    )
    masks = MaskSet.load(out / "sparsity_masks.safetensors")
    for keep in masks.masks.values():
        assert (keep.view(keep.shape[0], -1, 4).sum(-1) == 2).all()


def test_bad_input_is_a_clear_error_and_writes_nothing(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "never"
    assert cli.main(["prune", str(tiny_model_dir), str(out), "--sparsity", "1.0"]) == 2
    assert "sparsity=1.0" in capsys.readouterr().err
    assert not out.exists()
    assert cli.main(["inspect", str(tmp_path / "missing.safetensors")]) == 2
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["prune", "--help"])
    assert exit_info.value.code == 0


def test_output_folder_not_ours_is_refused_before_loading(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import transformers

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the output folder was checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", must_not_load)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert cli.main(["prune", str(tiny_model_dir), str(foreign)]) == 2
    assert "not written by junkdna" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_calibration_sample_count_is_recorded(tiny_model_dir, tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text("Plain words for calibration. " * 200)
    out = tmp_path / "sgpt"
    args = ["prune", str(tiny_model_dir), str(out), "--method", "sparsegpt", "--calibration-file", str(text)]
    assert cli.main([*args, "--num-calibration-samples", "2", "--calibration-seq-len", "32"]) == 0
    config = MaskSet.load(out / "sparsity_masks.safetensors").metadata["sparsity_config"]
    assert config["num_calibration_samples"] == 2
