"""The model card: ``ModelCardData`` (tags, base model, model-index) + the Jinja template in ``model_cards/``."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..masks import MaskSet
from .results import Curve, ResultPoint

TEMPLATE_NAME = "pruned_model_card.md"
COLLAPSE_AFTER = 12  # longer per-layer tables are folded into <details>
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")

REGIME_TEXT = {
    "dense": "Regime `dense`: ordinary fine-tuning; the mask is recorded but was not enforced.",
    "sparse": "Regime `sparse`: pruned, then fine-tuned with the mask fixed, so every pruned weight is exactly 0.",
    "freeze": "Regime `freeze`: no weight was removed; the weights the mask marks as pruned stayed frozen at their "
    "pretrained values during fine-tuning, so the mask cannot be recovered from the weights.",
    "sparse_to_dense": "Regime `sparse_to_dense`: pruned, then the pruned weights were allowed to regrow from 0 "
    "during fine-tuning, so the mask records the initial pruning, not the zeros of these weights.",
}

_TASK_TYPES = (
    ("ForCausalLM", "text-generation"),
    ("ForSequenceClassification", "text-classification"),
    ("ForQuestionAnswering", "question-answering"),
    ("ForTokenClassification", "token-classification"),
    ("ForConditionalGeneration", "text2text-generation"),
    ("ForSeq2SeqLM", "text2text-generation"),
    ("ForMaskedLM", "fill-mask"),
    ("ForMultipleChoice", "multiple-choice"),
)


def looks_like_repo_id(name: str | None) -> bool:
    return bool(name) and bool(_REPO_ID.match(name))


def task_type_for(model_class: str) -> str:
    for suffix, task_type in _TASK_TYPES:
        if model_class.endswith(suffix):
            return task_type
    return "other"


def _pct(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f} %"


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return _cell(value)


def _cell(value: Any) -> str:
    """Text for a Markdown table cell: a '|' or a line break in a user's label must not split the row."""
    return " ".join(str(value).replace("|", "\\|").split())


def _curve_name(method: str | None, pattern: str | None, regime: str | None) -> str:
    return _cell(" · ".join(part for part in (method, pattern, regime) if part) or "—")


def _setting(setting: str | None, dataset: str | None) -> str:
    return _cell(" · ".join(part for part in (setting, dataset) if part) or "—")


@dataclass
class CardInputs:
    """Everything the card shows; ``save_pruned`` fills it from the model, masks and results."""

    model_name: str
    repo_or_path: str
    model_class: str
    masks: MaskSet
    regime: str
    method: str
    pattern: str
    scope: str | None
    weights_format: str
    weight_zero_fraction: float
    threshold: float
    points: list[ResultPoint] = field(default_factory=list)
    curves: list[Curve] = field(default_factory=list)
    base_model: str | None = None
    task: str | None = None
    difficulty_measure: str | None = None
    difficulty_value: Any = None
    command: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    curve_file: str | None = None
    license: str | None = None
    language: str | list[str] | None = None
    datasets: str | list[str] | None = None
    extra_tags: list[str] = field(default_factory=list)


def eval_results(inputs: CardInputs) -> list[EvalResult]:
    """model-index entries: the points measured on this very model, not the whole sweep: same sparsity (within
    0.5 %), and same regime, method, pattern and difficulty value where the point states them."""
    sparsity = inputs.masks.sparsity()
    own = [
        p
        for p in inputs.points
        if not p.is_dense
        and abs(p.sparsity - sparsity) <= 5e-3
        and (p.regime in (None, inputs.regime))
        and (p.method in (None, inputs.method))
        and (p.pattern in (None, inputs.pattern))
        and (p.difficulty is None or inputs.difficulty_value is None or p.difficulty == inputs.difficulty_value)
    ]
    default_task_type = task_type_for(inputs.model_class)
    results = []
    for p in own:
        dataset = p.dataset or inputs.task or "custom"
        results.append(
            EvalResult(
                task_type=p.task_type or default_task_type,
                dataset_type=dataset,
                dataset_name=f"{dataset} ({p.setting})" if p.setting else dataset,
                dataset_config=p.setting,
                metric_type=p.metric,
                metric_value=p.score,
                metric_name=p.metric,
            )
        )
    return results


