import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_gpt2, tiny_llama

from hf_junkdna import SparsityConfig, SparsityConfigError, prune
from hf_junkdna.experiments.ranking import nested_ranking
from hf_junkdna.experiments.store import RECORDS_FILE, CellKey, ResultsStore
from hf_junkdna.experiments.sweep import DENSE, SweepRunner, WeightSnapshot, pattern_levels, plan_cells
from hf_junkdna.pruning.api import prunable_weights_for

CALIBRATION = torch.randint(0, 128, (8, 16), generator=torch.Generator().manual_seed(0))
PROBE = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))


def _state(model):
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def _assert_same_state(model, state):
    current = model.state_dict()
    assert current.keys() == state.keys()
    for name, tensor in state.items():
        assert torch.equal(current[name], tensor), name


def _score(model, setting):
    with torch.no_grad():
        logits = model(PROBE).logits
    scale = 1.0 if setting == "easy" else 0.5
    return {"exact_match": float(logits.std()) * scale, "f1": float(logits.mean())}


# ------------------------------------------------------------------------------------------------ grid
def test_plan_cells_dense_first_and_nm_levels():
    cells = plan_cells(["magnitude", "wanda"], ["unstructured", "2:4"], [0.5, 0.0, 0.25], ["easy", "hard"])
    assert cells[:2] == [CellKey(DENSE, DENSE, 0.0, "easy"), CellKey(DENSE, DENSE, 0.0, "hard")]
    assert CellKey("magnitude", "unstructured", 0.25, "hard") in cells
    assert CellKey("wanda", "2:4", 0.5, "easy") in cells
    assert not any(c.method != DENSE and c.sparsity == 0 for c in cells)
    assert len(cells) == 2 + 2 * (2 + 1) * 2
    assert pattern_levels("4:8", [0.1, 0.9]) == [0.5]
    assert pattern_levels("unstructured", [0.3, 0.1, 0.0, 0.1]) == [0.1, 0.3]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sparsities": [0.0, 1.0]}, r"1\.0 is outside \[0, 1\)"),
        ({"sparsities": []}, "sparsities is empty"),
        ({"methods": ["prune_me"]}, "unknown pruning method"),
        ({"methods": ["dense"]}, "reference"),
        ({"patterns": ["5:4"]}, "0 < N < M"),
        ({"settings": []}, "settings is empty"),
    ],
)
def test_plan_cells_rejects_bad_grids(kwargs, message):
    grid = {"methods": ["magnitude"], "patterns": ["unstructured"], "sparsities": [0.5], "settings": ["a"], **kwargs}
    with pytest.raises(ValueError, match=message):
        plan_cells(grid["methods"], grid["patterns"], grid["sparsities"], grid["settings"])


# --------------------------------------------------------------------------------------------- ranking
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_magnitude_ranking_equals_prune_and_nests(scope):
    model = tiny_llama()
    config = SparsityConfig(method="magnitude", scope=scope)
    ranking = nested_ranking(model, prunable_weights_for(model, config), config)
    previous = None
    for sparsity in (0.1, 0.3, 0.5, 0.7):
        masks = ranking.masks_at(sparsity)
        expected = prune(tiny_llama(), config.with_sparsity(sparsity))
        assert masks == expected
        assert masks.num_zeros() == round(sparsity * masks.num_weights())
        if previous is not None:
            for name in masks:  # zeros only grow with sparsity
                assert not (masks.masks[name] & ~previous.masks[name]).any()
        previous = masks


def test_wanda_ranking_uses_dense_statistics():
    model = tiny_llama()
    # scope "global": prune() also takes its statistics from the dense model, so the masks are equal
    global_config = SparsityConfig(method="wanda", scope="global")
    ranking = nested_ranking(model, prunable_weights_for(model, global_config), global_config, CALIBRATION)
    for sparsity in (0.2, 0.6):
        assert ranking.masks_at(sparsity) == prune(tiny_llama(), global_config.with_sparsity(sparsity), CALIBRATION)
    # per layer: prune() calibrates sequentially, so only the first block (which sees dense inputs) must agree
    config = SparsityConfig(method="wanda")
    ranking = nested_ranking(model, prunable_weights_for(model, config), config, CALIBRATION)
    low, high = ranking.masks_at(0.3), ranking.masks_at(0.6)
    reference = prune(tiny_llama(), config.with_sparsity(0.6), CALIBRATION)
    first_block = [name for name in high if name.startswith("model.layers.0.")]
    assert first_block and all(torch.equal(high.masks[n], reference.masks[n]) for n in first_block)
    assert all(not (high.masks[n] & ~low.masks[n]).any() for n in high)  # nested
    _assert_same_state(model, _state(tiny_llama()))  # ranking never touches the model


