"""Recipe arguments: dataclasses parsed by ``HfArgumentParser``, plus ``--config file.yaml``.

The YAML file holds option names (without ``--``) and values; options given on the command line override
it. An unknown key is an error that names it (and the closest valid name), never silently ignored.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CONFIG_HELP = (
    "YAML file of options (keys = option names without '--'); options on the command line override it. "
    "Unknown keys are an error."
)


class ConfigFileError(ValueError):
    """A --config file that cannot be used: missing, not a YAML mapping, or with unknown keys."""


def option_names(dataclass_types: Sequence[type]) -> list[str]:
    return [field.name for cls in dataclass_types for field in dataclasses.fields(cls) if field.init]


def load_config_file(path: str | Path, valid_keys: Sequence[str]) -> dict[str, Any]:
    """Read a YAML mapping of options; raise ConfigFileError naming unknown keys."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigFileError(f"--config {str(path)!r}: no such file")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigFileError(f"--config {str(path)!r} is not valid YAML: {error}") from error
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigFileError(
            f"--config {str(path)!r} must hold a mapping of option: value, got {type(values).__name__}"
        )
    unknown = [key for key in values if key not in valid_keys]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), valid_keys, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigFileError(
            f"--config {str(path)!r}: unknown key(s) {', '.join(hints)}; the valid keys are the options of --help"
        )
    return values


def parse_args(
    dataclass_types: Sequence[type], args: Sequence[str] | None = None, description: str | None = None
) -> tuple[Any, ...]:
    """Parse ``args`` (default ``sys.argv[1:]``) into one instance per dataclass type, honouring ``--config``."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(
        list(dataclass_types), description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=None, metavar="FILE.yaml", help=CONFIG_HELP)
    args = list(sys.argv[1:] if args is None else args)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, rest = pre.parse_known_args(args)
    if known.config is not None:
        parser.set_defaults(**load_config_file(known.config, option_names(dataclass_types)))
    if any(arg in ("-h", "--help") for arg in rest):
        parser.parse_args(["--help"])  # prints the help (with --config) and exits
    outputs = parser.parse_args_into_dataclasses(args=rest)
    return tuple(outputs[: len(dataclass_types)])  # the last output is the namespace holding `config`
