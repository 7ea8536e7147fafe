"""Experiment machinery: difficulty settings, sweeps, results, plots and QA helpers.

- :mod:`.difficulty` - task difficulty as data (open/closed book, data fraction, language, human-model gap)
- :mod:`.sweep` + :mod:`.ranking` - the sweep runner over (method x pattern x sparsity x setting) cells
- :mod:`.store` - the resumable, atomically written results store
- :mod:`.report` + :mod:`.plots` + :mod:`.tolerance` - normalised scores, tolerance, table, figure
- :mod:`.qa` - TriviaQA-style data, prompts, generation and scoring
- :mod:`.args` - recipe argument parsing (dataclasses + ``--config file.yaml``)
"""

from .difficulty import (
    PAPER_HUMAN_MODEL_GAP,
    DataFraction,
    DifficultyLevel,
    DifficultyMeasure,
    HumanModelGap,
    LanguageResource,
    OpenClosedBook,
    normalized_gap,
)
from .plots import plot_normalized_curves
from .ranking import NestedRanking, nested_ranking
from .report import format_table, summarize, write_report
from .store import CellKey, ResultsStore, StoreMismatchError
from .sweep import SweepRunner, WeightSnapshot, plan_cells
from .tolerance import DEFAULT_THRESHOLD, normalized_score, sparsity_tolerance

__all__ = [
    "PAPER_HUMAN_MODEL_GAP",
    "DataFraction",
    "DifficultyLevel",
    "DifficultyMeasure",
    "HumanModelGap",
    "LanguageResource",
    "OpenClosedBook",
    "normalized_gap",
    "plot_normalized_curves",
    "NestedRanking",
    "nested_ranking",
    "format_table",
    "summarize",
    "write_report",
    "CellKey",
    "ResultsStore",
    "StoreMismatchError",
    "SweepRunner",
    "WeightSnapshot",
    "plan_cells",
    "DEFAULT_THRESHOLD",
    "normalized_score",
    "sparsity_tolerance",
]