def test_ranking_refuses_sparsegpt_and_wrong_nm_level():
    model = tiny_llama()
    config = SparsityConfig(method="sparsegpt")
    with pytest.raises(ValueError, match="no nested ranking"):
        nested_ranking(model, prunable_weights_for(model, config), config, CALIBRATION)
    nm = SparsityConfig(method="magnitude", pattern="2:4")
    ranking = nested_ranking(model, prunable_weights_for(model, nm), nm)
    assert ranking.masks_at(0.5).sparsity() == 0.5
    with pytest.raises(SparsityConfigError, match="contradicts"):
        ranking.masks_at(0.3)


# ---------------------------------------------------------------------------------------------- runner
def test_snapshot_restores_bit_exactly():
    model = tiny_gpt2()
    state = _state(model)
    snapshot = WeightSnapshot(model)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(0.5).add_(1.0)
    snapshot.restore(model)
    _assert_same_state(model, state)
    with pytest.raises(KeyError, match="no parameter named 'nope'"):
        WeightSnapshot(model, ["nope"])


def test_sweep_masks_nest_and_dense_weights_return_between_levels(tmp_path):
    model = tiny_llama()
    dense_state = _state(model)
    names = [w.name for w in prunable_weights_for(model, SparsityConfig())]
    seen = []

    def evaluate(model, cell):
        # every evaluation must see the dense weights times the level's mask, nothing else
        zeros = {name: model.get_parameter(name).detach().eq(0) for name in names}
        for name in names:
            kept = ~zeros[name]
            assert torch.equal(model.get_parameter(name)[kept], dense_state[name][kept])
        seen.append((cell, zeros))
        return _score(model, cell.setting)

    cells = plan_cells(["magnitude", "wanda"], ["unstructured"], [0.0, 0.2, 0.4, 0.6], ["easy", "hard"])
    store = ResultsStore(tmp_path, {"test": 1})
    runner = SweepRunner(model, store, evaluate, calibration_data=CALIBRATION, progress=False)
    records = runner.run(cells)
    assert runner.evaluations == len(cells) == len(records) == len(store)
    _assert_same_state(model, dense_state)
    for method in ("magnitude", "wanda"):
        levels = [(cell, zeros) for cell, zeros in seen if cell.method == method and cell.setting == "easy"]
        assert [cell.sparsity for cell, _ in levels] == [0.2, 0.4, 0.6]
        for (_, low), (_, high) in zip(levels, levels[1:]):
            assert all(not (low[name] & ~high[name]).any() for name in names)  # zeros of 0.2 stay zero at 0.4
    # both settings of a level saw the same pruned model
    by_cell = {cell: zeros for cell, zeros in seen}
    for cell, zeros in seen:
        twin = CellKey(cell.method, cell.pattern, cell.sparsity, "hard")
        assert all(torch.equal(zeros[n], by_cell[twin][n]) for n in names)
    record = store.get(CellKey("magnitude", "unstructured", 0.4, "easy"))
    assert record["achieved_sparsity"] == pytest.approx(0.4, abs=1e-4)  # round(0.4 * n) zeros
    assert {"prune", "evaluate"} <= set(record["timing"])


