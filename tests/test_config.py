"""Config dataclasses: field docs, parsing of counts and durations, TOML round trip, CLI errors."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tinystories.cli import main, run
from tinystories.config import (
    OPERATIONAL,
    add_options,
    build,
    field_docs,
    from_toml,
    operational_fields,
    options_from,
    parse_count,
    parse_duration,
    result_fields,
    to_toml,
)
from tinystories.errors import UserError


@dataclass
class Example:
    steps: int = 10
    """How many steps
    to take."""
    name: str | None = None
    """A name."""
    budget: float | None = field(default=None, metadata={"parse": parse_duration})
    """Wall-clock budget."""
    windows: tuple[int | None, ...] = (None, 256)
    """Per-layer windows."""
    fast: bool = True
    """Go fast."""


def test_field_docs_are_read_from_source() -> None:
    docs = field_docs(Example)
    assert docs["steps"] == "How many steps to take."
    assert docs["fast"] == "Go fast."


@pytest.mark.parametrize(
    ("text", "value"),
    [("500", 500), ("20M", 20_000_000), ("1.5k", 1500), ("1e6", 1_000_000), ("4_096", 4096), (7, 7)],
)
def test_parse_count(text: str, value: int) -> None:
    assert parse_count(text) == value


@pytest.mark.parametrize("bad", ["", "ten", "1.5", "3x", "-4"])
def test_parse_count_rejects(bad: str) -> None:
    with pytest.raises(UserError):
        parse_count(bad)


@pytest.mark.parametrize(("text", "seconds"), [("90", 90.0), ("90s", 90.0), ("10m", 600.0), ("1h30m", 5400.0)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_parse_duration_rejects() -> None:
    with pytest.raises(UserError):
        parse_duration("10 minutes")


def test_toml_round_trip_keeps_none_in_lists() -> None:
    text = to_toml({"example": Example(name="x")})
    data = from_toml(text)["example"]
    assert data == {"steps": 10, "name": "x", "windows": [None, 256], "fast": True}
    assert build(Example, data) == Example(name="x")


def test_options_from_argparse() -> None:
    parser = argparse.ArgumentParser()
    add_options(parser, Example)
    ns = parser.parse_args(["--steps", "2k", "--budget", "10m", "--no-fast", "--windows", "none", "8"])
    cfg = build(Example, options_from(ns, Example))
    assert cfg == Example(steps=2000, budget=600.0, fast=False, windows=(None, 8))


def test_build_rejects_unknown_keys() -> None:
    with pytest.raises(UserError, match="unknown Example option"):
        build(Example, {"stepz": 3})


@dataclass
class Job:
    seed: int = 0
    """Changes results."""
    workers: int = field(default=1, metadata={"min": 1, **OPERATIONAL})
    """Pace only."""
    out: str | None = field(default=None, metadata={"required": True, **OPERATIONAL})
    """Where to write."""
    sizes: tuple[int, ...] = (1, 2)
    """Changes results too."""


def test_result_fields_follow_the_declarations() -> None:
    assert operational_fields(Job) == {"workers", "out"}
    job = Job(seed=3, workers=4, out="x")
    assert result_fields(job) == {"seed": 3, "sizes": [1, 2]}
    # A field added without metadata counts as result-changing.
    more = dataclasses.make_dataclass("More", [("temperature", float, 1.0)], bases=(Job,))
    assert "temperature" in result_fields(more())


def test_build_enforces_min_and_required() -> None:
    assert build(Job, {"out": "x", "workers": 2}).workers == 2
    with pytest.raises(UserError, match=r"^--workers must be at least 1 \(got 0\)$"):
        build(Job, {"out": "x", "workers": 0})
    with pytest.raises(UserError, match=r"^--out is required$"):
        build(Job, {})


def test_old_command_name_still_works_and_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run(["run", "--help"])
    assert exit_info.value.code == 0
    captured = capsys.readouterr()
    assert "deprecated; use `tinystories pipeline`" in captured.err
    assert "--out" in captured.out and "--run" in captured.out


def test_cli_unknown_command_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["frobnicate"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tinystories: error: unknown command") and "\n" not in err


def test_cli_top_level_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    run(["--help"])
    assert "tokenize" in capsys.readouterr().out


def test_every_command_has_working_help(capsys: pytest.CaptureFixture[str]) -> None:
    from tinystories.cli import COMMANDS

    for name in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            run([*name.split(), "--help"])
        assert exit_info.value.code == 0, name
        assert "--" in capsys.readouterr().out, name


def test_help_with_percent_does_not_crash(capsys: pytest.CaptureFixture[str]) -> None:
    @dataclasses.dataclass
    class Pct:
        share: float = 0.1
        """Share of stories held out (10% by default)."""

    parser = argparse.ArgumentParser()
    add_options(parser, Pct)
    parser.print_help()
    assert "(10% by default)" in capsys.readouterr().out


def test_atomic_files_get_the_mode_of_a_plain_open(tmp_path: Path) -> None:
    from tinystories.io import atomic_save, atomic_write_text, umask

    atomic_write_text(tmp_path / "a.txt", "x")
    atomic_save(tmp_path / "b.bin", lambda name: Path(name).write_bytes(b"y"))
    (tmp_path / "c.txt").write_text("z")
    want = (tmp_path / "c.txt").stat().st_mode & 0o777
    assert want == 0o666 & ~umask()
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == want
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == want


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    from tinystories.io import atomic_open, atomic_save

    target = tmp_path / "model.bin"
    target.write_bytes(b"old")

    def broken(name: str) -> None:
        Path(name).write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_save(target, broken)
    with pytest.raises(RuntimeError), atomic_open(target, "wb") as f:
        f.write(b"half")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]


def test_help_metavars_are_the_field_names(capsys: pytest.CaptureFixture[str]) -> None:
    """Override options (`--model-<field>`) read `--model-vocab-size VOCAB_SIZE`, not a dest mixing - and _."""
    with pytest.raises(SystemExit):
        run(["train", "--help"])
    text = capsys.readouterr().out
    assert "--model-vocab-size VOCAB_SIZE" in text
    assert "--model-windows WINDOWS [WINDOWS ...]" in text
    assert "--data DATA" in text and "--model-norm {layer,rms}" in text
    assert "MODEL-" not in text
