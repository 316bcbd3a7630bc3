"""tinystories curriculum-ab: steps-to-target math, a micro A/B, skip and resume on a rerun, one-line errors."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from tinystories import rundir
from tinystories.cli import run as cli_run
from tinystories.curriculum_ab import CurriculumABConfig, curriculum_ab, interval, steps_to
from tinystories.data.tokenize import TokenizeConfig, tokenize
from tinystories.errors import UserError
from tinystories.synth.lexicon import load_lexicon
from tinystories.synth.procedural import story_record

pytestmark = pytest.mark.usefixtures("one_thread")

MICRO = dict(
    arms=("random", "length"),
    seeds=(1, 2),
    shape="d_model=16;n_layer=1;n_head=2;n_kv_head=2;max_seq_len=32",
    batch_size=4,
    steps=20,
    eval_every=5,
    eval_tokens=1024,
    ckpt_interval=10,
    device="cpu",
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("abdata")
    lex = load_lexicon()
    (root / "stories.txt").write_text(
        "<|endoftext|>".join(story_record(0, i, lex)["story"] for i in range(150))
    )
    tokenize(
        TokenizeConfig(
            data=(str(root / "stories.txt"),),
            out=str(root / "d"),
            vocab_size=300,
            val_fraction=0.1,
            workers=1,
        )
    )
    return root / "d"


@pytest.fixture(scope="module")
def ab(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A finished micro A/B (2 arms x 2 seeds, 20 steps) and its result; tests that change it copy it first."""
    out = tmp_path_factory.mktemp("ab") / "ab"
    return out, curriculum_ab(CurriculumABConfig(data=str(dataset), out=str(out), **MICRO))


