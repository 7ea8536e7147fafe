import json
import math

import pytest

from hf_junkdna.experiments.plots import plot_normalized_curves
from hf_junkdna.experiments.report import all_results, format_table, summarize, write_report

DENSE = {"open_book": {"exact_match": 0.5, "f1": 0.8}, "closed_book": {"exact_match": 0.25, "f1": 0.4}}
# normalised EM per (method, sparsity): open-book holds longer than closed-book
CURVES = {
    ("magnitude", "unstructured"): {
        "open_book": {0.1: 1.0, 0.2: 1.0, 0.3: 0.96, 0.4: 0.9},
        "closed_book": {0.1: 1.0, 0.2: 0.8, 0.3: 1.0, 0.4: 0.4},
    },
    ("wanda", "unstructured"): {
        "open_book": {0.1: 1.04, 0.2: 1.0, 0.3: 1.0, 0.4: 0.995},
        "closed_book": {0.1: 0.98, 0.2: 0.9, 0.3: 0.8, 0.4: 0.6},
    },
    ("wanda", "2:4"): {"open_book": {0.5: 0.7}, "closed_book": {0.5: 0.2}},
}


def _records(dense=DENSE, curves=CURVES):
    records = []
    for setting, metrics in dense.items():
        key = {"method": "dense", "pattern": "dense", "sparsity": 0.0, "setting": setting}
        records.append({"key": key, "metrics": {**metrics, "num_questions": 8}})
    for (method, pattern), settings in curves.items():
        for setting, points in settings.items():
            for sparsity, normalised in points.items():
                metrics = {name: value * normalised for name, value in dense[setting].items()}
                key = {"method": method, "pattern": pattern, "sparsity": sparsity, "setting": setting}
                records.append({"key": key, "metrics": {**metrics, "num_questions": 8}})
    return records


def test_normalised_scores_and_tolerance_per_setting():
    summary = summarize(_records(), settings=["open_book", "closed_book"])
    assert summary["metrics"] == ["exact_match", "f1"] and summary["threshold"] == 0.99
    magnitude = summary["groups"]["magnitude"]
    open_curve = magnitude["curves"]["open_book"]
    assert [p["sparsity"] for p in open_curve] == [0.0, 0.1, 0.2, 0.3, 0.4]  # starts at the dense point
    assert open_curve[0]["normalized"] == {"exact_match": 1.0, "f1": 1.0}
    assert open_curve[3]["metrics"]["exact_match"] == pytest.approx(0.48)
    assert open_curve[3]["normalized"]["exact_match"] == pytest.approx(0.96)
    assert magnitude["tolerance"] == {"open_book": 0.2, "closed_book": 0.1}  # closed-book recovers at 0.3: no
    assert summary["groups"]["wanda"]["tolerance"] == {"open_book": 0.4, "closed_book": 0.0}
    assert summary["groups"]["wanda 2:4"]["tolerance"] == {"open_book": 0.0, "closed_book": 0.0}
    loose = summarize(_records(), threshold=0.95, metric="f1")
    assert loose["groups"]["magnitude"]["tolerance"]["open_book"] == 0.3


def test_summary_errors_and_undefined_normalisation():
    with pytest.raises(ValueError, match="no records"):
        summarize([])
    with pytest.raises(ValueError, match="metric='bleu'"):
        summarize(_records(), metric="bleu")
    no_dense = [r for r in _records() if not (r["key"]["method"] == "dense" and r["key"]["setting"] == "closed_book")]
    with pytest.raises(ValueError, match=r"no dense reference for setting\(s\) \['closed_book'\]"):
        summarize(no_dense)
    zero = {"open_book": {"exact_match": 0.0, "f1": 0.5}, "closed_book": {"exact_match": 0.0, "f1": 0.5}}
    summary = summarize(_records(dense=zero))
    point = summary["groups"]["magnitude"]["curves"]["open_book"][1]
    assert math.isnan(point["normalized"]["exact_match"]) and point["normalized"]["f1"] == pytest.approx(1.0)
    assert summary["groups"]["magnitude"]["tolerance"]["open_book"] is None  # undefined, not "tolerates nothing"


