"""A small explicit registry: criterion name -> class, filled where each criterion is defined."""

from __future__ import annotations

PRUNING_CRITERIA: dict[str, type] = {}


def register_criterion(cls: type) -> type:
    """Class decorator; the class's ``name`` must be a unique lower-case identifier."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or name != name.lower() or not name.isidentifier():
        raise ValueError(f"criterion {cls.__name__} needs a lower-case identifier as `name`, got {name!r}")
    if name in PRUNING_CRITERIA and PRUNING_CRITERIA[name] is not cls:
        raise ValueError(f"a pruning criterion named {name!r} is already registered ({PRUNING_CRITERIA[name]})")
    PRUNING_CRITERIA[name] = cls
    return cls


def get_criterion(name: str):
    """An instance of the criterion registered under ``name``."""
    if name not in PRUNING_CRITERIA:
        raise ValueError(f"method={name!r}: unknown pruning method; registered: {sorted(PRUNING_CRITERIA)}")
    return PRUNING_CRITERIA[name]()
