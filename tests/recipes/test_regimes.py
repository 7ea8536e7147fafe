"""recipes/regimes.py: --help, and a small in-process run on the packaged MiniLM."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "regimes.py"


def load_recipe():
    spec = importlib.util.spec_from_file_location("regimes_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_recipe().main(["--help"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "--sparsity" in printed and "--regimes" in printed and "--config" in printed


@pytest.mark.slow
def test_small_run_prints_all_four_regimes(tmp_path, capsys):
    argv = ["--num_train", "32", "--num_eval", "32", "--max_length", "16", "--num_train_epochs", "1"]
    results = load_recipe().main([*argv, "--output_dir", str(tmp_path)])
    assert list(results) == ["dense", "sparse", "freeze", "sparse_to_dense"]
    assert all(0.0 <= accuracy <= 1.0 for accuracy in results.values())
    printed = capsys.readouterr().out
    assert all(regime in printed for regime in results)
    saved = json.loads((tmp_path / "all_results.json").read_text())
    assert saved["accuracy"] == results and saved["arguments"]["sparsity"] == 0.5


def test_unknown_regime_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="regimes: \\['sprase'\\]"):
        load_recipe().main(["--regimes", "sprase", "--output_dir", str(tmp_path)])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--num_train", "20000"], r"num_train=20000 \+ num_eval=256: .* hold 12808 rows"),
        (["--num_train", "10000", "--num_eval", "1000"], r"num_train=10000 \+ num_eval=1000: .* hold 12808 rows"),
        (["--num_eval", "0"], r"num_eval=0: must be >= 1"),
        (["--num_train", "0"], r"num_train=0: must be >= 1"),
    ],
)
def test_split_sizes_that_do_not_fit_are_clear_errors(tmp_path, monkeypatch, argv, message):
    from hf_junkdna.training import compare

    def no_training(*args, **kwargs):
        raise RuntimeError("training started with split sizes that should have been refused")

    monkeypatch.setattr(compare, "SparseTrainer", no_training)
    with pytest.raises(ValueError, match=message):
        load_recipe().main([*argv, "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