def test_table_and_all_results(tmp_path):
    summary = summarize(_records(), settings=["open_book", "closed_book"], setting_labels={"open_book": "open-book"})
    table = format_table(summary)
    lines = table.splitlines()
    assert lines[0].startswith("| method | sparsity | open-book EM | open-book EM/dense | open-book F1")
    assert "| dense | 0.00 | 0.500 | 1.000 | 0.800 | 1.000 | 0.250 | 1.000 | 0.400 | 1.000 |" in lines
    assert "| magnitude | 0.30 | 0.480 | 0.960 | 0.768 | 0.960 | 0.250 | 1.000 | 0.400 | 1.000 |" in lines
    assert "| wanda 2:4 | 0.50 | 0.350 | 0.700 | 0.560 | 0.700 | 0.050 | 0.200 | 0.080 | 0.200 |" in lines
    assert "stays >= 0.99" in table
    assert "| magnitude | 0.20 | 0.10 |" in lines  # the tolerance table

    results = all_results(summary, run={"wall_s": 1.0})
    assert results["tolerance_magnitude_open_book"] == 0.2
    assert results["tolerance_wanda_2:4_closed_book"] == 0.0
    assert results["dense_closed_book_exact_match"] == 0.25
    assert results["run"] == {"wall_s": 1.0}
    paths = write_report(
        tmp_path, summarize(_records(dense={**DENSE, "closed_book": {"exact_match": 0.0, "f1": 0.4}}))
    )
    written = json.loads(paths["all_results"].read_text())  # strict JSON: NaN became null
    assert written["summary"]["groups"]["magnitude"]["curves"]["closed_book"][1]["normalized"]["exact_match"] is None
    assert paths["table"].read_text().count("n/a") > 0


def test_undefined_tolerance_is_reported_as_undefined_with_its_reason(tmp_path):
    # closed-book: the dense model scores 0, so nothing normalises; wanda has no closed-book sparse point
    dense = {**DENSE, "closed_book": {"exact_match": 0.0, "f1": 0.4}}
    curves = {**CURVES, ("wanda", "unstructured"): {"open_book": CURVES[("wanda", "unstructured")]["open_book"]}}
    summary = summarize(_records(dense=dense, curves=curves), settings=["open_book", "closed_book"])
    magnitude, wanda = summary["groups"]["magnitude"], summary["groups"]["wanda"]
    assert magnitude["tolerance"] == {"open_book": 0.2, "closed_book": None}
    assert magnitude["tolerance_undefined"] == {"closed_book": "dense score 0"}
    assert wanda["tolerance"]["closed_book"] is None
    assert wanda["tolerance_undefined"] == {"closed_book": "no sparse points"}

    paths = write_report(tmp_path, summary)
    lines = paths["table"].read_text().splitlines()
    assert "| magnitude | 0.20 | n/a (dense score 0) |" in lines
    assert "| wanda | 0.40 | n/a (no sparse points) |" in lines
    written = json.loads(paths["all_results"].read_text())
    assert written["tolerance_magnitude_closed_book"] is None and written["tolerance_wanda_closed_book"] is None
    assert written["tolerance_magnitude_open_book"] == 0.2
    assert written["summary"]["groups"]["magnitude"]["tolerance_undefined"] == {"closed_book": "dense score 0"}
    plot_normalized_curves(summary, tmp_path / "figure.png")  # the legend says undefined too, without crashing


def test_figure_is_a_png_with_one_panel_per_method(tmp_path):
    import matplotlib.image

    summary = summarize(_records(), settings=["open_book", "closed_book"])
    path = plot_normalized_curves(summary, tmp_path / "figure.png", title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(path).shape
    assert width > 1.8 * height  # two panels side by side: magnitude, wanda (+ its 2:4 markers)
    zero = {"open_book": {"exact_match": 0.0, "f1": 0.5}, "closed_book": {"exact_match": 0.0, "f1": 0.5}}
    plot_normalized_curves(summarize(_records(dense=zero)), tmp_path / "undefined.png")  # NaN curves still plot
    assert (tmp_path / "undefined.png").stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figure.png", "undefined.png"]  # no temporary left
