import json
import math
import os

import pytest

from hf_junkdna.experiments.store import (
    MANIFEST_FILE,
    RECORDS_FILE,
    CellKey,
    ResultsStore,
    StoreMismatchError,
    atomic_write_json,
    atomic_write_text,
    config_fingerprint,
)

CONFIG = {"model": "tiny", "num_questions": 4, "prompt": None}


def test_cell_key_identity_and_round_trip():
    key = CellKey("magnitude", "unstructured", 0.30000000000000004, "open_book")
    assert key == CellKey("magnitude", "unstructured", 0.3, "open_book")  # float noise does not split cells
    assert key.id == "magnitude/unstructured/0.3/open_book"
    assert CellKey.from_dict(json.loads(json.dumps(key.to_dict()))) == key


def test_fingerprint_ignores_key_order_and_sees_values():
    assert config_fingerprint({"a": 1, "b": [1, 2]}) == config_fingerprint({"b": [1, 2], "a": 1})
    assert config_fingerprint({"a": 1}) != config_fingerprint({"a": 2})


def test_records_persist_and_pending(tmp_path):
    store = ResultsStore(tmp_path, CONFIG)
    done = CellKey("dense", "dense", 0.0, "open_book")
    todo = CellKey("wanda", "unstructured", 0.5, "open_book")
    record = store.add(done, {"exact_match": 0.5, "f1": math.nan}, timing={"wall_s": 1.0})
    assert record["metrics"]["f1"] is None  # NaN is written as null (strict JSON)
    assert record["fingerprint"] == store.fingerprint

    reopened = ResultsStore(tmp_path, dict(reversed(list(CONFIG.items()))))
    assert done in reopened and todo not in reopened
    assert reopened.pending([done, todo]) == [todo]
    assert reopened.get(done)["metrics"]["exact_match"] == 0.5
    assert reopened.get(done)["timing"] == {"wall_s": 1.0}
    assert json.loads((tmp_path / MANIFEST_FILE).read_text())["config"] == CONFIG


def test_changed_config_is_refused_then_overwritten_on_request(tmp_path):
    store = ResultsStore(tmp_path, CONFIG)
    store.add(CellKey("dense", "dense", 0, "x"), {"exact_match": 1.0})
    changed = {**CONFIG, "num_questions": 8}
    with pytest.raises(StoreMismatchError, match=r"num_questions: 4 -> 8.*overwrite"):
        ResultsStore(tmp_path, changed)
    assert len(ResultsStore(tmp_path, CONFIG)) == 1  # the refusal did not touch the old results
    fresh = ResultsStore(tmp_path, changed, overwrite=True)
    assert len(fresh) == 0
    assert json.loads((tmp_path / MANIFEST_FILE).read_text())["config"]["num_questions"] == 8


def test_records_without_a_manifest_are_refused_then_discarded_on_request(tmp_path):
    ResultsStore(tmp_path, CONFIG).add(CellKey("dense", "dense", 0, "x"), {"exact_match": 1.0})
    (tmp_path / MANIFEST_FILE).unlink()
    with pytest.raises(StoreMismatchError, match="without its manifest"):
        ResultsStore(tmp_path, CONFIG)
    assert len(ResultsStore(tmp_path, CONFIG, overwrite=True)) == 0
    reopened = ResultsStore(tmp_path, CONFIG)  # a usable store from then on, without overwrite
    reopened.add(CellKey("dense", "dense", 0, "x"), {"exact_match": 0.5})
    assert ResultsStore(tmp_path, CONFIG).get(CellKey("dense", "dense", 0, "x"))["metrics"]["exact_match"] == 0.5


def test_partial_last_line_from_a_crash_is_dropped(tmp_path):
    store = ResultsStore(tmp_path, CONFIG)
    first = CellKey("dense", "dense", 0, "a")
    store.add(first, {"exact_match": 1.0})
    with open(tmp_path / RECORDS_FILE, "ab") as stream:  # a SIGKILL in the middle of the next append
        stream.write(b'{"key": {"method": "magnitude", "pattern": "unstru')
    reopened = ResultsStore(tmp_path, CONFIG)
    assert reopened.finished() == {first}
    second = CellKey("magnitude", "unstructured", 0.1, "a")
    reopened.add(second, {"exact_match": 0.9})
    lines = (tmp_path / RECORDS_FILE).read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line) for line in lines)
    assert ResultsStore(tmp_path, CONFIG).finished() == {first, second}


def test_readonly_store_reads_but_never_writes(tmp_path):
    with pytest.raises(StoreMismatchError, match="missing"):
        ResultsStore(tmp_path, CONFIG, readonly=True)
    ResultsStore(tmp_path, CONFIG).add(CellKey("dense", "dense", 0, "a"), {"exact_match": 1.0})
    reader = ResultsStore(tmp_path, CONFIG, readonly=True)
    assert len(reader) == 1
    with pytest.raises(RuntimeError, match="read-only"):
        reader.add(CellKey("dense", "dense", 0, "b"), {"exact_match": 1.0})


def test_foreign_or_corrupt_files_are_errors(tmp_path):
    (tmp_path / RECORDS_FILE).write_text('{"x": 1}\n')
    with pytest.raises(StoreMismatchError, match="without its manifest"):
        ResultsStore(tmp_path, CONFIG)
    (tmp_path / RECORDS_FILE).unlink()
    ResultsStore(tmp_path, CONFIG)
    (tmp_path / RECORDS_FILE).write_text('{"not a record": true}\n')
    with pytest.raises(StoreMismatchError, match="line 1 is not a cell record"):
        ResultsStore(tmp_path, CONFIG)
    (tmp_path / MANIFEST_FILE).write_text("[]")
    with pytest.raises(StoreMismatchError, match="not a hf_junkdna.sweep manifest"):
        ResultsStore(tmp_path, CONFIG)


def test_record_of_another_fingerprint_is_an_error(tmp_path):
    ResultsStore(tmp_path, CONFIG)
    record = {"key": CellKey("dense", "dense", 0, "a").to_dict(), "metrics": {}, "fingerprint": "0" * 16}
    (tmp_path / RECORDS_FILE).write_text(json.dumps(record) + "\n")
    with pytest.raises(StoreMismatchError, match="fingerprint"):
        ResultsStore(tmp_path, CONFIG)


def test_atomic_writes_replace_and_leave_no_temporary_files(tmp_path):
    target = tmp_path / "sub" / "out.json"
    atomic_write_json(target, {"a": math.inf})
    assert json.loads(target.read_text()) == {"a": None}
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # readable like any other file, not mkstemp's 0600
