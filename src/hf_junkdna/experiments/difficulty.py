"""Task difficulty as data: each measure is a dataclass with named levels ordered from easier to harder.

The study varies difficulty four ways (../shared/DESIGN.md); each is one :class:`DifficultyMeasure`:

- :class:`OpenClosedBook` - question answering with the evidence passage (open-book, easier) or without it
  (closed-book, harder); builds each level's evaluation records.
- :class:`DataFraction` - fraction of the target-domain training data (100 / 70 / 25 / 10 %: less is
  harder); builds each level's training subset (nested: a smaller fraction is a subset of a larger one).
- :class:`LanguageResource` - majority (high-resource) vs minority (low-resource) languages in translation;
  builds each level's records by language.
- :class:`HumanModelGap` - tasks ordered by the normalised human-model gap ``(human - model) / human``
  (the paper's Table 1 by default); builds each level by picking that task's data.

A sweep uses the level names as its "settings"; reports and plots keep the measure's order and labels.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

APPLIES_TO = ("eval", "train", "task")


@dataclass(frozen=True)
class DifficultyLevel:
    """One level of a measure. ``name`` is an identifier (cell keys, file names), ``label`` is for people."""

    name: str
    label: str = ""
    value: float | None = None  # the measure's value at this level (a fraction of data, a gap in %, ...)
    description: str = ""

    def __post_init__(self):
        if not self.name or any(ch in self.name for ch in "/\\ \t\n"):
            raise ValueError(f"difficulty level name {self.name!r} must be non-empty, without '/' or white space")
        if not self.label:
            object.__setattr__(self, "label", self.name)


@dataclass(frozen=True)
class DifficultyMeasure:
    """A way of making a task harder: ``levels`` ordered from easier to harder.

    ``applies_to`` says what :meth:`build` produces per level: the evaluation set ("eval"), the training set
    ("train") or a whole task's data ("task").
    """

    name: str = ""
    levels: tuple[DifficultyLevel, ...] = ()
    applies_to: str = "eval"
    description: str = ""

    def __post_init__(self):
        if not self.name:
            raise ValueError("a difficulty measure needs a name")
        object.__setattr__(self, "levels", tuple(self.levels))
        if not self.levels:
            raise ValueError(f"difficulty measure {self.name!r} has no levels")
        names = [level.name for level in self.levels]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"difficulty measure {self.name!r} repeats level name(s) {duplicates}")
        if self.applies_to not in APPLIES_TO:
            raise ValueError(f"applies_to={self.applies_to!r}: choose one of {APPLIES_TO}")

    @property
    def names(self) -> list[str]:
        """Level names, easier first."""
        return [level.name for level in self.levels]

    def level(self, name: str | DifficultyLevel) -> DifficultyLevel:
        if isinstance(name, DifficultyLevel):
            name = name.name
        for level in self.levels:
            if level.name == name:
                return level
        raise KeyError(f"difficulty measure {self.name!r} has no level {name!r}; its levels: {self.names}")

    def rank(self, name: str | DifficultyLevel) -> int:
        """0 for the easiest level, increasing with difficulty."""
        return self.levels.index(self.level(name))

    def select(self, names: Sequence[str] | None) -> list[DifficultyLevel]:
        """The named levels (all when None), in the measure's order; unknown names raise naming the valid ones."""
        if names is None:
            return list(self.levels)
        wanted = {self.level(name).name for name in names}
        return [level for level in self.levels if level.name in wanted]

    def build(self, level: str | DifficultyLevel, data: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not build data for its levels")


# ---------------------------------------------------------------------------------------- open/closed book
OPEN_BOOK = "open_book"
CLOSED_BOOK = "closed_book"


@dataclass(frozen=True)
class OpenClosedBook(DifficultyMeasure):
    """QA with the evidence passage in the prompt (open-book, easier) or without it (closed-book, harder).

    ``build(level, records)`` returns copies of the records; closed-book copies have ``evidence`` set to None,
    open-book ones must carry a non-empty passage.
    """

    name: str = "open_closed_book"
    levels: tuple[DifficultyLevel, ...] = (
        DifficultyLevel(OPEN_BOOK, "open-book", description="the evidence passage is in the prompt"),
        DifficultyLevel(CLOSED_BOOK, "closed-book", description="the question alone: recall from the weights"),
    )
    applies_to: str = "eval"
    description: str = "TriviaQA with (open-book) and without (closed-book) the evidence passage"
    evidence_key: str = "evidence"

    def build(self, level: str | DifficultyLevel, data: Sequence[Mapping[str, Any]], **kwargs: Any) -> list[dict]:
        level = self.level(level)
        records = []
        for index, record in enumerate(data):
            record = dict(record)
            if level.name == CLOSED_BOOK:
                record[self.evidence_key] = None
            elif not str(record.get(self.evidence_key) or "").strip():
                raise ValueError(
                    f"record {index} ({record.get('question_id', '?')}) has no {self.evidence_key!r} passage, "
                    "which the open-book setting needs"
                )
            records.append(record)
        return records


# ------------------------------------------------------------------------------------------ data fraction
def _fraction_name(fraction: float) -> str:
    return f"data_{fraction * 100:g}pct"


@dataclass(frozen=True)
class DataFraction(DifficultyMeasure):
    """Fraction of the target-domain training data: the less data, the harder (100 / 70 / 25 / 10 % by default).

    ``build(level, records)`` returns a seeded random subset of ``round(fraction * n)`` records (at least one)
    in their original order; the subsets are nested (a smaller fraction's records are all in a larger one's).
    """

    name: str = "data_fraction"
    levels: tuple[DifficultyLevel, ...] = ()
    applies_to: str = "train"
    description: str = "fraction of the target-domain training data used for fine-tuning"
    fractions: tuple[float, ...] = (1.0, 0.7, 0.25, 0.1)
    seed: int = 0

    def __post_init__(self):
        fractions = tuple(float(fraction) for fraction in self.fractions)
        for fraction in fractions:
            if not 0.0 < fraction <= 1.0:
                raise ValueError(f"fractions: {fraction!r} must be in (0, 1]")
        object.__setattr__(self, "fractions", tuple(sorted(set(fractions), reverse=True)))
        if not self.levels:
            levels = tuple(
                DifficultyLevel(_fraction_name(fraction), f"{fraction * 100:g}% data", value=fraction)
                for fraction in self.fractions
            )
            object.__setattr__(self, "levels", levels)
        super().__post_init__()

    def build(self, level: str | DifficultyLevel, data: Sequence[Any], **kwargs: Any) -> list[Any]:
        level = self.level(level)
        data = list(data)
        if not data:
            raise ValueError("DataFraction.build: the training set is empty")
        keep = max(1, round(level.value * len(data)))
        order = random.Random(self.seed).sample(range(len(data)), len(data))
        return [data[index] for index in sorted(order[:keep])]


# --------------------------------------------------------------------------------------- language resource
MAJORITY = "majority"
MINORITY = "minority"


@dataclass(frozen=True)
class LanguageResource(DifficultyMeasure):
    """Majority (high-resource, easier) vs minority (low-resource, harder) languages, e.g. in translation.

    ``majority`` and ``minority`` are language codes; ``build(level, records)`` keeps the records whose
    ``language_key`` (e.g. the target language of a translation pair) is one of that level's languages.
    """

    name: str = "language_resource"
    levels: tuple[DifficultyLevel, ...] = ()
    applies_to: str = "eval"
    description: str = "majority (high-resource) vs minority (low-resource) languages"
    majority: tuple[str, ...] = ()
    minority: tuple[str, ...] = ()
    language_key: str = "language"

    def __post_init__(self):
        majority, minority = tuple(self.majority), tuple(self.minority)
        if not majority or not minority:
            raise ValueError("LanguageResource needs both majority=(...) and minority=(...) language codes")
        overlap = sorted(set(majority) & set(minority))
        if overlap:
            raise ValueError(f"languages {overlap} are listed as both majority and minority")
        object.__setattr__(self, "majority", majority)
        object.__setattr__(self, "minority", minority)
        if not self.levels:
            levels = (
                DifficultyLevel(MAJORITY, "majority languages", description=", ".join(majority)),
                DifficultyLevel(MINORITY, "minority languages", description=", ".join(minority)),
            )
            object.__setattr__(self, "levels", levels)
        super().__post_init__()

    def languages(self, level: str | DifficultyLevel) -> tuple[str, ...]:
        return self.majority if self.level(level).name == MAJORITY else self.minority

    def build(self, level: str | DifficultyLevel, data: Sequence[Mapping[str, Any]], **kwargs: Any) -> list[Any]:
        languages = set(self.languages(level))
        selected = [record for record in data if record.get(self.language_key) in languages]
        if not selected:
            raise ValueError(
                f"no record has {self.language_key!r} in {sorted(languages)} (level {self.level(level).name!r})"
            )
        return selected


# ---------------------------------------------------------------------------------------- human-model gap
# The paper's Table 1: normalised human-model gap (human - model) / human, in percent.
PAPER_HUMAN_MODEL_GAP = {
    "SST-2": 1.64,
    "CoLA": 2.26,
    "QQP": -14.18,
    "STS-B": 0.54,
    "QNLI": -3.51,
    "RTE": 9.94,
    "WinoGrande": 16.91,
    "CSQA": 18.99,
}


def normalized_gap(human: float, model: float) -> float:
    """``(human - model) / human``: how far the model falls short of people (negative: the model is better)."""
    if human == 0:
        raise ValueError("normalized_gap: the human score is 0, so the gap is undefined")
    return (human - model) / human


def _task_name(task: str) -> str:
    return task.replace(" ", "_").replace("/", "_")


@dataclass(frozen=True)
class HumanModelGap(DifficultyMeasure):
    """Tasks ordered by normalised human-model gap, smallest (easiest) first; ``gaps`` in percent.

    ``build(level, datasets)`` returns ``datasets[task]`` for the level's task.
    """

    name: str = "human_model_gap"
    levels: tuple[DifficultyLevel, ...] = ()
    applies_to: str = "task"
    description: str = "normalised human-model gap (human - model) / human, per task"
    gaps: Mapping[str, float] = field(default_factory=lambda: dict(PAPER_HUMAN_MODEL_GAP))

    def __post_init__(self):
        if not self.gaps:
            raise ValueError("HumanModelGap needs at least one task gap")
        gaps = tuple(sorted(((str(task), float(gap)) for task, gap in dict(self.gaps).items()), key=lambda t: t[1]))
        object.__setattr__(self, "gaps", dict(gaps))
        if not self.levels:
            levels = tuple(
                DifficultyLevel(_task_name(task), f"{task} ({gap:+.2f}%)", value=gap, description=task)
                for task, gap in gaps
            )
            object.__setattr__(self, "levels", levels)
        super().__post_init__()

    def __hash__(self) -> int:
        return hash((self.name, self.levels))

    @classmethod
    def from_scores(cls, human: Mapping[str, float], model: Mapping[str, float], **kwargs: Any) -> HumanModelGap:
        """Gaps (in percent) from per-task human and model scores, on the same scale for each task."""
        missing = sorted(set(human) ^ set(model))
        if missing:
            raise ValueError(f"tasks {missing} have a human score or a model score but not both")
        gaps = {task: 100.0 * normalized_gap(human[task], model[task]) for task in human}
        return cls(gaps=gaps, **kwargs)

    def task(self, level: str | DifficultyLevel) -> str:
        return self.level(level).description

    def build(self, level: str | DifficultyLevel, data: Mapping[str, Any], **kwargs: Any) -> Any:
        task = self.task(level)
        for key in (task, self.level(level).name):
            if key in data:
                return data[key]
        raise KeyError(f"no data for task {task!r}; given tasks: {sorted(data)}")


def with_levels(measure: DifficultyMeasure, names: Sequence[str]) -> DifficultyMeasure:
    """The same measure restricted to the named levels (kept in the measure's order)."""
    return replace(measure, levels=tuple(measure.select(names)))