def card_data(inputs: CardInputs) -> ModelCardData:
    tags = ["hf_junkdna", "sparse", "pruned", inputs.method]
    if inputs.weights_format != "dense":
        tags.append("compressed-tensors")
    tags += [tag for tag in dict.fromkeys(inputs.extra_tags) if tag not in tags]
    results = eval_results(inputs)
    return ModelCardData(
        model_name=inputs.model_name,
        base_model=inputs.base_model if looks_like_repo_id(inputs.base_model) else None,
        library_name="transformers",
        tags=tags,
        license=inputs.license,
        language=inputs.language,
        datasets=inputs.datasets,
        eval_results=results or None,
    )


def _template_kwargs(inputs: CardInputs) -> dict[str, Any]:
    masks = inputs.masks
    layers = [
        {"name": name, "shape": " × ".join(map(str, masks.shape(name))), "sparsity": _pct(masks.sparsity(name))}
        for name in masks.names()
    ]
    tolerances = [
        {
            "setting": _setting(curve.setting, curve.dataset),
            "difficulty": _fmt(curve.difficulty),
            "metric": _cell(curve.metric),
            "curve": _curve_name(curve.method, curve.pattern, curve.regime),
            "tolerance": "n/a (no normalised scores)" if curve.tolerance is None else _pct(curve.tolerance, 1),
        }
        for curve in inputs.curves
    ]
    scores = [
        {
            "setting": _setting(p.setting, p.dataset),
            "sparsity": _pct(p.sparsity, 1),
            "regime": "dense" if p.is_dense else _cell(p.regime or inputs.regime),
            "curve": "—" if p.is_dense else _curve_name(p.method, p.pattern, p.regime),
            "metric": _cell(p.metric),
            "score": _fmt(p.score),
            "normalized": _fmt(p.normalized_score),
        }
        for p in inputs.points
    ]
    pattern_text = "unstructured" if inputs.pattern == "unstructured" else f"{inputs.pattern} semi-structured"
    return {
        "model_name": inputs.model_name,
        "repo_or_path": inputs.repo_or_path,
        "model_class": inputs.model_class,
        "base_model": inputs.base_model,
        "base_model_is_repo": looks_like_repo_id(inputs.base_model),
        "method": inputs.method,
        "pattern": inputs.pattern,
        "pattern_text": pattern_text,
        "scope": inputs.scope,
        "regime": inputs.regime,
        "regime_text": REGIME_TEXT.get(inputs.regime, ""),
        "sparsity_pct": _pct(masks.sparsity()),
        "num_zeros": f"{masks.num_zeros():,}",
        "num_weights": f"{masks.num_weights():,}",
        "weight_zeros_pct": _pct(inputs.weight_zero_fraction),
        "weights_format": inputs.weights_format,
        "compressed": inputs.weights_format != "dense",
        "layers": layers,
        "collapse_after": COLLAPSE_AFTER,
        "task": inputs.task,
        "difficulty_measure": inputs.difficulty_measure,
        "difficulty_value": inputs.difficulty_value,
        "has_results": bool(inputs.points),
        "threshold": f"{inputs.threshold:g}",
        "tolerances": tolerances,
        "show_curve_column": any(row["curve"] != "—" for row in tolerances),
        "scores": scores,
        "has_curve": inputs.curve_file is not None,
        "curve_file": inputs.curve_file,
        "command": inputs.command,
        "versions": inputs.versions,
    }


def build_model_card(inputs: CardInputs) -> ModelCard:
    template = files("hf_junkdna.model_cards").joinpath(TEMPLATE_NAME).read_text(encoding="utf-8")
    return ModelCard.from_template(card_data(inputs), template_str=template, **_template_kwargs(inputs))
