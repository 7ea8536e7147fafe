"""SparsityConfig: what to prune, how much, and in which pattern. Validated on creation."""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from dataclasses import dataclass, field
from typing import Any

METHODS = ("magnitude", "wanda", "sparsegpt")
SCOPES = ("global", "layer")
_N_M_PATTERN = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


class SparsityConfigError(ValueError):
    """A SparsityConfig field has a value the pruning code cannot serve; the message names the field."""


def parse_n_m(pattern: str) -> tuple[int, int] | None:
    """``"2:4"`` -> ``(2, 4)``; ``"unstructured"`` -> ``None``. Raises on anything else."""
    if pattern == "unstructured":
        return None
    match = _N_M_PATTERN.match(str(pattern))
    if match is None:
        raise SparsityConfigError(f"pattern={pattern!r}: expected 'unstructured' or 'N:M' such as '2:4' or '4:8'")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise SparsityConfigError(
            f"pattern={pattern!r}: N:M keeps N of every M weights and needs 0 < N < M (got N={n}, M={m})"
        )
    return n, m


@dataclass
class SparsityConfig:
    """What to prune and how.

    ``sparsity`` is the fraction of prunable weights set to zero. For an N:M pattern it is fixed at
    ``1 - N/M`` (leave it unset, or give exactly that value). ``scope`` says over which set the
    ``round(sparsity * n)`` smallest scores are chosen: all prunable weights at once ("global") or each
    weight matrix on its own ("layer"; Wanda then compares within each output row, as in its paper).
    SparseGPT reconstructs layer by layer; with "global", one magnitude ranking over all layers sets how many
    zeros each layer gets, and SparseGPT chooses and reconstructs within each layer.
    ``include``/``ignore`` are regular expressions searched in parameter names (``re.search``); each must
    match at least one prunable weight, so a typo fails loudly instead of pruning nothing.
    """

    method: str = field(default="magnitude", metadata={"help": "Pruning criterion: magnitude, wanda or sparsegpt."})
    sparsity: float | None = field(
        default=None,
        metadata={"help": "Fraction of prunable weights to zero, in [0, 1). Default 0.5; N:M fixes it at 1 - N/M."},
    )
    pattern: str = field(default="unstructured", metadata={"help": "'unstructured' or 'N:M', e.g. '2:4'."})
    scope: str | None = field(
        default=None,
        metadata={
            "help": "'global' (one ranking over all prunable weights) or 'layer'. Default: the method's own "
            "(global for magnitude, layer for wanda and sparsegpt)."
        },
    )
    include: list[str] | None = field(
        default=None, metadata={"help": "Regexes of parameter names to prune (default: every prunable weight)."}
    )
    ignore: list[str] | None = field(default=None, metadata={"help": "Regexes of parameter names never to prune."})
    # calibration-based criteria
    num_calibration_samples: int = field(
        default=128, metadata={"help": "Calibration sequences used by wanda/sparsegpt."}
    )
    sparsegpt_block_size: int = field(default=128, metadata={"help": "Columns per SparseGPT reconstruction block."})
    sparsegpt_dampening: float = field(
        default=0.01, metadata={"help": "SparseGPT Hessian dampening, as a fraction of the mean diagonal."}
    )

    def __post_init__(self):
        if self.method not in METHODS:
            raise SparsityConfigError(f"method={self.method!r}: unknown pruning method; choose one of {METHODS}")
        n_m = parse_n_m(self.pattern)
        if n_m is not None:
            self.pattern = f"{n_m[0]}:{n_m[1]}"
            implied = 1.0 - n_m[0] / n_m[1]
            if self.sparsity is not None and abs(float(self.sparsity) - implied) > 1e-9:
                raise SparsityConfigError(
                    f"sparsity={self.sparsity!r} contradicts pattern={self.pattern!r}, which fixes sparsity at "
                    f"1 - N/M = {implied:g}; leave sparsity unset for N:M patterns"
                )
            self.sparsity = implied
        elif self.sparsity is None:
            self.sparsity = 0.5
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)):
            raise SparsityConfigError(f"sparsity={self.sparsity!r}: expected a number in [0, 1)")
        self.sparsity = float(self.sparsity)
        if not 0.0 <= self.sparsity < 1.0:
            raise SparsityConfigError(
                f"sparsity={self.sparsity!r} is outside [0, 1): sparsity 1 would remove every weight"
            )
        if self.scope is None:
            self.scope = "global" if self.method == "magnitude" else "layer"
        if self.scope not in SCOPES:
            raise SparsityConfigError(f"scope={self.scope!r}: choose one of {SCOPES}")
        for name in ("include", "ignore"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, str):
                value = [value]
                setattr(self, name, value)
            for expression in value:
                try:
                    re.compile(expression)
                except re.error as error:
                    raise SparsityConfigError(
                        f"{name}: {expression!r} is not a valid regular expression ({error})"
                    ) from error
        for name in ("num_calibration_samples", "sparsegpt_block_size"):
            value = getattr(self, name)
            # numbers.Integral: int and numpy integers; not bool, float or str
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
                raise SparsityConfigError(f"{name}={value!r}: expected a positive integer")
            setattr(self, name, int(value))
        dampening = self.sparsegpt_dampening
        if isinstance(dampening, bool) or not isinstance(dampening, numbers.Real) or not 0 < dampening < math.inf:
            raise SparsityConfigError(f"sparsegpt_dampening={dampening!r}: expected a finite number > 0")
        self.sparsegpt_dampening = float(dampening)

    @property
    def n_m(self) -> tuple[int, int] | None:
        return parse_n_m(self.pattern)

    @property
    def effective_scope(self) -> str:
        """The scope the selection really uses: N:M is always per group of M, whatever ``scope`` says."""
        return "n:m" if self.n_m is not None else self.scope

    @property
    def needs_calibration(self) -> bool:
        return self.method in ("wanda", "sparsegpt")

    def with_sparsity(self, sparsity: float) -> SparsityConfig:
        return dataclasses.replace(self, sparsity=sparsity)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SparsityConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SparsityConfigError(f"unknown SparsityConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**data)
