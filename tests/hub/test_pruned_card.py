"""The model card and its inputs: template shipped in the package, results, tolerance, tables, metadata."""

from __future__ import annotations

import json
from importlib.resources import files

import pytest
from huggingface_hub import ModelCard
from tiny_models import tiny_llama

from hf_junkdna import SparsityConfig, prune
from hf_junkdna.hub import CURVE_NAME, RESULTS_NAME, SPARSITY_CONFIG_NAME, save_pruned
from hf_junkdna.hub.results import curves, normalize_results

RESULTS = [
    {"sparsity": 0.0, "score": 0.80, "metric": "accuracy", "setting": "25% data", "difficulty": 0.25},
    {"sparsity": 0.2, "score": 0.80, "metric": "accuracy", "setting": "25% data", "difficulty": 0.25},
    {"sparsity": 0.5, "score": 0.78, "metric": "accuracy", "setting": "25% data", "difficulty": 0.25},
    {"sparsity": 0.7, "score": 0.80, "metric": "accuracy", "setting": "25% data", "difficulty": 0.25},
    {"sparsity": 0.0, "score": 0.90, "metric": "accuracy", "setting": "100% data", "difficulty": 1.0},
    {"sparsity": 0.5, "score": 0.895, "metric": "accuracy", "setting": "100% data", "difficulty": 1.0},
    {"sparsity": 0.7, "score": 0.60, "metric": "accuracy", "setting": "100% data", "difficulty": 1.0},
]


def test_template_ships_inside_the_package():
    template = files("hf_junkdna.model_cards").joinpath("pruned_model_card.md")
    assert template.is_file() and "{{ card_data }}" in template.read_text(encoding="utf-8")


def test_card_without_results_says_so(tmp_path):
    model = tiny_llama()
    masks = prune(model, SparsityConfig(sparsity=0.5))
    folder = save_pruned(model, tmp_path / "plain", masks)
    card = ModelCard.load(folder / "README.md")
    assert "No evaluation results were recorded" in card.text
    assert "| setting |" not in card.text and "sparsity tolerance |" not in card.text and ".png" not in card.text
    assert "not recorded" in card.text  # task, difficulty and command alike
    assert not (folder / CURVE_NAME).exists() and not (folder / RESULTS_NAME).exists()
    assert card.data.eval_results is None and "model-index" not in card.data.to_dict()
    assert {"hf_junkdna", "sparse", "pruned", "magnitude"} <= set(card.data.tags)
    assert "<details>" in card.text  # 14 pruned matrices: the per-layer table is folded


def test_card_with_results(tmp_path):
    model = tiny_llama()
    masks = prune(model, SparsityConfig(sparsity=0.5, include=[r"layers\.0\.mlp"]))
    folder = save_pruned(
        model,
        tmp_path / "with-results",
        masks,
        results=RESULTS,
        task="sst2",
        difficulty={"measure": "training data fraction", "value": 0.25},
        command="accelerate launch recipes/glue.py --task sst2 --sparsity 0.5",
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="apache-2.0",
    )
    card = ModelCard.load(folder / "README.md")
    text = card.text
    assert "[HuggingFaceTB/SmolLM2-135M-Instruct](https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct)" in text
    assert "training data fraction** = **0.25" in text and "**sst2**" in text
    assert "stays ≥ **0.99** (threshold 0.99" in text
    # 25% data: 0.2 holds, 0.5 drops to 0.975 (the recovery at 0.7 does not count); 100% data: 0.5 holds.
    assert "| 25% data | 0.25 | accuracy | 20.0 % |" in text
    assert "| 100% data | 1 | accuracy | 50.0 % |" in text
    assert "| 25% data | 50.0 % | sparse | accuracy | 0.78 | 0.975 |" in text
    assert "| 100% data | 0.0 % | dense | accuracy | 0.9 | 1 |" in text
    assert f"![normalised score vs sparsity]({CURVE_NAME})" in text
    assert (folder / CURVE_NAME).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "accelerate launch recipes/glue.py --task sst2 --sparsity 0.5" in text
    assert "- transformers: " in text and "- torch: " in text
    assert "<details>" not in text  # 3 pruned matrices: the table is shown open
    assert "| `model.layers.0.mlp.up_proj.weight` | 64 × 32 | " in text

    data = card.data
    assert data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and data.license == "apache-2.0"
    (result,) = data.eval_results  # sparsity 0.5 at difficulty 0.25: this model; the rest is the sweep
    assert (result.task_type, result.dataset_type, result.metric_type, result.metric_value) == (
        "text-generation",
        "sst2",
        "accuracy",
        0.78,
    )
    record = json.loads((folder / SPARSITY_CONFIG_NAME).read_text())
    assert record["difficulty"] == {"measure": "training data fraction", "value": 0.25}
    assert {(t["setting"], t["tolerance"]) for t in record["sparsity_tolerance"]} == {
        ("25% data", 0.2),
        ("100% data", 0.5),
    }
    saved = json.loads((folder / RESULTS_NAME).read_text())
    assert saved["threshold"] == 0.99 and len(saved["results"]) == len(RESULTS)

    lenient = save_pruned(model, tmp_path / "lenient", masks, results=RESULTS, threshold=0.95)
    assert "| 25% data | 0.25 | accuracy | 70.0 % |" in (lenient / "README.md").read_text()


