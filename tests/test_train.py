"""Training: the loop, the run folder, exact resume, DDP equivalence, bad input.

Each test builds a tiny dataset folder itself (written per the dataset-folder
contract in docs/internals.md) from the real first 201 TinyStories validation
stories, and trains a micro Llama-shaped model (d 32, 2 layers, seq 64).

The golden loss curve in tests/fixtures/train_golden.json is regenerated with

    TINYSTORIES_REGEN_GOLDEN=1 .venv/bin/python -m pytest tests/test_train.py -k golden

(only after a deliberate change to the model, the loader or the loop).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tinystories import kernels, rundir
from tinystories.data.loader import Layout, TrainBatches, val_windows
from tinystories.errors import UserError
from tinystories.io import sha256_file
from tinystories.train import TrainConfig, lr_at, resolve, train

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "fixtures" / "train_golden.json"

MICRO = {"d_model": 32, "n_layer": 2, "n_head": 4, "n_kv_head": 2, "max_seq_len": 64}
MICRO_FLAGS = ["--model-d-model", "32", "--model-n-layer", "2", "--model-n-head", "4", "--model-n-kv-head", "2",
               "--model-max-seq-len", "64"]


# --- a tiny dataset folder --------------------------------------------------------


def make_dataset(folder: Path, stories: Path, vocab_size: int = 512) -> Path:
    """A dataset folder from a story file: 512-token BPE, 10% of the stories held out."""
    from tinystories.data.tokenize import TokenizeConfig, tokenize

    tokenize(TokenizeConfig(data=(str(stories),), out=str(folder), vocab_size=vocab_size, val_fraction=0.1,
                            workers=1))
    return folder


@pytest.fixture
def dataset(tmp_path: Path, valid_stories: Path) -> Path:
    return make_dataset(tmp_path / "data", valid_stories)


pytestmark = pytest.mark.usefixtures("one_thread")


def open_split(dataset: Path, name: str):
    from tinystories.data.shards import open_dataset

    return open_dataset(dataset).splits[name]


def micro_cfg(dataset: Path, run: Path, **kw) -> TrainConfig:
    base = dict(data=str(dataset), run=str(run), seq_len=64, batch_size=4, lr=3e-3, log_interval=1,
                eval_interval=0, eval_tokens=2048, ckpt_interval=0, progress=False, seed=7)
    base.update(kw)
    return TrainConfig(**base)


def cli(*args: str, env_extra: dict | None = None, module: str = "tinystories") -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def losses(run: Path) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in metrics(run)}


def weights(run: Path, step: int | None = None) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    ckpt = rundir.find_checkpoint(run, step)
    return load_file(str(ckpt / "model.safetensors"))


def tree_hash(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


# --- loader -----------------------------------------------------------------------


def test_batches_are_a_pure_function_of_seed_and_step(dataset: Path) -> None:
    a = TrainBatches(open_split(dataset, "train"), 64, seed=3)
    b = TrainBatches(open_split(dataset, "train"), 64, seed=3)
    one = Layout(micro_batch=8, grad_accum=1)
    # Reading steps out of order (as after a resume) gives the same windows.
    late = b.batch(5, one)
    early = b.batch(0, one)
    assert np.array_equal(a.batch(0, one), early)
    assert np.array_equal(a.batch(5, one), late)
    # Any split of the global batch over ranks and micro-steps covers the same windows in order.
    split = Layout(micro_batch=2, grad_accum=2, world_size=2)
    parts = [a.batch(5, split, rank, micro) for rank in range(2) for micro in range(2)]
    assert np.array_equal(np.concatenate(parts), late)
    assert not np.array_equal(TrainBatches(open_split(dataset, "train"), 64, seed=4).batch(0, one), early)


def test_an_epoch_sees_every_window_once(dataset: Path) -> None:
    batches = TrainBatches(open_split(dataset, "train"), 64, seed=1)
    n = batches.windows_per_epoch
    starts = [batches.window_start(g) for g in range(n)]
    offset = starts[0] % 64
    assert sorted(s - offset for s in starts) == [64 * k for k in range(n)]
    # Stride seq_len: each window's last token is the next one's first, so every
    # next-token pair of the covered stretch is predicted exactly once.
    assert n * 64 + 64 > batches.split.n_tokens - 64
    # The next epoch is another permutation (and usually another offset).
    nxt = [batches.window_start(g) for g in range(n, 2 * n)]
    assert nxt != starts


def test_story_windows_start_at_each_story_once_an_epoch(dataset: Path) -> None:
    split = open_split(dataset, "train")
    batches = TrainBatches(split, 64, seed=1, story_starts=True)
    n = batches.windows_per_epoch
    starts = [batches.window_start(g) for g in range(n)]
    # One window per story that has a full window of tokens left in the split, each at the story's [eot].
    fits = [int(s) for s in split.index[:-1] if s + 65 <= split.n_tokens]
    assert sorted(starts) == fits and n == len(fits) > 100
    eot = int(split.tokens(0, 1)[0])
    windows = batches.batch(3, Layout(micro_batch=8, grad_accum=1))
    assert (windows[:, 0] == eot).all()
    # Another epoch, another order of the same stories; a pure function of the seed.
    assert [batches.window_start(g) for g in range(n, 2 * n)] != starts
    again = TrainBatches(split, 64, seed=1, story_starts=True)
    assert np.array_equal(again.batch(3, Layout(micro_batch=8, grad_accum=1)), windows)


def test_story_windows_refuse_a_curriculum(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--windows stories"):
        resolve(micro_cfg(dataset, tmp_path / "r", windows="stories", curriculum="length", max_steps=4), 64)


def test_val_windows_are_fixed_and_spread(dataset: Path) -> None:
    val = open_split(dataset, "val")
    a = val_windows(val, 64, max_tokens=640)
    assert a.shape == (10, 65)
    assert np.array_equal(a, val_windows(val, 64, max_tokens=640))
    everything = val_windows(val, 64, max_tokens=0)
    assert len(everything) > len(a)
    assert np.array_equal(a[-1], everything[-1])  # evenly spread, ends at the split's end


# --- schedule ---------------------------------------------------------------------


def test_default_warmup_and_cosine_schedule() -> None:
    long = resolve(TrainConfig(max_steps=5000), seq_len=64)
    assert long.warmup == 100 and long.decay_steps == 5000 and long.min_lr == pytest.approx(5e-5)
    short = resolve(TrainConfig(max_steps=300), seq_len=64)
    assert short.warmup == 30  # 10% of the run
    lrs = [lr_at(s, short) for s in range(300)]
    assert lrs[0] == pytest.approx(5e-4 / 30)
    assert lrs[29] == pytest.approx(5e-4)
    assert all(a <= b for a, b in itertools.pairwise(lrs[:30]))
    assert all(a >= b for a, b in itertools.pairwise(lrs[29:]))
    assert lr_at(300, short) == pytest.approx(5e-5)
    tokens = resolve(TrainConfig(max_tokens=64 * 32 * 1000), seq_len=64)
    assert tokens.decay_steps == 1000
    const = resolve(TrainConfig(time=60, schedule="constant"), seq_len=64)
    assert lr_at(10_000, const) == 5e-4
    with pytest.raises(UserError, match="cosine schedule needs a length"):
        resolve(TrainConfig(time=60), seq_len=64)


def test_decay_by_time_follows_the_larger_of_steps_and_clock() -> None:
    cfg = resolve(TrainConfig(max_steps=1000, time=60, decay_by_time=True), seq_len=64)
    assert cfg.warmup == 100
    # Early in the steps but late on the clock: the clock's progress decides (0.8 of the 900 decay steps).
    assert lr_at(200, cfg, 0.8) == pytest.approx(lr_at(100 + 720, cfg))
    assert lr_at(200, cfg, 0.8) < lr_at(200, cfg)
    # Ahead in steps: the steps decide; the clock spent ends the decay at min_lr.
    assert lr_at(900, cfg, 0.1) == pytest.approx(lr_at(900, cfg))
    assert lr_at(150, cfg, 1.0) == pytest.approx(5e-5)
    assert lr_at(50, cfg, 1.0) == pytest.approx(5e-4 * 51 / 100)  # warmup is by steps only
    plain = resolve(TrainConfig(max_steps=1000, time=60), seq_len=64)
    assert lr_at(200, plain, 0.8) == lr_at(200, plain)
    for bad in (TrainConfig(max_steps=1000, decay_by_time=True),
                TrainConfig(time=60, schedule="constant", decay_by_time=True)):
        with pytest.raises(UserError, match="--decay-by-time needs --time and the cosine schedule"):
            resolve(bad, seq_len=64)


# --- training ---------------------------------------------------------------------


def unigram_entropy_nats(dataset: Path) -> float:
    counts = np.bincount(np.fromfile(dataset / "train_0000.bin", dtype=np.uint16), minlength=512)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def test_loss_goes_down_and_the_run_folder_is_complete(dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = micro_cfg(dataset, run, max_steps=120, batch_size=8, lr=1e-2, eval_interval=60, ckpt_interval=60,
                    log_interval=5)
    summary = train(cfg, MICRO)
    assert summary is not None and summary["step"] == 120
    rows = metrics(run)
    for row in rows:
        assert {"step", "tokens", "loss", "lr", "tokens_per_s"} <= row.keys()
        assert 0 < row["mfu"] < 1  # against the CPU's measured matmul peak, never above it
    evals = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in evals] == [60, 120]
    assert all(math.isfinite(r["val_bpb"]) and r["val_bpb"] > 0 for r in evals)
    first, last = rows[0]["loss"], rows[-1]["loss"]
    assert first > math.log(512) - 0.6  # starts near uniform over 512 tokens
    assert last < first - 1.2, (first, last)
    # Below the unigram entropy: the model uses context, not just token frequencies.
    assert evals[1]["val_loss"] < evals[0]["val_loss"] < unigram_entropy_nats(dataset) + 0.1
    assert evals[1]["val_loss"] < unigram_entropy_nats(dataset) - 0.3
    meta = json.loads((dataset / "meta.json").read_text())
    bpt = meta["splits"]["val"]["bytes"] / meta["splits"]["val"]["tokens"]
    assert evals[-1]["val_bpb"] == pytest.approx(evals[-1]["val_loss"] / math.log(2) / bpt)
    # Warmup default: min(100, 10% of 120) = 12 steps, linear; then cosine to lr / 10.
    lrs = {r["step"]: r["lr"] for r in rows}
    assert lrs[5] == pytest.approx(1e-2 * 5 / 12)
    assert lrs[15] < 1e-2 and lrs[15] == pytest.approx(1e-2, rel=1e-2)
    assert lrs[120] == pytest.approx(1e-3, rel=1e-2)

    # The run folder holds everything a later stage needs.
    assert [s for s, _ in rundir.list_checkpoints(run)] == [60, 120]
    for name in ("model.safetensors", "optim.pt", "state.json"):
        assert (run / "ckpt" / "step_000120" / name).is_file()
    state = rundir.read_state(rundir.latest_checkpoint(run))
    assert state["step"] == 120 and state["tokens"] == 120 * 8 * 64 and state["elapsed"] > 0
    assert {"torch", "numpy", "python"} <= state["rng"].keys() and state["config_hash"]
    env = json.loads((run / "env.json").read_text())
    assert {"python", "torch", "numpy", "threads", "device", "hostname", "git"} <= env.keys()
    assert env["cpu_kernels"] == kernels.available()
    config = rundir.read_config(run)
    assert config.model.vocab_size == 512 and config.model.d_model == 32
    assert config.train.warmup == 12 and config.data["content_hash"] == meta["content_hash"]
    assert (run / "tokenizer.json").read_bytes() == (dataset / "tokenizer.json").read_bytes()

    loaded = rundir.load_run(run)
    assert loaded.step == 120 and not loaded.model.training
    assert loaded.tokenizer.vocab_size == 512
    x = torch.tensor([loaded.tokenizer.encode("Once upon a time")])
    assert loaded.model(x).logits.shape == (1, x.shape[1], 512)
    assert rundir.load_run(run, step=60).step == 60


def test_time_budget_is_cumulative_across_resumes(dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = train(micro_cfg(dataset, run, time=1.0, schedule="constant", log_interval=1000), MICRO)
    assert first is not None and first["step"] > 0 and first["elapsed_s"] >= 1.0
    again = train(micro_cfg(dataset, run, time=1.0, resume=True, log_interval=1000), {})
    assert again is not None and again["step"] == first["step"]  # the budget is already spent
    more = train(micro_cfg(dataset, run, time=1.5, resume=True, log_interval=1000), {})
    assert more is not None and more["step"] > first["step"] and more["elapsed_s"] >= 1.5
    assert [r["step"] for r in metrics(run)] == [first["step"], more["step"]]


def test_a_run_stopped_by_the_clock_ends_decayed_with_decay_by_time(dataset: Path, tmp_path: Path) -> None:
    # A schedule planned for far more steps than 1.5 s allows: stopped by the clock, it ends at min_lr
    # only when the decay follows the clock.
    ends = {}
    for by_time in (False, True):
        run = tmp_path / f"run{by_time}"
        cfg = micro_cfg(dataset, run, time=1.5, max_steps=1_000_000, warmup=1, decay_by_time=by_time)
        summary = train(cfg, MICRO)
        assert summary is not None and 1 < summary["step"] < 1_000_000
        ends[by_time] = metrics(run)[-1]["lr"]
    assert ends[False] > 0.99 * 3e-3
    assert ends[True] < 3e-4 + 0.1 * (3e-3 - 3e-4)  # the last 10% of the cosine's fall, or less


def test_golden_loss_curve(dataset: Path, tmp_path: Path) -> None:
    """The first 50 steps of a fixed micro run match the stored curve (1e-4, not bitwise across torch versions)."""
    summary = train(micro_cfg(dataset, tmp_path / "run", max_steps=50, lr=1e-3), MICRO)
    assert summary is not None
    curve = [losses(tmp_path / "run")[s] for s in range(1, 51)]
    content_hash = json.loads((dataset / "meta.json").read_text())["content_hash"]
    if os.environ.get("TINYSTORIES_REGEN_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        record = {"torch": torch.__version__, "run": "micro_cfg(max_steps=50, lr=1e-3) with MICRO",
                  "dataset_content_hash": content_hash, "loss": curve}
        GOLDEN.write_text(json.dumps(record, indent=1) + "\n")
    golden = json.loads(GOLDEN.read_text())
    assert golden["dataset_content_hash"] == content_hash, (
        "the test dataset changed (tokenizer training?); regenerate the golden curve if that is intended"
    )
    worst = max(abs(a - b) for a, b in zip(curve, golden["loss"]))
    assert worst < 1e-4, f"loss curve differs from the golden one by {worst:.2e}"


def test_resume_continues_the_exact_trajectory(dataset: Path, tmp_path: Path) -> None:
    """20 steps, then --resume to 40, in separate processes == one 40-step run, bitwise."""
    common = ["train", "--data", str(dataset), "--seq-len", "64", "--batch-size", "4", "--lr", "3e-3",
              "--decay-steps", "40", "--log-interval", "1", "--eval-interval", "0", "--eval-tokens", "1024",
              "--ckpt-interval", "0", "--seed", "7", "--model-dropout", "0.1", *MICRO_FLAGS]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    r = cli(*common, "--run", str(whole), "--max-steps", "40")
    assert r.returncode == 0, r.stderr
    r = cli(*common, "--run", str(parts), "--max-steps", "20")
    assert r.returncode == 0, r.stderr
    # Resume with only the budget given: everything else comes from the run's config.toml.
    r = cli("train", "--run", str(parts), "--resume", "--max-steps", "40", "--log-interval", "1")
    assert r.returncode == 0, r.stderr
    assert losses(parts) == losses(whole)  # bitwise: floats compared exactly
    assert sorted(losses(parts)) == list(range(1, 41))
    a, b = weights(whole), weights(parts)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [s for s, _ in rundir.list_checkpoints(parts)] == [20, 40]
    env = json.loads((parts / "env.json").read_text())
    assert len(env["resumes"]) == 1


def test_ddp_two_ranks_equal_one_process(dataset: Path, tmp_path: Path) -> None:
    """Global batch 8 as 2 gloo ranks x 2 micro-steps x 2 windows == one process with batch 8."""
    common = ["--data", str(dataset), "--seq-len", "64", "--batch-size", "8", "--lr", "3e-3", "--max-steps", "10",
              "--log-interval", "1", "--eval-interval", "0", "--eval-tokens", "1024", "--seed", "7",
              "--device", "cpu", *MICRO_FLAGS]
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    r = cli("train", "--run", str(single), *common)
    assert r.returncode == 0, r.stderr
    # --run-dir: torchrun's own parser would take --run as an abbreviation of its --run-path.
    torchrun = ["--standalone", "--nproc_per_node", "2", "-m", "tinystories", "train", "--run-dir", str(ddp),
                "--grad-accum", "2", *common]
    r = cli(*torchrun, module="torch.distributed.run")
    if r.returncode != 0 and any(s in r.stderr for s in ("ddress already in use", "DistNetworkError", "Rendezvous")):
        # A free port picked by torchrun can be taken by another process before it binds; try once more.
        shutil.rmtree(ddp, ignore_errors=True)
        r = cli(*torchrun, module="torch.distributed.run")
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = losses(single), losses(ddp)
    assert sorted(a) == sorted(b) == list(range(1, 11))
    assert all(abs(a[s] - b[s]) < 1e-5 for s in a), (a, b)
    wa, wb = weights(single), weights(ddp)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5, rtol=0) for k in wa)
    assert json.loads((ddp / "env.json").read_text())["world_size"] == 2
    assert json.loads(r.stdout)["step"] == 10  # only rank 0 prints the summary


def ddp_args(dataset: Path, run: Path, steps: int = 10) -> list[str]:
    """torchrun arguments of the two-rank case above (gloo, 2 micro-steps of 2 windows each)."""
    return ["--standalone", "--nproc_per_node", "2", "-m", "tinystories", "train", "--run-dir", str(run),
            "--data", str(dataset), "--seq-len", "64", "--batch-size", "8", "--grad-accum", "2", "--lr", "3e-3",
            "--max-steps", str(steps), "--log-interval", "1", "--eval-interval", "0", "--eval-tokens", "1024",
            "--seed", "7", "--device", "cpu", *MICRO_FLAGS]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    r = cli(*args, module="torch.distributed.run")
    if r.returncode != 0 and any(s in r.stderr for s in ("ddress already in use", "DistNetworkError", "Rendezvous")):
        run = Path(args[args.index("--run-dir") + 1])  # a port taken between torchrun's pick and its bind
        shutil.rmtree(run, ignore_errors=True)
        r = cli(*args, module="torch.distributed.run")
    return r


def test_two_ranks_stopped_by_the_clock_end_decayed_with_decay_by_time(dataset: Path, tmp_path: Path) -> None:
    """Rank 0's clock, broadcast every log_interval steps, stops both ranks and sets the decay."""
    run = tmp_path / "ddp"
    args = ddp_args(dataset, run, steps=1_000_000)
    args[args.index("--log-interval") + 1] = "5"
    r = torchrun(*args, "--time", "3s", "--decay-by-time", "--warmup", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = metrics(run)
    assert 5 <= rows[-1]["step"] < 1_000_000 and rows[-1]["elapsed_s"] >= 3.0
    assert rows[-1]["lr"] < 3e-4 + 0.15 * (3e-3 - 3e-4)  # near the cosine's end, though far from its steps


# Each rank writes its own file: two ranks printing to one pipe can interleave their lines.
PROBE = """
import json, os, sys
from tinystories.cli import run
run(sys.argv[1:])
threads = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
with open(os.path.join(REPORTS, "rank" + os.environ["RANK"] + ".json"), "w") as f:
    json.dump({"rank": int(os.environ["RANK"]), "threads": threads}, f)
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc to list threads")
def test_ddp_leaves_no_communication_thread_behind(dataset: Path, tmp_path: Path) -> None:
    """After train() no gloo thread is left to run into interpreter shutdown (where it can abort the rank)."""
    probe = tmp_path / "probe.py"
    (tmp_path / "reports").mkdir()
    probe.write_text(f"REPORTS = {str(tmp_path / 'reports')!r}\n" + PROBE)
    args = ddp_args(dataset, tmp_path / "ddp", steps=2)
    i = args.index("-m")
    r = torchrun(*args[:i], str(probe), *args[i + 2 :])  # the probe in place of `-m tinystories`
    assert r.returncode == 0, r.stderr[-3000:]
    reports = [json.loads(f.read_text()) for f in sorted((tmp_path / "reports").glob("rank*.json"))]
    assert sorted(rep["rank"] for rep in reports) == [0, 1]
    for rep in reports:
        assert not [t for t in rep["threads"] if "gloo" in t], rep


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_ddp_stress_fifty_runs(dataset: Path, tmp_path: Path) -> None:
    """The two-rank case 50 times: every run exits cleanly and follows the same trajectory."""
    first = None
    for i in range(50):
        run = tmp_path / f"ddp{i}"
        r = torchrun(*ddp_args(dataset, run))
        assert r.returncode == 0, f"run {i}: {r.stderr[-3000:]}"
        got = losses(run)
        first = first or got
        assert got == first, (i, got, first)
        shutil.rmtree(run)


# --- bad input --------------------------------------------------------------------


@pytest.fixture
def trained(dataset: Path, tmp_path: Path) -> Path:
    run = tmp_path / "trained"
    train(micro_cfg(dataset, run, max_steps=4, ckpt_interval=2), MICRO)
    return run


def _refused(args: list[str], match: str, folder: Path) -> None:
    before = tree_hash(folder)
    r = cli(*args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinystories: error:") and match in lines[0], r.stderr
    assert tree_hash(folder) == before


def test_resume_with_nothing_to_resume(dataset: Path, tmp_path: Path) -> None:
    _refused(["train", "--run", str(tmp_path / "nope"), "--resume", "--max-steps", "8"], "nothing to resume", tmp_path)


def test_existing_run_without_resume_is_refused(trained: Path, dataset: Path) -> None:
    _refused(["train", "--data", str(dataset), "--run", str(trained), "--max-steps", "8"], "already exists", trained)


def test_resume_refuses_changes_that_break_exactness(trained: Path, dataset: Path) -> None:
    base = ["train", "--run", str(trained), "--resume", "--max-steps", "8"]
    _refused([*base, "--lr", "1e-2"], "--lr", trained)
    _refused([*base, "--batch-size", "8"], "--batch-size", trained)
    _refused([*base, "--seed", "8"], "--seed", trained)
    _refused([*base, "--model-n-layer", "3"], "--model-n-layer", trained)
    text = dataset.parent / "other.txt"
    text.write_text("\n<|endoftext|>\n".join(f"Story {i}: a cat sat on a mat." for i in range(300)))
    other = make_dataset(dataset.parent / "other", text)
    _refused([*base, "--data", str(other)], "content hash", trained)


def test_corrupt_or_truncated_checkpoint(trained: Path) -> None:
    weights_file = trained / "ckpt" / "step_000004" / "model.safetensors"
    data = weights_file.read_bytes()
    weights_file.write_bytes(data[: len(data) // 2])
    _refused(["train", "--run", str(trained), "--resume", "--max-steps", "8"], "corrupt or truncated", trained)
    with pytest.raises(UserError, match="corrupt or truncated"):
        rundir.load_run(trained)
    weights_file.write_bytes(b"\x00" * 7)
    with pytest.raises(UserError, match="corrupt or truncated"):
        rundir.load_run(trained)
    assert rundir.load_run(trained, step=2).step == 2


def test_checkpoint_that_does_not_match_the_config(trained: Path) -> None:
    config = trained / "config.toml"
    config.write_text(config.read_text().replace("d_model = 32", "d_model = 16"))
    with pytest.raises(UserError, match="does not match the config"):
        rundir.load_run(trained)


def test_tokenizer_that_does_not_match_the_checkpoint(trained: Path, tmp_path: Path) -> None:
    from tinystories.data.tokenizer import train_bpe

    train_bpe(["Once upon a time there was a cat."] * 10, 300).save(tmp_path / "tok300")
    (trained / "tokenizer.json").write_bytes((tmp_path / "tok300" / "tokenizer.json").read_bytes())
    _refused(["train", "--run", str(trained), "--resume", "--max-steps", "8"], "vocab_size", trained)
    with pytest.raises(UserError, match="do not belong together"):
        rundir.load_run(trained)


def test_no_run_and_no_checkpoint(tmp_path: Path, trained: Path) -> None:
    with pytest.raises(UserError, match="no run"):
        rundir.load_run(tmp_path / "missing")
    for ckpt in (trained / "ckpt").iterdir():
        ckpt.rename(trained / ckpt.name)
    with pytest.raises(UserError, match="has no checkpoint"):
        rundir.load_run(trained)
    assert rundir.latest_checkpoint(trained) is None


def test_train_help_lists_the_options(capsys: pytest.CaptureFixture) -> None:
    from tinystories.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--max-tokens" in out and "--resume" in out and "--model-d-model" in out and "--run-dir" in out


# --- the README's lines -----------------------------------------------------------


def readme_torchrun_line() -> list[str]:
    """The README's torchrun example, split into words (the program first)."""
    lines = [ln.strip() for ln in (ROOT / "README.md").read_text(encoding="utf-8").splitlines()]
    found = [ln.split() for ln in lines if ln.startswith("torchrun ") and " train " in ln]
    assert len(found) == 1, found
    return found[0]


def readme_folder(tmp_path: Path, dataset: Path, words: list[str]) -> Path:
    """A working folder where the line's relative --data path names the test dataset."""
    data = Path(words[words.index("--data") + 1])
    assert not data.is_absolute()
    (tmp_path / "cwd" / data).parent.mkdir(parents=True)
    shutil.copytree(dataset, tmp_path / "cwd" / data)
    return tmp_path / "cwd"


def test_readme_torchrun_line_passes_every_check(dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The line's own arguments, as two processes would see them, get through every check before training."""
    import tinystories.train as trainlib
    from tinystories.cli import run
    from tinystories.train_setup import Dist, prepare_run

    words = readme_torchrun_line()
    args = words[words.index("tinystories") + 1 :]
    monkeypatch.chdir(readme_folder(tmp_path, dataset, words))
    monkeypatch.setenv("WORLD_SIZE", words[words.index("--nproc_per_node") + 1])
    monkeypatch.setenv("RANK", "0")
    checked = {}

    def prepare_only(cfg: TrainConfig, overrides: dict, dist: Dist) -> None:
        checked["run"] = prepare_run(cfg, overrides, dist)

    monkeypatch.setattr(trainlib, "_train", prepare_only)
    run(args)
    run_dir, cfg, *_ = checked["run"]
    assert str(run_dir) == words[words.index("--run-dir") + 1]
    assert cfg.max_steps or cfg.max_tokens or cfg.time  # a budget, so no "no budget" error


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_readme_torchrun_line_trains(dataset: Path, tmp_path: Path) -> None:
    """The line itself under torchrun, capped at a few seconds of training (its own budget is 20M tokens)."""
    words = readme_torchrun_line()
    cwd = readme_folder(tmp_path, dataset, words)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", *words[1:], "--time", "3s", "--device", "cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    run = cwd / words[words.index("--run-dir") + 1]
    assert json.loads((run / "env.json").read_text())["world_size"] == 2
    assert rundir.read_config(run).train.max_tokens == 20_000_000
    assert rundir.latest_checkpoint(run) is not None
