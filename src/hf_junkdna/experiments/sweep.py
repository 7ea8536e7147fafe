"""Sweep runner: (method x pattern x sparsity x difficulty setting) cells, ranked once, resumable.

For every (method, pattern) the runner walks up the sparsity levels on ONE model object:

1. the dense weights are kept as CPU copies (:class:`WeightSnapshot`: only the prunable weights, which is
   all that pruning writes, SparseGPT's reconstruction included; the whole state when a ``prepare`` hook,
   e.g. fine-tuning, may change anything);
2. nesting methods (magnitude; Wanda with dense calibration statistics, the default) are ranked once from
   the dense weights (:mod:`.ranking`) and each level's masks come from that ranking, so masks nest
   across levels; SparseGPT (and Wanda with ``wanda_statistics="sequential"``) is re-pruned from the dense
   weights at each level with ``hf_junkdna.prune``;
3. every difficulty setting is evaluated on the same pruned model, each finished cell is appended to the
   :class:`~.store.ResultsStore`, and the dense weights are restored in place (bit-exact) before the next
   level: the model is never reloaded.

Cells already in the store are skipped (a group whose cells are all done is not even ranked), so a killed
sweep resumes where it stopped. The dense model is evaluated once per setting, as the cells
``("dense", "dense", 0.0, setting)``, and serves as every method's reference.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..config import SparsityConfig, parse_n_m
from ..masks import MaskSet
from ..pruning import prune
from ..pruning.api import prunable_weights_for
from .ranking import NESTED_METHODS, nested_ranking
from .store import CellKey, ResultsStore

logger = logging.getLogger(__name__)

DENSE = "dense"
WANDA_STATISTICS = ("dense", "sequential")

Evaluate = Callable[[nn.Module, CellKey], Mapping[str, Any]]
# prepare(model, masks, cell_without_setting) runs after pruning and before evaluation (e.g. fine-tuning);
# masks is None for the dense reference.
Prepare = Callable[[nn.Module, MaskSet | None, CellKey], None]


# ------------------------------------------------------------------------------------------------ grid
def pattern_levels(pattern: str, sparsities: Iterable[float]) -> list[float]:
    """The pruned levels of a pattern: the non-zero ``sparsities`` (sorted) for unstructured, ``1 - N/M`` for N:M."""
    n_m = parse_n_m(pattern)
    if n_m is not None:
        return [round(1.0 - n_m[0] / n_m[1], 6)]
    return sorted({round(float(sparsity), 6) for sparsity in sparsities if float(sparsity) != 0.0})


def cell_config(options: Mapping[str, Any] | None, method: str, pattern: str) -> SparsityConfig:
    """The ``SparsityConfig`` of a (method, pattern) group; ``options`` are its other fields (scope, include,
    ignore, num_calibration_samples, sparsegpt_*; scope None = the method's own default)."""
    fields = dict(options or {})
    for reserved in ("method", "pattern", "sparsity"):
        if reserved in fields:
            raise ValueError(f"sparsity options: {reserved!r} is set by the sweep grid, not by the options")
    return SparsityConfig.from_dict({**fields, "method": method, "pattern": pattern})


def plan_cells(
    methods: Sequence[str],
    patterns: Sequence[str],
    sparsities: Sequence[float],
    settings: Sequence[str],
    options: Mapping[str, Any] | None = None,
) -> list[CellKey]:
    """Every cell of the sweep, dense references first; each (method, pattern, level) is validated by building its
    ``SparsityConfig`` (so sparsity 1.0, an unknown method or a malformed pattern fail here, before any work)."""
    for name, values in (("methods", methods), ("patterns", patterns), ("sparsities", sparsities)):
        if not values:
            raise ValueError(f"{name} is empty: give at least one value")
    if not settings:
        raise ValueError("settings is empty: give at least one difficulty setting")
    for sparsity in sparsities:
        if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsities: {sparsity!r} is outside [0, 1) (sparsity 1 would remove every weight)")
    cells = [CellKey(DENSE, DENSE, 0.0, setting) for setting in settings]
    for method in methods:
        if method == DENSE:
            raise ValueError(f"methods: {DENSE!r} is the reference every sweep evaluates; list pruning methods only")
        for pattern in patterns:
            config = cell_config(options, method, pattern)
            for level in pattern_levels(config.pattern, sparsities):
                config.with_sparsity(level)  # raises a SparsityConfigError naming the bad value
                cells.extend(CellKey(method, config.pattern, level, setting) for setting in settings)
    return list(dict.fromkeys(cells))


# -------------------------------------------------------------------------------------------- snapshot
class WeightSnapshot:
    """CPU copies of named parameters (``names=None``: every parameter and buffer), restored in place, bit-exact."""

    @torch.no_grad()
    def __init__(self, model: nn.Module, names: Iterable[str] | None = None):
        if names is None:
            self.tensors = {name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()}
            self.full = True
        else:
            parameters = dict(model.named_parameters())
            missing = [name for name in names if name not in parameters]
            if missing:
                raise KeyError(f"no parameter named {missing[0]!r} in the model")
            self.tensors = {name: parameters[name].detach().to("cpu", copy=True) for name in names}
            self.full = False

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def nbytes(self) -> int:
        return sum(tensor.numel() * tensor.element_size() for tensor in self.tensors.values())

    @torch.no_grad()
    def restore(self, model: nn.Module) -> None:
        if self.full:
            live = model.state_dict(keep_vars=True)
        else:
            live = dict(model.named_parameters())
        for name, saved in self.tensors.items():
            live[name].data.copy_(saved)


# ---------------------------------------------------------------------------------------------- runner
def _elapsed(start: tuple[float, float]) -> dict[str, float]:
    return {"wall_s": round(time.perf_counter() - start[0], 3), "cpu_s": round(time.process_time() - start[1], 3)}


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


class SweepRunner:
    """Runs the cells of a sweep on one model, recording each finished cell in ``store``.

    ``evaluate(model, cell)`` returns a metrics dict for ``cell.setting`` on the model as it is now; in a distributed run it must
    be called on every process (it shards and gathers itself) and return the same metrics everywhere. Only the
    main process (``is_main_process``) writes to the store; the others keep their records in memory.
    ``sparsity_options`` are the other ``SparsityConfig`` fields (scope, include/ignore...), shared by every
    group. ``calibration_data`` is needed for Wanda and SparseGPT. ``wanda_statistics``: "dense" (default) takes Wanda's
    input norms once from the dense model, so one ranking serves every level and masks nest; "sequential" re-prunes
    per level with ``prune`` (each block calibrated on the pruned blocks before it, as in the Wanda paper).
    """

    def __init__(
        self,
        model: nn.Module,
        store: ResultsStore,
        evaluate: Evaluate,
        *,
        sparsity_options: Mapping[str, Any] | None = None,
        calibration_data: Any = None,
        wanda_statistics: str = "dense",
        prepare: Prepare | None = None,
        apply_masks: bool = True,
        is_main_process: bool = True,
        progress: bool = True,
    ):
        if wanda_statistics not in WANDA_STATISTICS:
            raise ValueError(f"wanda_statistics={wanda_statistics!r}: choose one of {WANDA_STATISTICS}")
        self.model = model
        self.store = store
        self.evaluate = evaluate
        self.sparsity_options = dict(sparsity_options or {})
        self.calibration_data = calibration_data
        self.wanda_statistics = wanda_statistics
        self.prepare = prepare
        self.apply_masks = apply_masks
        self.is_main_process = is_main_process
        self.progress = progress
        self.evaluations = 0  # evaluate() calls made by this runner (tests and logs use it)

    def _nests(self, method: str) -> bool:
        return method in NESTED_METHODS and not (method == "wanda" and self.wanda_statistics == "sequential")

    def _groups(self, cells: Sequence[CellKey]) -> dict[tuple[str, str], dict[float, list[CellKey]]]:
        groups: dict[tuple[str, str], dict[float, list[CellKey]]] = {}
        for cell in cells:
            groups.setdefault((cell.method, cell.pattern), {}).setdefault(cell.sparsity, []).append(cell)
        return {group: dict(sorted(levels.items())) for group, levels in groups.items()}

    def run(self, cells: Sequence[CellKey]) -> list[dict[str, Any]]:
        """Evaluate the unfinished ``cells``; returns the records of all ``cells`` (finished before or now)."""
        pending = self.store.pending(cells)
        finished = len(cells) - len(pending)
        if finished:
            logger.info("%d of %d cells already finished in %s; resuming", finished, len(cells), self.store.directory)
        fresh: dict[CellKey, dict[str, Any]] = {}
        if pending:
            fresh = self._run_pending(pending)
        return [self.store.get(cell) or fresh[cell] for cell in cells]

    def _check_groups(self, groups) -> tuple[dict, dict, WeightSnapshot]:
        """Validate every (method, pattern) against the model before any work (an N:M pattern whose M does not
        divide a layer, missing calibration data...) and take the dense snapshot."""
        configs = {group: cell_config(self.sparsity_options, *group) for group in groups if group[0] != DENSE}
        weights = {group: prunable_weights_for(self.model, config) for group, config in configs.items()}
        for (method, _), config in configs.items():
            if config.needs_calibration and self.calibration_data is None:
                raise ValueError(f"calibration_data: method={method!r} needs calibration data")
            if not self.apply_masks and not self._nests(method):
                raise ValueError(
                    f"apply_masks=False: method={method!r} writes the weights while it prunes, so it cannot leave "
                    f"them dense; use a nesting method {NESTED_METHODS}"
                )
        names = list(dict.fromkeys(weight.name for group in weights.values() for weight in group))
        snapshot = WeightSnapshot(self.model, None if self.prepare is not None else names)
        logger.info("dense snapshot: %d tensors, %.1f MB on the CPU", len(snapshot.tensors), snapshot.nbytes() / 2**20)
        return configs, weights, snapshot

    def _ranking(self, group, config, weights, snapshot):
        if not self._nests(group[0]):
            return None, {"wall_s": 0.0, "cpu_s": 0.0}
        start = _clock()
        ranking = nested_ranking(self.model, weights, config, self.calibration_data, snapshot)
        elapsed = _elapsed(start)
        logger.info("%s/%s: ranked once in %.1f s", *group, elapsed["wall_s"])
        return ranking, elapsed

    def _prune_level(self, config: SparsityConfig, ranking, level: float) -> MaskSet:
        """Prune the (dense) model to ``level``: from the ranking, or with ``prune`` from the dense weights."""
        if ranking is not None:
            masks = ranking.masks_at(level)
            if self.apply_masks:
                masks.apply_to(self.model)
            return masks
        return prune(self.model, config.with_sparsity(level), self.calibration_data)

    def _run_pending(self, pending: Sequence[CellKey]) -> dict[CellKey, dict[str, Any]]:
        groups = self._groups(pending)
        configs, weights, snapshot = self._check_groups(groups)
        records: dict[CellKey, dict[str, Any]] = {}
        bar = _progress_bar(len(pending), enabled=self.progress and self.is_main_process)
        try:
            for group, levels in groups.items():
                if group[0] == DENSE:
                    for cells in levels.values():
                        try:
                            self._evaluate_level(cells, None, {"wall_s": 0.0, "cpu_s": 0.0}, records, bar)
                        finally:
                            snapshot.restore(self.model)  # a prepare hook may have trained it
                    continue
                ranking, rank_time = self._ranking(group, configs[group], weights[group], snapshot)
                for level, cells in levels.items():
                    start = _clock()
                    masks = self._prune_level(configs[group], ranking, level)
                    prune_time = {**_elapsed(start), "ranking": rank_time}
                    try:
                        self._evaluate_level(cells, masks, prune_time, records, bar)
                    finally:
                        snapshot.restore(self.model)
        finally:
            bar.close()
            snapshot.restore(self.model)
        return records

    @contextmanager
    def pruned(self, method: str, pattern: str, sparsity: float) -> Iterator[MaskSet | None]:
        """The model as one level of the sweep evaluated it (pruned, then ``prepare``d), dense again on exit.

        For saving or pushing a checkpoint after the sweep; yields the masks (None for the dense reference).
        In a distributed run, enter it on every process (``prepare`` may train with all of them).
        """
        group = (method, pattern)
        configs, weights, snapshot = self._check_groups([group])
        try:
            masks = None
            if method != DENSE:
                ranking, _ = self._ranking(group, configs[group], weights[group], snapshot)
                masks = self._prune_level(configs[group], ranking, sparsity)
            if self.prepare is not None:
                self.prepare(self.model, masks, CellKey(method, pattern, sparsity, ""))
            yield masks
        finally:
            snapshot.restore(self.model)

    def _evaluate_level(self, cells, masks, prune_time, records, bar) -> None:
        if self.prepare is not None:
            start = _clock()
            self.prepare(self.model, masks, CellKey(cells[0].method, cells[0].pattern, cells[0].sparsity, ""))
            prune_time = {**prune_time, "prepare": _elapsed(start)}
        achieved = masks.sparsity() if masks is not None else 0.0
        for cell in cells:
            start = _clock()
            metrics = dict(self.evaluate(self.model, cell))
            self.evaluations += 1
            timing = {"prune": prune_time, "evaluate": _elapsed(start)}
            extra = {"achieved_sparsity": achieved, "timing": timing}
            if self.is_main_process:
                records[cell] = self.store.add(cell, metrics, **extra)
            else:
                records[cell] = {"key": cell.to_dict(), "id": cell.id, "metrics": metrics, **extra}
            summary = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))
            logger.info("%s: %s (evaluated in %.1f s)", cell.id, summary, timing["evaluate"]["wall_s"])
            bar.update(1)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="sweep cells", unit="cell", dynamic_ncols=True)