def test_points_of_other_data_or_difficulty_are_normalised_by_their_own_dense_baseline():
    points = normalize_results(
        [
            {"sparsity": 0.0, "score": 0.90, "metric": "accuracy", "dataset": "sst2"},
            {"sparsity": 0.5, "score": 0.89, "metric": "accuracy", "dataset": "sst2"},
            {"sparsity": 0.0, "score": 0.50, "metric": "accuracy", "dataset": "rte"},
            {"sparsity": 0.5, "score": 0.49, "metric": "accuracy", "dataset": "rte"},
            {"sparsity": 0.0, "score": 0.80, "metric": "f1", "difficulty": 0.25},
            {"sparsity": 0.5, "score": 0.40, "metric": "f1", "difficulty": 0.25},
            {"sparsity": 0.0, "score": 0.40, "metric": "f1", "difficulty": 1.0},
            {"sparsity": 0.5, "score": 0.40, "metric": "f1", "difficulty": 1.0},
            {"sparsity": 0.0, "score": 0.60, "metric": "em", "setting": "open"},  # one dense run for every level
            {"sparsity": 0.5, "score": 0.60, "metric": "em", "setting": "open", "difficulty": 0.5},
        ]
    )
    normalised = {(p.dataset, p.difficulty, p.metric): p.normalized_score for p in points if not p.is_dense}
    assert normalised[("sst2", None, "accuracy")] == pytest.approx(0.89 / 0.90)
    assert normalised[("rte", None, "accuracy")] == pytest.approx(0.49 / 0.50)
    assert normalised[(None, 0.25, "f1")] == pytest.approx(0.5) and normalised[(None, 1.0, "f1")] == 1.0
    assert normalised[(None, 0.5, "em")] == 1.0
    tolerance = {(c.dataset, c.difficulty, c.metric): c.tolerance for c in curves(points, threshold=0.95)}
    assert tolerance == {
        ("sst2", None, "accuracy"): 0.5, ("rte", None, "accuracy"): 0.5,
        (None, 0.25, "f1"): 0.0, (None, 1.0, "f1"): 0.5, (None, 0.5, "em"): 0.5,
    }  # fmt: skip


def test_tables_name_each_curve_and_survive_pipes_and_newlines(tmp_path):
    model = tiny_llama()
    masks = prune(model, SparsityConfig(sparsity=0.5))
    results = [
        {"sparsity": 0.0, "score": 0.9, "metric": "accuracy", "setting": "25% | data"},
        {"sparsity": 0.5, "score": 0.8, "metric": "accuracy", "setting": "25% | data", "method": "magnitude"},
        {"sparsity": 0.5, "score": 0.7, "metric": "accuracy", "setting": "25% | data", "method": "wanda",
         "pattern": "2:4"},
        {"sparsity": 0.0, "score": 0.6, "metric": "exact\nmatch"},
    ]  # fmt: skip
    text = ModelCard.load(save_pruned(model, tmp_path / "card", masks, results=results) / "README.md").text
    assert "| 25% \\| data | 50.0 % | sparse | magnitude | accuracy | 0.8 | 0.8889 |" in text
    assert "| 25% \\| data | 50.0 % | sparse | wanda · 2:4 | accuracy | 0.7 | 0.7778 |" in text
    assert "| — | 0.0 % | dense | — | exact match | 0.6 | 1 |" in text
    lines = text.splitlines()
    header = lines.index("| setting | sparsity | regime | curve | metric | score | normalised |")
    rows = lines[header + 2 : header + 6]
    assert all(row.replace("\\|", "").count("|") == 8 for row in rows), rows  # 7 cells each


def test_results_are_checked_and_normalised():
    points = normalize_results(RESULTS)
    by_key = {(p.setting, p.sparsity): p for p in points}
    assert by_key[("25% data", 0.5)].normalized_score == pytest.approx(0.975)
    assert by_key[("100% data", 0.0)].normalized_score == 1.0
    tolerance = {c.setting: c.tolerance for c in curves(points, threshold=0.99)}
    assert tolerance == {"25% data": 0.2, "100% data": 0.5}
    no_baseline = normalize_results([{"sparsity": 0.5, "score": 0.7, "metric": "f1"}])
    assert no_baseline[0].normalized_score is None and curves(no_baseline)[0].tolerance is None
    with pytest.raises(ValueError, match=r"results\[0\] lacks 'score'"):
        normalize_results([{"sparsity": 0.5, "metric": "f1"}])
    with pytest.raises(ValueError, match="unknown key"):
        normalize_results([{"sparsity": 0.5, "score": 1, "metric": "f1", "acc": 2}])
    with pytest.raises(ValueError, match="outside"):
        normalize_results([{"sparsity": 1.5, "score": 1, "metric": "f1"}])
    good = {"sparsity": 0.5, "score": 0.7, "metric": "f1"}
    for key, value in (("score", "n/a"), ("score", float("nan")), ("sparsity", "half"), ("normalized_score", "x")):
        with pytest.raises(ValueError, match=rf"results\[1\]: {key}={value!r} is not a finite number"):
            normalize_results([good, {**good, key: value}])
