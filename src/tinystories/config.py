"""Config dataclasses: field docs, command-line options and TOML files.

Each component owns a dataclass whose fields carry a docstring (a string
literal right after the field). This module reads those docstrings for
`--help`, turns fields into argparse options, and writes/reads configs as TOML.
Integers accept size suffixes (`20M`, `1.5k`, `1e6`); a field with
`metadata={"parse": fn}` uses its own parser (e.g. durations like `10m`).

Field metadata also says, once, what the rest of the package needs to know
about a field:

- `"operational": True`: the field stops, paces, logs or places a job but does
  not change its results (a budget, an interval, a worker count, an output
  path). `result_fields` leaves such fields out, so keys of what a job computes
  (resume checks, caches, pipeline stage keys) follow the declaration; a new
  field is treated as result-changing unless it says otherwise.
- `"min": N`: the value, when set, must be at least N.
- `"required": True`: the value may not be None or empty.

`check` enforces `min` and `required`; `build` calls it.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import itertools
import re
import textwrap
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from tinystories.errors import UserError

T = TypeVar("T")

_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9, "t": 10**12}


def parse_count(text: str | int) -> int:
    """'20M' -> 20_000_000, '1.5k' -> 1500, '1e6' -> 1_000_000, '4_096' -> 4096."""
    if isinstance(text, int):
        return text
    s = str(text).strip().lower().replace("_", "")
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[0-9]+)?)([kmgbt]?)", s)
    if not m:
        raise UserError(f"not a count: {text!r} (use e.g. 500, 20M, 1.5k)")
    value = float(m.group(1)) * _SUFFIX[m.group(2)]
    if value != int(value):
        raise UserError(f"not a whole count: {text!r}")
    return int(value)


_DURATION = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | float) -> float:
    """'90' or '90s' -> 90.0 seconds, '10m' -> 600.0, '1.5h' -> 5400.0, '1h30m' -> 5400.0."""
    if isinstance(text, int | float):
        return float(text)
    s = str(text).strip().lower()
    if re.fullmatch(r"[0-9]*\.?[0-9]+", s):
        return float(s)
    parts = re.findall(r"([0-9]*\.?[0-9]+)([smhd])", s)
    if not parts or "".join(a + b for a, b in parts) != s:
        raise UserError(f"not a duration: {text!r} (use e.g. 90s, 10m, 1.5h)")
    return sum(float(a) * _DURATION[b] for a, b in parts)


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Map field name -> the docstring written under it in the class body."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
        for node, nxt in itertools.pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _resolved_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _converter(tp: Any, f: dataclasses.Field) -> Any:
    if "parse" in f.metadata:
        return f.metadata["parse"]
    if tp is int:
        return parse_count
    if tp is float:
        return float
    return str


def _none_or(conv: Any, text: str) -> Any:
    return None if text.lower() == "none" else conv(text)


def _wrap(conv: Any, name: str) -> Any:
    # argparse reports ValueError/TypeError nicely; UserError would escape as a traceback.
    def convert(text: str) -> Any:
        try:
            return conv(text)
        except UserError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid value for --{name}: {text!r}") from None

    convert.__name__ = name
    return convert


def add_options(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    prefix: str = "",
    skip: tuple[str, ...] = (),
    all_optional: bool = False,
) -> None:
    """Add one `--option` per field of dataclass `cls` (dest `prefix + field`).

    `all_optional=True` gives every option a default of None (unset), used for
    overrides on top of a preset.
    """
    docs = field_docs(cls)
    hints = _resolved_types(cls)
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init or f.metadata.get("cli") is False:
            continue
        tp, _ = _unwrap_optional(hints[f.name])
        flag = "--" + (prefix + f.name).replace("_", "-").replace(".", "-")
        default = None if all_optional else _default(f)
        help_ = docs.get(f.name, "")
        if not all_optional and default is not None:
            help_ += f" (default: {default})"
        # argparse treats `%` in help as a format directive.
        help_ = help_.replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": prefix + f.name, "default": default, "help": help_}
        origin = get_origin(tp)
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is Literal:
            kwargs["choices"] = list(get_args(tp))
        elif origin in (list, tuple):
            inner, nullable = _unwrap_optional(get_args(tp)[0] if get_args(tp) else str)
            conv = _converter(inner, f)
            if nullable:  # e.g. per-layer windows: `--windows none 256`
                conv = functools.partial(_none_or, conv)
            kwargs["nargs"] = "+"
            kwargs["type"] = _wrap(conv, f.name)
            if f.metadata.get("repeat"):  # `--run a --run b` as well as `--run a b`
                kwargs["action"] = "extend"
                kwargs["default"] = None
        else:
            kwargs["type"] = _wrap(_converter(tp, f), f.name)
        if "type" in kwargs:
            # argparse would derive it from dest, which mixes the prefix's dash with the field's underscores.
            kwargs["metavar"] = f.name.upper()
        for alias in f.metadata.get("aliases", ()):
            group.add_argument(alias, flag, **kwargs)
            break
        else:
            group.add_argument(flag, **kwargs)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def options_from(ns: argparse.Namespace, cls: type, *, prefix: str = "") -> dict[str, Any]:
    """The values argparse collected for `cls`'s fields, unset (None) ones left out."""
    out = {}
    for f in dataclasses.fields(cls):
        value = getattr(ns, prefix + f.name, None)
        if value is not None:
            out[f.name] = tuple(value) if isinstance(f.default, tuple) else value
    return out