def val_losses(run: Path) -> list[tuple[int, float]]:
    rows = map(json.loads, (run / rundir.METRICS_FILE).read_text().splitlines())
    return [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_steps_to_interpolates_between_validations() -> None:
    steps = np.array([10.0, 20.0, 30.0])
    loss = np.array([5.0, 4.0, 3.0])
    assert steps_to(steps, loss, 3.5) == 25.0  # halfway from 4.0 at 20 to 3.0 at 30
    assert steps_to(steps, loss, 4.75) == 12.5
    assert steps_to(steps, loss, 4.0) == 20.0  # reached exactly at a validation
    assert steps_to(steps, loss, 5.5) == 10.0  # already below at the first validation
    assert steps_to(steps, loss, 2.9) == math.inf
    # The first crossing counts, even when the loss rises again after it.
    assert steps_to(steps, np.array([5.0, 3.0, 4.0]), 3.5) == 17.5
    assert interval(np.array([1.0, 2.0, math.inf])) == [1.0, math.inf]


def test_micro_ab_reports_every_arm(ab: tuple[Path, dict]) -> None:
    out, result = ab
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [
        "length-s1",
        "length-s2",
        "random-s1",
        "random-s2",
    ]
    saved = json.loads((out / "results.json").read_text())
    assert saved == result and saved["seeds"] == [1, 2]
    assert json.loads((out / "ab.json").read_text())["settings"]["steps"] == 20
    assert list(saved["arms"]) == ["random", "length"]
    finals = {a: [val_losses(out / f"{a}-s{s}")[-1] for s in (1, 2)] for a in ("random", "length")}
    assert all(step == 20 for rows in finals.values() for step, _ in rows)
    assert saved["target_val_loss"] == pytest.approx(np.mean([loss for _, loss in finals["random"]]))
    for arm, r in saved["arms"].items():
        assert r["final_step"] == 20 and len(r["steps_to_target_per_seed"]) == 2
        assert r["final_val_loss_per_seed"] == [loss for _, loss in finals[arm]]
        lo, hi = r["steps_ci95"]
        assert lo <= hi and r["final_ci95"][0] <= r["final_val_loss"] <= r["final_ci95"][1]
        assert 0.0 <= r["resamples_reaching_target"] <= 1.0
        assert r["steps_to_target"] == math.inf or 5 <= r["steps_to_target"] <= 20
    # The random arm's mean curve reaches its own final loss at the last step.
    assert saved["arms"]["random"]["steps_to_target"] == 20.0
    md = (out / "results.md").read_text()
    assert "| random | 20 |" in md and "| length |" in md
    # Seeds and curricula differ: the runs are not copies of each other.
    assert len({loss for rows in finals.values() for _, loss in rows}) == 4


def test_rerun_skips_finished_runs_and_resumes_cut_ones(
    ab: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ab"
    shutil.copytree(ab[0], out)
    before = {run: val_losses(out / run) for run in ("random-s1", "length-s1", "random-s2", "length-s2")}
    # A run cut short after its first checkpoint, and one killed before any.
    shutil.rmtree(rundir.checkpoint_dir(out / "length-s2", 20))
    shutil.rmtree(out / "random-s2" / rundir.CKPT_DIR)
    finished = {run: mtimes(out / run) for run in ("random-s1", "length-s1")}
    capsys.readouterr()
    result = curriculum_ab(CurriculumABConfig(out=str(out), **MICRO))  # --out alone: the saved settings
    err = capsys.readouterr().err
    assert "2 finished, 2 to do" in err
    assert "length seed 2: resumed to step 20" in err and "random seed 2: trained to step 20" in err
    assert "seed 1:" not in err
    assert {run: mtimes(out / run) for run in finished} == finished
    # The resumed and the restarted runs follow the same trajectory as the uninterrupted ones.
    assert {run: val_losses(out / run) for run in before} == before
    assert result == ab[1]
    assert rundir.latest_checkpoint(out / "length-s2") == rundir.checkpoint_dir(out / "length-s2", 20)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(arms=("random", "lenght")), "unknown arm 'lenght'"),
        (dict(arms=("random", "random-reverse")), "unknown arm 'random-reverse'"),
        (dict(arms=("length", "rare")), "must include random"),
        (dict(seeds=(1, 1)), "--seeds repeats"),
        (dict(shape="d_model=16,32;n_layer=1"), "--shape key 'd_model' has 2 values"),
        (dict(shape="bogus=1"), "--shape: unknown grid key 'bogus'"),
    ],
)
def test_bad_arms_and_shapes_fail_in_one_line(
    dataset: Path, tmp_path: Path, change: dict, message: str
) -> None:
    out = tmp_path / "ab"
    with pytest.raises(UserError, match=message) as e:
        curriculum_ab(CurriculumABConfig(data=str(dataset), out=str(out), **{**MICRO, **change}))
    assert "\n" not in str(e.value)
    assert not out.exists()  # refused before anything was written


def test_continuation_and_report_refusals(ab: tuple[Path, dict], dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"other settings \(--lr\)"):
        curriculum_ab(CurriculumABConfig(out=str(ab[0]), **{**MICRO, "lr": 1e-2}))
    with pytest.raises(UserError, match="--data is required"):
        curriculum_ab(CurriculumABConfig(out=str(tmp_path / "new"), **MICRO))
    out = tmp_path / "ab"
    shutil.copytree(ab[0], out)
    shutil.rmtree(out / "length-s2")
    with pytest.raises(UserError, match=r"1 of 4 runs .* not trained to step 20 \(length-s2\)") as e:
        curriculum_ab(CurriculumABConfig(out=str(out), report=True))
    assert "\n" not in str(e.value)


def test_cli(ab: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli_run(["curriculum-ab", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--arms ARMS [ARMS ...]" in text and "--seeds SEEDS [SEEDS ...]" in text and "--report" in text
    cli_run(["--help"])
    assert "curriculum-ab" in capsys.readouterr().out
    # Tuple options as space-separated values; --report with the saved settings.
    out = tmp_path / "ab"
    shutil.copytree(ab[0], out)
    result = cli_run(
        ["curriculum-ab", "--out", str(out), "--report", "--arms", "random", "length", "--seeds", "1", "2"]
    )
    assert result == ab[1]
    result = cli_run(["curriculum-ab", "--out", str(out), "--report", "--seeds", "2"])
    assert result["seeds"] == [2] and list(result["arms"]) == ["random", "length"]
