"""tinystories sweep: bad grids fail in one line; a micro sweep killed after its first point resumes, skipping it."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tinystories.errors import UserError
from tinystories.rundir import checkpoint_dir
from tinystories.sweep import SweepConfig, parse_grid, sweep

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tinystories", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sweepdata")
    subprocess.run(_cli("synth", "--backend", "procedural", "--n", "150", "--out", str(root / "c"), "--no-progress"),
                   env=_env(), check=True, capture_output=True)
    subprocess.run(_cli("tokenize", "--data", str(root / "c" / "stories.txt"), "--out", str(root / "d"),
                        "--vocab-size", "300", "--val-fraction", "0.1"), env=_env(), check=True, capture_output=True)
    return root / "d"


@pytest.mark.parametrize("grid, message", [
    ("d_model=32,64;bogus=1", "unknown grid key 'bogus'"),
    ("d_model=32;d_model=64", "given twice"),
    ("d_model", "bad grid part"),
    ("d_model=abc", "bad value"),
    ("vocab_size=256", "cannot vary vocab_size"),
])
def test_bad_grid_is_one_line(grid: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as e:
        parse_grid(grid)
    assert "\n" not in str(e.value)


def test_invalid_shape_and_budget_refused_before_training(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    with pytest.raises(UserError, match=r"d_model.*divisible"):
        sweep(SweepConfig(out=str(out), data=str(dataset), grid="d_model=30;n_head=4", tokens=1000))
    with pytest.raises(UserError, match="exactly one budget"):
        sweep(SweepConfig(out=str(out), data=str(dataset), grid="d_model=32", tokens=1000, flops=1e9))
    assert not (out / "points").exists()
    r = subprocess.run(_cli("sweep", "--out", str(out), "--data", str(dataset), "--grid", "d_model=32;oops=1",
                            "--tokens", "1k"), env=_env(), capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown grid key" in r.stderr


@pytest.mark.slow  # two subprocess sweeps: about a minute on 2 busy cores
@pytest.mark.timeout(240)
def test_killed_sweep_resumes_and_skips_finished_points(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    args = _cli("sweep", "--out", str(out), "--data", str(dataset),
                "--grid", "d_model=16;n_layer=1,2;n_head=2;n_kv_head=2;max_seq_len=32", "--tokens", "1k",
                "--batch-size", "4", "--checkpoints", "2", "--eval-stories", "4", "--real", "",
                "--probe-sets", "fact", "--probe-n", "0", "--device", "cpu")
    proc = subprocess.Popen(args, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    points = out / "points"
    first = points / "n_layer1-seed0" / "sweep" / "probes.json"
    deadline = time.monotonic() + 120
    while not first.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert first.is_file()
    marker = first.stat().st_mtime_ns
    r = subprocess.run(_cli("sweep", "--out", str(out)), env=_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "1 finished" in r.stderr or "2 finished" in r.stderr
    assert "n_layer1-seed0: train done" not in r.stderr  # the finished point was skipped
    assert first.stat().st_mtime_ns == marker
    # A continuation may not change the settings.
    r = subprocess.run(_cli("sweep", "--out", str(out), "--tokens", "8k"), env=_env(), capture_output=True, text=True)
    assert r.returncode == 2 and "other settings" in r.stderr

    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["point"] for r in rows] == ["n_layer1-seed0", "n_layer2-seed0"]
    for row in rows:
        run = points / row["point"]
        ckpts = sorted(int(p.name.split("_")[-1]) for p in (run / "ckpt").iterdir())
        state = json.loads((checkpoint_dir(run, ckpts[-1]) / "state.json").read_text())
        assert int(row["steps"]) == ckpts[-1] and int(row["tokens"]) == state["tokens"] >= 1000
        assert float(row["flops"]) == pytest.approx(float(row["flops_per_token"]) * int(row["tokens"]))
        assert int(row["params"]) == int(row["embedding_params"]) + int(row["non_embedding_params"])
        loss = json.loads((run / "eval" / "loss_val.json").read_text())
        assert float(row["val_loss"]) == pytest.approx(loss["per_story"]["loss"])
        probes = json.loads((run / "eval" / "probes.json").read_text())
        assert float(row["probes"]) == pytest.approx(probes["accuracy"])
        assert [float(row["probes_lo"]), float(row["probes_hi"])] == pytest.approx(probes["ci95"])
        assert len(probes["curve"]) == len(ckpts)  # every saved checkpoint scored
    assert int(rows[1]["non_embedding_params"]) > int(rows[0]["non_embedding_params"])


@pytest.mark.usefixtures("one_thread")
def test_rerun_skips_finished_points_and_report_draws_them(dataset: Path, tmp_path: Path, capsys) -> None:
    # In-process (the default suite's version of the kill test above): the second point loses its stage
    # records, as if killed before they were written; the re-run redoes only that point.
    out = tmp_path / "s"
    cfg = SweepConfig(out=str(out), data=str(dataset), grid="d_model=16;n_layer=1,2;n_head=2;n_kv_head=2;max_seq_len=32",
                      tokens=512, batch_size=4, checkpoints=2, eval_stories=4, real="", probe_sets="fact",
                      probe_n=0, device="cpu")
    sweep(cfg)
    first, second = out / "points" / "n_layer1-seed0", out / "points" / "n_layer2-seed0"
    before = {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file()}
    for stage in ("eval", "probes"):
        (second / "sweep" / f"{stage}.json").unlink()
    capsys.readouterr()
    result = sweep(SweepConfig(out=str(out)))
    err = capsys.readouterr().err
    assert result["trained"] == 1 and "1 finished, 1 to do" in err
    assert "n_layer1-seed0" not in err and "n_layer2-seed0: train" not in err and "n_layer2-seed0: eval done" in err
    assert {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file()} == before

    report = sweep(SweepConfig(out=str(out), report=True))
    assert report["finished"] == 2
    names = sorted(Path(p).name for p in report["plots"])
    assert names == ["emergence.png", "frontier.png", "scores_vs_flops.png", "scores_vs_params.png"]  # 1 varying axis
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(names) and "n_layer2-seed0" in html


MICRO = dict(grid="d_model=16;n_layer=1,2;n_head=2;n_kv_head=2;max_seq_len=32", tokens=512, batch_size=4,
             checkpoints=2, eval_stories=4, real="", probe_sets="fact", probe_n=0, device="cpu")


@pytest.mark.usefixtures("one_thread")
def test_more_seeds_extend_a_finished_sweep_and_other_changes_are_refused(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    sweep(SweepConfig(out=str(out), data=str(dataset), **MICRO))
    first = out / "points" / "n_layer1-seed0"
    before = {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file()}
    result = sweep(SweepConfig(out=str(out), seeds=2))
    assert result["trained"] == 2 and result["finished"] == 4  # only the two seed-1 points trained
    assert {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file()} == before
    spec = json.loads((out / "sweep.json").read_text())
    assert spec["settings"]["seeds"] == 2 and len(spec["points"]) == 4
    with open(out / "results.csv", newline="") as f:
        assert [r["seed"] for r in csv.DictReader(f)] == ["1337", "1338", "1337", "1338"]
    assert sweep(SweepConfig(out=str(out)))["trained"] == 0  # --out alone keeps the saved two seeds
    with pytest.raises(UserError, match=r"other settings \(--lr\); continue it with --out alone \(--seeds may change\)"):
        sweep(SweepConfig(out=str(out), seeds=3, lr=1e-3))


def _scores(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as f:
        return [{k: v for k, v in row.items() if not k.endswith(("seconds", "_s"))} for row in csv.DictReader(f)]


@pytest.mark.slow  # three micro sweeps, one through a process pool and one under torchrun
@pytest.mark.timeout(300)
@pytest.mark.usefixtures("one_thread")
def test_points_side_by_side_and_under_torchrun_score_as_one_by_one(dataset: Path, tmp_path: Path) -> None:
    # One torch thread everywhere (pool workers get cpu_count // workers = 1 here; torchrun's process
    # is set by OMP_NUM_THREADS), so the same points train to the same weights and scores.
    sweep(SweepConfig(out=str(tmp_path / "serial"), data=str(dataset), **MICRO))
    sweep(SweepConfig(out=str(tmp_path / "pool"), data=str(dataset), workers=2, **MICRO))
    env = {**_env(), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(_cli("sweep", "--out", str(tmp_path / "ddp"), "--data", str(dataset), "--grid", MICRO["grid"],
                            "--tokens", "512", "--batch-size", "4", "--checkpoints", "2", "--eval-stories", "4",
                            "--real", "", "--probe-sets", "fact", "--probe-n", "0", "--device", "cpu",
                            "--torchrun", "1"), env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    serial = _scores(tmp_path / "serial")
    assert [row["point"] for row in serial] == ["n_layer1-seed0", "n_layer2-seed0"]
    assert _scores(tmp_path / "pool") == serial
    assert _scores(tmp_path / "ddp") == serial


def test_emergence_bands_read_each_checkpoints_interval() -> None:
    from tinystories.sweep_report import _ci95

    entry = {"log_likelihood": {"accuracy": 0.5, "ci95": [0.4, 0.6], "fact": {"accuracy": 0.5, "ci95": [0.3, 0.7]}}}
    assert _ci95(entry, "all") == (0.4, 0.6)
    assert _ci95(entry, "fact") == (0.3, 0.7)
    assert _ci95(entry, "context") is None  # a category this checkpoint has no items for: no band
    assert _ci95({"log_likelihood": {"ci95": [None, 0.6]}}, "all") is None