OPERATIONAL = {"operational": True}
"""Metadata of a field that does not change results: `field(default=..., metadata=OPERATIONAL)`."""


def is_operational(f: dataclasses.Field) -> bool:
    """Whether the field is declared as not changing results."""
    return bool(f.metadata.get("operational"))


def operational_fields(cls: type) -> frozenset[str]:
    """Names of `cls`'s fields that do not change results."""
    return frozenset(f.name for f in dataclasses.fields(cls) if is_operational(f))


def result_fields(cfg: Any) -> dict[str, Any]:
    """`cfg`'s fields that decide its results (the operational ones left out), as plain values."""
    return {
        f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if not is_operational(f)
    }


def continued(cfg: T, saved: dict[str, Any], extendable: tuple[str, ...], what: str) -> T:
    """`cfg` continuing a folder whose result settings were `saved` (e.g. a sweep or an A/B folder).

    A result setting `cfg` leaves at its default takes the saved value; one given
    differently is refused in one line, as it would mix runs made differently.
    The `extendable` settings may change: they choose which runs there are, not
    how one is made.
    """
    given, defaults = result_fields(cfg), result_fields(type(cfg)())
    changed = [k for k, v in given.items() if k not in extendable and v not in (defaults[k], saved.get(k))]
    if changed:
        flags = ", ".join("--" + k.replace("_", "-") for k in changed)
        may = " and ".join("--" + k.replace("_", "-") for k in extendable)
        raise UserError(f"{what} was made with other settings ({flags}); continue it with --out alone "
                        f"({may} may change), or start a new --out")
    # JSON gives lists where the config holds tuples.
    kept = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()
            if k in given and not (k in extendable and given[k] != defaults[k])}
    return dataclasses.replace(cfg, **kept)  # type: ignore[type-var]  # cfg is a dataclass instance


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return list(value) if isinstance(value, tuple) else value


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check(cfg: Any) -> None:
    """Enforce the `min` and `required` declarations of `cfg`'s fields (UserError naming the option)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.metadata.get("required") and (value is None or (isinstance(value, str | tuple | list) and not value)):
            raise UserError(f"{_flag(f.name)} is required")
        low = f.metadata.get("min")
        if low is not None and value is not None and value < low:
            raise UserError(f"{_flag(f.name)} must be at least {low} (got {value})")


def build(cls: type[T], values: dict[str, Any]) -> T:
    """Construct `cls` from a dict, rejecting unknown keys and values its fields declare invalid."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]  # cls is a dataclass type
    unknown = sorted(set(values) - names)
    if unknown:
        raise UserError(f"unknown {cls.__name__} option(s): {', '.join(unknown)}")
    hints = _resolved_types(cls)
    fixed = {}
    for key, value in values.items():
        tp, _ = _unwrap_optional(hints[key])
        if get_origin(tp) is tuple and isinstance(value, list):
            value = tuple(value)
        fixed[key] = value
    cfg = cls(**fixed)
    check(cfg)
    return cfg


# --- TOML -------------------------------------------------------------------


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str | Path):
        s = str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{s}"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def to_toml(sections: dict[str, Any]) -> str:
    """Write {section: dataclass | dict} as TOML; None values are left out (TOML has no null).

    A None inside a list (e.g. a per-layer window of None) is written as the
    string "none" and read back by `from_toml` as None.
    """
    lines: list[str] = []
    for name, obj in sections.items():
        data = dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) and not isinstance(obj, type) else dict(obj)
        lines.append(f"[{name}]")
        for key, value in data.items():
            if value is None:
                continue
            if isinstance(value, list | tuple):
                value = ["none" if x is None else x for x in value]
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def from_toml(text: str) -> dict[str, dict[str, Any]]:
    """Read TOML written by `to_toml` ("none" in lists back to None)."""
    data = tomllib.loads(text)
    for section in data.values():
        if isinstance(section, dict):
            for key, value in section.items():
                if isinstance(value, list):
                    section[key] = [None if x == "none" else x for x in value]
    return data
