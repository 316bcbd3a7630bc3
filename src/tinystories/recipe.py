"""Recipes: TOML files with one section per component, each holding fields of that component's config.

Built-in recipes live in `tinystories/recipes/`; `tinystories pipeline` says
which sections it knows (`pipeline.SECTIONS`). Counts and durations may be
written as in the CLI (`"3M"`, `"10m"`).
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from tinystories.config import parse_count, to_toml
from tinystories.errors import UserError


@dataclass
class Recipe:
    name: str
    """Recipe name (its file name without .toml)."""
    text: str
    """The TOML as given."""
    sections: dict[str, dict[str, Any]]
    """Section name -> its fields, values coerced to the fields' types."""


def builtin_recipes() -> list[str]:
    """Names of the recipes shipped in tinystories/recipes."""
    folder = resources.files("tinystories") / "recipes"
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def _coerce(cls: type, section: str, values: dict[str, Any]) -> dict[str, Any]:
    # TOML gives strings for counts and durations ("3M", "10m"): parse them as the CLI would.
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = {}
    for key, value in values.items():
        if key not in fields:
            raise UserError(f"recipe [{section}] has no field {key!r} ({cls.__name__})")
        f = fields[key]
        if isinstance(value, str) and "parse" in f.metadata:
            value = f.metadata["parse"](value)
        elif isinstance(value, str) and hints[key] in (int, int | None):
            value = parse_count(value)
        out[key] = value
    return out


def _override_value(text: str) -> Any:
    # A TOML value (8e12, true, [1, 2], "x"); anything else is a bare string (openai, runs/x).
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict[str, Any], overrides: tuple[str, ...]) -> dict[str, Any]:
    """`data` with each SECTION.FIELD=VALUE of `overrides` set (a new section when it has none)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for item in overrides:
        key, eq, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not eq or not dot or not section or not name.strip():
            raise UserError(f"bad override {item!r}: write SECTION.FIELD=VALUE, e.g. sweep.flops=8e12")
        out.setdefault(section, {})
        if not isinstance(out[section], dict):
            raise UserError(f"bad override {item!r}: {section} is not a section")
        out[section][name.strip()] = _override_value(value.strip())
    return out


def read_recipe(spec: str, known: dict[str, type], owned: dict[str, tuple[str, ...]],
                overrides: tuple[str, ...] = ()) -> Recipe:
    """A built-in recipe by name, or a TOML file, whose sections are `known`'s config classes.

    Unknown sections and fields are errors, and so are the fields `owned` lists per section (the caller
    chooses them). `overrides` (SECTION.FIELD=VALUE) are set over the file's values, checked the same way;
    the recipe's text is then the merged recipe."""
    path = Path(spec)
    if spec.endswith(".toml") or path.is_file():
        if not path.is_file():
            raise UserError(f"no recipe file at {spec}")
        text, name = path.read_text(encoding="utf-8"), path.stem
    else:
        if spec not in builtin_recipes():
            raise UserError(f"unknown recipe {spec!r}; built-in: {', '.join(builtin_recipes())}, or a .toml file")
        text = (resources.files("tinystories") / "recipes" / f"{spec}.toml").read_text(encoding="utf-8")
        name = spec
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"recipe {spec} is not valid TOML: {e}") from None
    if overrides:
        data = apply_overrides(data, overrides)
    sections: dict[str, dict[str, Any]] = {}
    for key, value in data.items():
        if key not in known or not isinstance(value, dict):
            raise UserError(f"recipe {spec}: unknown section or key {key!r} (sections: {', '.join(known)})")
        chosen = sorted(set(value) & set(owned.get(key, ())))
        if chosen:
            raise UserError(f"recipe {spec}: [{key}] may not set {', '.join(chosen)}: the pipeline chooses it")
        sections[key] = _coerce(known[key], key, value)
    if overrides:
        settings = "\n".join(f"#   --set {o}" for o in overrides)
        text = f"# the recipe {spec} with\n{settings}\n\n" + to_toml(data)
    return Recipe(name=name, text=text, sections=sections)
