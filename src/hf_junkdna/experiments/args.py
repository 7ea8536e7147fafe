"""Recipe arguments: dataclasses parsed by ``HfArgumentParser``, plus ``--config file.yaml``.

The YAML file holds option names (without ``--``) and values; options given on the command line override
it. An unknown key is an error that names it (and the closest valid name), never silently ignored. Every
value is converted and checked as the command line would do it (type, choices; a single value for a list
option is a one-element list), so a bad value is an error naming the key and the file before anything loads.
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


def convert_config_values(parser: argparse.ArgumentParser, values: dict[str, Any], path: str | Path) -> dict:
    """``values`` converted with each option's own type and checked against its choices, as argparse does for
    the command line (argparse converts only string defaults, so YAML values would otherwise pass unchecked).

    A list option takes a YAML list or a single value (a one-element list); ``null`` is accepted only where the
    option's default is None. Raises ConfigFileError naming the key and the file.
    """
    actions = {action.dest: action for action in parser._actions}
    converted = {}
    for key, value in values.items():
        action = actions[key]
        where = f"--config {str(path)!r}: {key}"
        if value is None:
            if action.default is not None:
                raise ConfigFileError(f"{where}: null, but the option needs a value (default {action.default!r})")
            converted[key] = None
        elif action.nargs in ("+", "*"):
            items = value if isinstance(value, list) else [value]
            if not items and action.nargs == "+":
                raise ConfigFileError(f"{where}: an empty list; give at least one value")
            converted[key] = [_convert_value(action, item, where) for item in items]
        else:
            converted[key] = _convert_value(action, value, where)
    return converted


def _convert_value(action: argparse.Action, value: Any, where: str) -> Any:
    from transformers.hf_argparser import string_to_bool

    kind = action.type or str
    if isinstance(value, (dict, list)) or value is None:
        raise ConfigFileError(f"{where}: expected a single value, got {type(value).__name__} {value!r}")
    if isinstance(value, bool):
        if kind is string_to_bool:
            return value
        raise ConfigFileError(
            f"{where}: got the boolean {value!r}, but the option takes a {getattr(kind, '__name__', 'value')}"
            + (f" (one of {list(action.choices)})" if action.choices else "")
            + "; YAML reads unquoted yes/no/true/false/on/off as booleans, so quote the value"
        )
    try:
        result = kind(str(value))
    except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
        name = "boolean" if kind is string_to_bool else getattr(kind, "__name__", "value")
        raise ConfigFileError(f"{where}: {value!r} is not a valid {name}") from error
    if action.choices is not None and result not in action.choices:
        raise ConfigFileError(f"{where}: {value!r} is not one of {list(action.choices)}")
    return result


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
        values = load_config_file(known.config, option_names(dataclass_types))
        parser.set_defaults(**convert_config_values(parser, values, known.config))
    if any(arg in ("-h", "--help") for arg in rest):
        parser.parse_args(["--help"])  # prints the help (with --config) and exits
    outputs = parser.parse_args_into_dataclasses(args=rest)
    return tuple(outputs[: len(dataclass_types)])  # the last output is the namespace holding `config`