def test_sparsegpt_is_repruned_from_dense_at_each_level(tmp_path):
    model = tiny_llama()
    dense_state = _state(model)
    weights = {}

    def evaluate(model, cell):
        weights[cell] = {n: p.detach().clone() for n, p in model.named_parameters() if "layers" in n}
        return _score(model, cell.setting)

    cells = plan_cells(["sparsegpt"], ["unstructured", "2:4"], [0.3, 0.5], ["easy"])
    SweepRunner(model, ResultsStore(tmp_path, {}), evaluate, calibration_data=CALIBRATION, progress=False).run(cells)
    _assert_same_state(model, dense_state)
    for sparsity, pattern in ((0.3, "unstructured"), (0.5, "unstructured"), (0.5, "2:4")):
        reference = tiny_llama()
        config = SparsityConfig(method="sparsegpt", pattern=pattern)
        prune(reference, config if pattern != "unstructured" else config.with_sparsity(sparsity), CALIBRATION)
        seen = weights[CellKey("sparsegpt", pattern, sparsity, "easy")]
        assert all(torch.equal(seen[n], reference.get_parameter(n)) for n in seen)


def test_finished_cells_are_skipped_and_groups_not_reranked(tmp_path, monkeypatch):
    import hf_junkdna.experiments.sweep as sweep_module

    cells = plan_cells(["magnitude", "wanda"], ["unstructured"], [0.0, 0.5], ["easy", "hard"])
    store = ResultsStore(tmp_path, {"test": 1})
    evaluated = []

    def evaluate(model, cell):
        evaluated.append(cell)
        return _score(model, cell.setting)

    for cell in cells[:2] + [c for c in cells if c.method == "magnitude"]:  # dense + magnitude are done
        store.add(cell, {"exact_match": 1.0, "f1": 1.0})
    ranked = []
    real = sweep_module.nested_ranking
    monkeypatch.setattr(sweep_module, "nested_ranking", lambda *a, **k: ranked.append(a[2].method) or real(*a, **k))
    runner = SweepRunner(tiny_llama(), store, evaluate, calibration_data=CALIBRATION, progress=False)
    records = runner.run(cells)
    assert evaluated == [c for c in cells if c.method == "wanda"] and ranked == ["wanda"]
    assert [r["id"] for r in records] == [c.id for c in cells]
    assert SweepRunner(tiny_llama(), store, evaluate, progress=False).run(cells) and runner.evaluations == 2
    assert len(evaluated) == 2  # a finished sweep evaluates nothing


def test_failed_evaluation_records_nothing_and_restores_the_model(tmp_path):
    model = tiny_llama()
    dense_state = _state(model)

    def evaluate(model, cell):
        if cell.method == "magnitude" and cell.setting == "hard":
            raise RuntimeError("evaluation broke")
        return _score(model, cell.setting)

    store = ResultsStore(tmp_path, {})
    cells = plan_cells(["magnitude"], ["unstructured"], [0.5], ["easy", "hard"])
    with pytest.raises(RuntimeError, match="evaluation broke"):
        SweepRunner(model, store, evaluate, progress=False).run(cells)
    _assert_same_state(model, dense_state)
    assert {c.id for c in store.finished()} == {
        "dense/dense/0/easy",
        "dense/dense/0/hard",
        "magnitude/unstructured/0.5/easy",
    }


def test_bad_groups_fail_before_any_evaluation(tmp_path):
    calls = []
    model = tiny_llama(intermediate=36)  # down_proj has 36 inputs: 8 does not divide them
    cells = plan_cells(["magnitude"], ["4:8"], [0.5], ["easy"])
    with pytest.raises(SparsityConfigError, match="M=8 does not divide"):
        SweepRunner(model, ResultsStore(tmp_path / "a", {}), lambda m, c: calls.append(c), progress=False).run(cells)
    cells = plan_cells(["wanda"], ["unstructured"], [0.5], ["easy"])
    with pytest.raises(ValueError, match="calibration_data"):
        SweepRunner(tiny_llama(), ResultsStore(tmp_path / "b", {}), lambda m, c: calls.append(c), progress=False).run(
            cells
        )
    assert calls == []


# ------------------------------------------------------------------------------------------ kill/resume
CHILD = textwrap.dedent(
    """
    import sys, time, torch
    from tiny_models import tiny_llama
    from hf_junkdna.experiments.store import ResultsStore
    from hf_junkdna.experiments.sweep import SweepRunner, plan_cells

    def run(out, log, delay):
        probe = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))
        calibration = torch.randint(0, 128, (8, 16), generator=torch.Generator().manual_seed(0))

        def evaluate(model, cell):
            with torch.no_grad():
                logits = model(probe).logits
            time.sleep(float(delay))
            with open(log, "a") as stream:
                stream.write(cell.id + "\\n")
            return {"exact_match": float(logits.std()), "f1": float(logits.abs().mean())}

        cells = plan_cells(["magnitude", "wanda", "sparsegpt"], ["unstructured"], [0, 0.3, 0.6], ["easy", "hard"])
        SweepRunner(tiny_llama(), ResultsStore(out, {"child": 1}), evaluate, calibration_data=calibration,
                    progress=False).run(cells)

    if __name__ == "__main__":
        run(*sys.argv[1:])
    """
)
NUM_CELLS = 2 + 3 * 2 * 2


