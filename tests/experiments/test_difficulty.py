import pytest

from hf_junkdna.experiments.difficulty import (
    CLOSED_BOOK,
    OPEN_BOOK,
    PAPER_HUMAN_MODEL_GAP,
    DataFraction,
    DifficultyLevel,
    DifficultyMeasure,
    HumanModelGap,
    LanguageResource,
    OpenClosedBook,
    normalized_gap,
    with_levels,
)

RECORDS = [
    {"question_id": "q1", "question": "Capital of France?", "answer": {"value": "Paris"}, "evidence": "Paris is."},
    {"question_id": "q2", "question": "Red planet?", "answer": {"value": "Mars"}, "evidence": "Mars is red."},
]


def test_open_book_is_easier_than_closed_book():
    measure = OpenClosedBook()
    assert measure.names == [OPEN_BOOK, CLOSED_BOOK]
    assert measure.rank(OPEN_BOOK) < measure.rank(CLOSED_BOOK)
    assert measure.level(CLOSED_BOOK).label == "closed-book"
    assert measure.applies_to == "eval"


def test_open_closed_book_build():
    measure = OpenClosedBook()
    closed = measure.build(CLOSED_BOOK, RECORDS)
    assert [r["evidence"] for r in closed] == [None, None]
    assert RECORDS[0]["evidence"] == "Paris is."  # copies, the input is untouched
    assert measure.build(OPEN_BOOK, RECORDS) == RECORDS
    with pytest.raises(ValueError, match=r"record 1 \(q2\) has no 'evidence' passage"):
        measure.build(OPEN_BOOK, [RECORDS[0], {**RECORDS[1], "evidence": "  "}])


def test_data_fraction_levels_and_nested_subsets():
    measure = DataFraction()
    assert [level.value for level in measure.levels] == [1.0, 0.7, 0.25, 0.1]  # easier (more data) first
    assert measure.names == ["data_100pct", "data_70pct", "data_25pct", "data_10pct"]
    assert measure.level("data_25pct").label == "25% data"
    assert measure.applies_to == "train"
    data = list(range(40))
    subsets = {name: measure.build(name, data) for name in measure.names}
    assert [len(subsets[name]) for name in measure.names] == [40, 28, 10, 4]
    for smaller, larger in zip(measure.names[1:], measure.names[:-1]):
        assert set(subsets[smaller]) <= set(subsets[larger])
    assert subsets["data_25pct"] == sorted(subsets["data_25pct"])  # original order kept
    assert measure.build("data_25pct", data) == subsets["data_25pct"]  # seeded: reproducible
    assert DataFraction(seed=1).build("data_25pct", data) != subsets["data_25pct"]
    assert len(DataFraction(fractions=(0.01,)).build("data_1pct", data)) == 1  # never empty


def test_data_fraction_rejects_bad_fractions_and_empty_data():
    with pytest.raises(ValueError, match="must be in"):
        DataFraction(fractions=(1.5,))
    with pytest.raises(ValueError, match="empty"):
        DataFraction().build("data_10pct", [])


def test_language_resource():
    measure = LanguageResource(majority=("de", "fr"), minority=("sw",), language_key="target")
    records = [{"target": "de"}, {"target": "sw"}, {"target": "fr"}, {"target": "xx"}]
    assert measure.names == ["majority", "minority"]
    assert measure.build("majority", records) == [{"target": "de"}, {"target": "fr"}]
    assert measure.build("minority", records) == [{"target": "sw"}]
    assert measure.level("majority").description == "de, fr"
    with pytest.raises(ValueError, match="no record"):
        measure.build("minority", [{"target": "de"}])
    with pytest.raises(ValueError, match="both majority"):
        LanguageResource()
    with pytest.raises(ValueError, match=r"\['de'\] are listed as both"):
        LanguageResource(majority=("de",), minority=("de",))


def test_human_model_gap_is_the_papers_table_1():
    assert PAPER_HUMAN_MODEL_GAP == {
        "SST-2": 1.64,
        "CoLA": 2.26,
        "QQP": -14.18,
        "STS-B": 0.54,
        "QNLI": -3.51,
        "RTE": 9.94,
        "WinoGrande": 16.91,
        "CSQA": 18.99,
    }
    measure = HumanModelGap()
    assert [measure.task(level) for level in measure.levels] == [
        "QQP",
        "QNLI",
        "STS-B",
        "SST-2",
        "CoLA",
        "RTE",
        "WinoGrande",
        "CSQA",
    ]
    assert measure.level("CSQA").value == 18.99
    assert measure.level("SST-2").name == "SST-2" and measure.level("QQP").label == "QQP (-14.18%)"
    assert measure.applies_to == "task"
    assert measure.build("RTE", {"RTE": "rte data", "CSQA": "csqa data"}) == "rte data"
    with pytest.raises(KeyError, match="no data for task 'CoLA'"):
        measure.build("CoLA", {"RTE": 1})


def test_normalized_gap_formula_and_from_scores():
    assert normalized_gap(human=90.0, model=81.0) == pytest.approx(0.1)
    assert normalized_gap(human=80.0, model=88.0) == pytest.approx(-0.1)  # the model beats people
    with pytest.raises(ValueError, match="human score is 0"):
        normalized_gap(0.0, 1.0)
    measure = HumanModelGap.from_scores({"easy": 90.0, "hard": 80.0}, {"easy": 89.1, "hard": 60.0})
    assert measure.names == ["easy", "hard"]
    assert measure.level("easy").value == pytest.approx(1.0) and measure.level("hard").value == pytest.approx(25.0)
    with pytest.raises(ValueError, match="not both"):
        HumanModelGap.from_scores({"a": 1.0}, {"b": 1.0})


def test_measure_interface_validation_and_selection():
    with pytest.raises(ValueError, match="repeats level name"):
        DifficultyMeasure("m", (DifficultyLevel("a"), DifficultyLevel("a")))
    with pytest.raises(ValueError, match="no levels"):
        DifficultyMeasure("m", ())
    with pytest.raises(ValueError, match="applies_to"):
        DifficultyMeasure("m", (DifficultyLevel("a"),), applies_to="other")
    with pytest.raises(ValueError, match="without '/'"):
        DifficultyLevel("a/b")
    with pytest.raises(NotImplementedError):
        DifficultyMeasure("m", (DifficultyLevel("a"),)).build("a", [])
    measure = OpenClosedBook()
    with pytest.raises(KeyError, match=r"no level 'half_book'.*\['open_book', 'closed_book'\]"):
        measure.select(["half_book"])
    assert [level.name for level in measure.select([CLOSED_BOOK, OPEN_BOOK])] == [OPEN_BOOK, CLOSED_BOOK]
    only_closed = with_levels(measure, [CLOSED_BOOK])
    assert only_closed.names == [CLOSED_BOOK] and isinstance(only_closed, OpenClosedBook)
    assert with_levels(DataFraction(), ["data_10pct"]).build("data_10pct", list(range(10))) == [
        DataFraction().build("data_10pct", list(range(10)))[0]
    ]