def _child(script, out, log, delay):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(script), str(out), str(log), str(delay)], env=env)


def _metrics(directory):
    lines = (Path(directory) / RECORDS_FILE).read_text().splitlines()
    return {json.loads(line)["id"]: json.loads(line)["metrics"] for line in lines}


def test_sigkill_then_resume_recomputes_only_unfinished_cells(tmp_path):
    import runpy

    script = tmp_path / "child.py"
    script.write_text(CHILD)
    out, log = tmp_path / "run", tmp_path / "evaluations.log"
    child = _child(script, out, log, delay=0.2)
    records = out / RECORDS_FILE
    deadline = time.time() + 120
    while time.time() < deadline and child.poll() is None:
        if records.exists() and len(records.read_text().splitlines()) >= 4:
            break
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    finished_at_kill = set(_metrics(out))
    assert 4 <= len(finished_at_kill) < NUM_CELLS  # killed in the middle

    log.write_text("")
    resumed = _child(script, out, log, delay=0.0)
    assert resumed.wait(timeout=300) == 0
    evaluated_after = log.read_text().splitlines()
    final = _metrics(out)
    assert len(final) == NUM_CELLS
    assert sorted(evaluated_after) == sorted(set(final) - finished_at_kill)  # only unfinished cells, once each

    runpy.run_path(str(script))["run"](tmp_path / "clean", tmp_path / "clean.log", 0.0)  # a clean run, in-process
    clean = _metrics(tmp_path / "clean")
    assert clean.keys() == final.keys()
    for cell, metrics in clean.items():  # equal up to float noise of another thread count
        assert final[cell] == pytest.approx(metrics, rel=1e-5), cell


def test_pruned_context_rebuilds_one_level_then_restores(tmp_path):
    model = tiny_llama()
    dense_state = _state(model)
    runner = SweepRunner(model, ResultsStore(tmp_path, {}), lambda m, c: {}, calibration_data=CALIBRATION)
    for method in ("magnitude", "sparsegpt"):
        reference = tiny_llama()
        expected = prune(reference, SparsityConfig(method=method, sparsity=0.4), CALIBRATION)
        with runner.pruned(method, "unstructured", 0.4) as masks:
            assert masks == expected
            _assert_same_state(model, _state(reference))
        _assert_same_state(model, dense_state)


def test_apply_masks_false_hands_masks_to_prepare_and_keeps_weights_dense(tmp_path):
    model = tiny_llama()
    dense_state = _state(model)
    prepared = []

    def prepare(model, masks, cell):
        _assert_same_state(model, dense_state)  # nothing zeroed: e.g. the "freeze" regime trains from here
        prepared.append((cell.method, cell.sparsity, None if masks is None else round(masks.sparsity(), 2)))

    cells = plan_cells(["magnitude", "wanda"], ["unstructured"], [0.0, 0.5], ["easy"])
    runner = SweepRunner(
        model, ResultsStore(tmp_path / "a", {}), lambda m, c: _score(m, c.setting), calibration_data=CALIBRATION,
        prepare=prepare, apply_masks=False, progress=False,
    )  # fmt: skip
    runner.run(cells)
    assert prepared == [("dense", 0.0, None), ("magnitude", 0.5, 0.5), ("wanda", 0.5, 0.5)]
    cells = plan_cells(["sparsegpt"], ["unstructured"], [0.5], ["easy"])
    runner = SweepRunner(model, ResultsStore(tmp_path / "b", {}), lambda m, c: {}, apply_masks=False,
                         calibration_data=CALIBRATION)  # fmt: skip
    with pytest.raises(ValueError, match="apply_masks=False: method='sparsegpt' writes the weights"):
        runner.run(cells)
