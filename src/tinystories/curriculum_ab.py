"""`tinystories curriculum-ab`: random order against curricula and a reverse control, equal tokens, several seeds.

    tinystories curriculum-ab --data ds --out ab              # train every arm x seed, then report
    tinystories curriculum-ab --out ab                        # continue after a kill: finished runs are skipped
    tinystories curriculum-ab --out ab --report               # report only, from the finished runs
    tinystories curriculum-ab --data ds --out ab --arms random length --seeds 1 2 --steps 300

Each arm trains the same model on the same dataset for the same steps (so the
same tokens) with `tinystories.train.train`, validating every --eval-every
steps. An arm is `random` (uniform random order) or a curriculum measure of
`tinystories train --curriculum` (length, rare, diversity, compress), with
`-reverse` for its hard-to-easy control (e.g. length-reverse). Seeds are the
outer loop, so a partial A/B already compares every arm. A finished run is
skipped and an interrupted one resumed from its newest checkpoint (the same
trajectory as without the stop), so the command can be killed and started
again.

The main figure is the steps each arm needs to reach the random arm's final
validation loss (linear between validations), with a 95% bootstrap interval
over seeds (the target is recomputed in each resample); beside it, each arm's
final validation loss.

Progress goes to stderr (one line per run trained, with its time, then the
results table); the command prints results.json's content. On a CPU the runs
train on one torch thread (--threads): the default small model trains fastest
so, and the figures are the same as with more.

The A/B folder:

    ab.json                     the settings that decide the results (a continuation reuses them;
                                --arms and --seeds may change, as each run depends only on its own)
    <arm>-s<seed>/              one run folder per arm and seed, e.g. random-s1, length-reverse-s2
    results.json, results.md    the report: steps to the target and final validation loss per arm
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinystories import rundir
from tinystories.config import OPERATIONAL, build, continued, result_fields
from tinystories.data.curriculum import MEASURES
from tinystories.data.shards import open_dataset
from tinystories.errors import UserError
from tinystories.io import atomic_write_json, atomic_write_text
from tinystories.sweep import GRID_DATA, parse_grid
from tinystories.train import TrainConfig, train
from tinystories.train_setup import build_model_config

SPEC_FILE = "ab.json"
RANDOM = "random"
"""The arm in uniform random order; its final validation loss is the target."""
REVERSE = "-reverse"
"""Suffix of an arm that orders its curriculum hard to easy (the control)."""
SHARED = ("arms", "seeds")
"""Result fields a continuation may change: they pick which runs there are, not how one trains."""


@dataclass
class CurriculumABConfig:
    """`tinystories curriculum-ab`: arms (random order, curricula, reversed controls) x seeds at equal tokens."""

    data: str = ""
    """Dataset folder (from `tinystories tokenize`) every run trains on; a continuation reuses the saved one."""
    out: str = field(default="", metadata={"required": True, **OPERATIONAL})
    """A/B folder (one run folder per arm and seed); run the command again with only --out to continue it."""
    arms: tuple[str, ...] = field(
        default=("random", "length", "rare", "compress", "length-reverse"), metadata={"required": True}
    )
    """Arms: random, or a curriculum measure (length, rare, diversity, compress), optionally with -reverse (hard to easy)."""
    seeds: tuple[int, ...] = field(default=(1, 2, 3), metadata={"required": True})
    """Training seeds; every arm trains once per seed."""
    preset: str = "llama-260k"
    """Model preset the --shape fields override (vocab_size always comes from the dataset)."""
    shape: str = "d_model=64;n_layer=2;n_head=4;n_kv_head=4;max_seq_len=128"
    """Model fields on top of the preset, KEY=VALUE;KEY=VALUE (one value per key)."""
    batch_size: int = field(default=16, metadata={"min": 1})
    """Windows per optimizer step."""
    lr: float = 3e-3
    """Peak learning rate (cosine decay to a tenth over --steps)."""
    steps: int = field(default=500, metadata={"min": 1})
    """Optimizer steps per run (the same tokens for every arm)."""
    eval_every: int = field(default=25, metadata={"min": 1})
    """Validate (and log) every this many steps: the resolution of the steps-to-target figure."""
    eval_tokens: int = field(default=20_000, metadata={"min": 0})
    """Validation tokens scored per evaluation, evenly spread over the split (0 = the whole split)."""
    ckpt_interval: int = field(default=100, metadata={"min": 1, **OPERATIONAL})
    """Save a checkpoint every this many steps (a killed run resumes from the newest)."""
    threads: int = field(default=1, metadata={"min": 0, **OPERATIONAL})
    """Torch CPU threads while training (0 = torch's default); small models train fastest on one."""
    device: str = field(default="auto", metadata=OPERATIONAL)
    """Torch device for training: cpu, cuda, cuda:N, or auto (cuda when available)."""
    report: bool = field(default=False, metadata=OPERATIONAL)
    """Only write the report (results.json, results.md) of the finished runs, without training anything."""


# --- settings -------------------------------------------------------------------------------------


def arm_settings(arm: str) -> dict[str, Any]:
    """The TrainConfig curriculum fields of `arm` (UserError for an unknown arm)."""
    if arm == RANDOM:
        return {"curriculum": None, "curriculum_reverse": False}
    measure = arm.removesuffix(REVERSE)
    if measure not in MEASURES:
        raise UserError(
            f"unknown arm {arm!r}: use {RANDOM} or a curriculum measure ({', '.join(MEASURES)}), "
            f"optionally with {REVERSE} (e.g. length{REVERSE})"
        )
    return {"curriculum": measure, "curriculum_reverse": arm != measure}


def check_arms(cfg: CurriculumABConfig) -> None:
    """Every arm known, `random` among them (it sets the target), no arm or seed twice."""
    for arm in cfg.arms:
        arm_settings(arm)
    if RANDOM not in cfg.arms:
        raise UserError(
            f"--arms must include {RANDOM}: its final validation loss is the target of the others"
        )
    for name, values in (("arms", cfg.arms), ("seeds", cfg.seeds)):
        if len(set(values)) != len(values):
            raise UserError(f"--{name} repeats a value ({' '.join(map(str, values))})")


def model_overrides(shape: str) -> dict[str, Any]:
    """--shape as ModelConfig overrides, {'d_model': 64, ...} (UserError on a bad shape or a key with two values)."""
    if not shape.strip():
        return {}
    try:
        axes = parse_grid(shape)
    except UserError as e:
        raise UserError(f"--shape: {e}") from None
    overrides: dict[str, Any] = {}
    for key, values in axes:
        if key == GRID_DATA:
            raise UserError("--shape takes model fields only; give the dataset with --data")
        if len(values) > 1:
            raise UserError(
                f"--shape key {key!r} has {len(values)} values ({', '.join(map(str, values))}): "
                "the A/B trains one model shape; give one value per key"
            )
        overrides[key] = values[0]
    return overrides


def resolve_settings(cfg: CurriculumABConfig) -> CurriculumABConfig:
    """The A/B's settings: the given ones for a new folder; the saved ones (plus operational options) to continue.

    A continuation may repeat the saved settings but not change them, as that
    would compare runs trained differently; only --arms and --seeds may change
    (each run depends only on its own arm and seed).
    """
    path = Path(cfg.out) / SPEC_FILE
    if not path.is_file():
        if not cfg.report and not cfg.data:
            raise UserError("--data is required for a new A/B: the dataset folder every run trains on")
        return cfg
    saved = json.loads(path.read_text(encoding="utf-8"))["settings"]
    return continued(cfg, saved, SHARED, f"A/B {cfg.out}")


# --- training -------------------------------------------------------------------------------------


def run_dir(cfg: CurriculumABConfig, arm: str, seed: int) -> Path:
    """The run folder of `arm` at `seed`: OUT/<arm>-s<seed>."""
    return Path(cfg.out) / f"{arm}-s{seed}"


def trained_steps(run: Path) -> int | None:
    """The step of a run's newest checkpoint (None when it has none)."""
    ckpt = rundir.latest_checkpoint(run) if rundir.is_run(run) else None
    return None if ckpt is None else int(rundir.read_state(ckpt)["step"])


def train_settings(cfg: CurriculumABConfig, arm: str, seed: int) -> dict[str, Any]:
    """The TrainConfig values that train `arm` at `seed` (the model shape comes apart, from --shape)."""
    return {
        "data": cfg.data,
        "run": str(run_dir(cfg, arm, seed)),
        "preset": cfg.preset,
        "seed": seed,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "max_steps": cfg.steps,
        "eval_interval": cfg.eval_every,
        "eval_tokens": cfg.eval_tokens,
        "log_interval": cfg.eval_every,
        "ckpt_interval": cfg.ckpt_interval,
        "progress": False,
        "device": cfg.device,
        **arm_settings(arm),
    }


def train_arm(cfg: CurriculumABConfig, arm: str, seed: int, overrides: dict[str, Any]) -> str:
    """Train `arm` at `seed` to --steps: 'done' (already there), 'resumed' or 'trained' (from the start)."""
    run = run_dir(cfg, arm, seed)
    step = trained_steps(run)
    if step is not None and step >= cfg.steps:
        return "done"
    values = train_settings(cfg, arm, seed)
    if step is not None:
        values["resume"] = True
    elif run.exists():  # made but killed before its first checkpoint: start it over
        shutil.rmtree(run)
    train(build(TrainConfig, values), overrides)
    return "trained" if step is None else "resumed"


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Torch on `n` CPU threads inside the block (0: as it is)."""
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _log(text: str) -> None:
    print(f"[curriculum-ab] {text}", file=sys.stderr, flush=True)


# --- the report -----------------------------------------------------------------------------------


def val_curve(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """(steps, validation losses) of a run, from its metrics.jsonl."""
    rows = [json.loads(line) for line in (run / rundir.METRICS_FILE).read_text(encoding="utf-8").splitlines()]
    rows = [r for r in rows if r.get("val_loss") is not None]
    return np.array([r["step"] for r in rows], dtype=float), np.array([r["val_loss"] for r in rows])


def steps_to(steps: np.ndarray, loss: np.ndarray, target: float) -> float:
    """First step where the validation loss reaches `target` (linear between validations); inf if never."""
    hit = np.nonzero(loss <= target)[0]
    if len(hit) == 0:
        return math.inf
    k = int(hit[0])
    if k == 0:
        return float(steps[0])
    s0, s1, l0, l1 = steps[k - 1], steps[k], loss[k - 1], loss[k]
    return float(s0 + (s1 - s0) * (l0 - target) / (l0 - l1))


def interval(draws: np.ndarray) -> list[float]:
    """95% percentile interval; an end is inf when that many resamples never reach the target."""
    return [
        float(np.percentile(draws, 2.5, method="lower")),
        float(np.percentile(draws, 97.5, method="higher")),
    ]


def _curves(
    out: Path, arms: list[str], seeds: list[int], steps: int
) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    runs = {(a, s): out / f"{a}-s{s}" for s in seeds for a in arms}
    missing = [run.name for run in runs.values() if (trained_steps(run) or 0) < steps]
    if missing:
        raise UserError(
            f"{len(missing)} of {len(runs)} runs in {out} are not trained to step {steps} "
            f"({', '.join(missing)}); run the A/B without --report to train them"
        )
    curves = {a: [val_curve(runs[a, s]) for s in seeds] for a in arms}
    grid = curves[RANDOM][0][0]
    odd = [f"{a}-s{s}" for a in arms for s, c in zip(seeds, curves[a]) if not np.array_equal(c[0], grid)]
    if odd:
        raise UserError(
            f"runs {', '.join(odd)} were validated at other steps than {RANDOM}-s{seeds[0]}; "
            "every run needs the same --eval-every and --steps"
        )
    return curves


def report(out: Path, arms: list[str], seeds: list[int], steps: int, n_boot: int = 10_000) -> dict[str, Any]:
    """results.json and results.md from the finished runs (UserError when one is missing or unfinished)."""
    curves = _curves(out, arms, seeds, steps)
    grid = curves[RANDOM][0][0]
    losses = {a: np.stack([c[1] for c in curves[a]]) for a in arms}  # (seeds, validations)
    final = {a: losses[a][:, -1] for a in arms}
    target = float(final[RANDOM].mean())
    rng = np.random.default_rng(0)
    n = len(seeds)
    boot_steps: dict[str, list[float]] = {a: [] for a in arms}
    boot_final: dict[str, list[float]] = {a: [] for a in arms}
    for _ in range(n_boot):
        picks = {a: rng.integers(n, size=n) for a in arms}
        t = float(final[RANDOM][picks[RANDOM]].mean())
        for a in arms:
            # The arm's mean curve over the resampled seeds, and where it crosses the resampled target.
            boot_steps[a].append(steps_to(grid, losses[a][picks[a]].mean(axis=0), t))
            boot_final[a].append(float(final[a][picks[a]].mean()))
    result: dict[str, Any] = {"target_val_loss": target, "seeds": seeds, "arms": {}}
    for a in arms:
        draws = np.array(boot_steps[a])
        result["arms"][a] = {
            "steps_to_target": steps_to(grid, losses[a].mean(axis=0), target),
            "steps_to_target_per_seed": [steps_to(grid, row, target) for row in losses[a]],
            "steps_ci95": interval(draws),
            "resamples_reaching_target": float(np.isfinite(draws).mean()),
            "final_val_loss": float(final[a].mean()),
            "final_val_loss_per_seed": final[a].tolist(),
            "final_ci95": interval(np.array(boot_final[a])),
            "final_step": int(grid[-1]),
        }
    lines = [
        f"Target: the random arm's final validation loss, {target:.4f} (mean of {n} seeds).",
        "",
        "| arm | steps to target | 95% interval | resamples reaching it | final val loss | 95% interval |",
        "|---|---|---|---|---|---|",
    ]
    for a, r in result["arms"].items():
        ci_text = "[{}, {}]".format(*(f"{x:.0f}" if math.isfinite(x) else "never" for x in r["steps_ci95"]))
        steps_text = f"{r['steps_to_target']:.0f}" if math.isfinite(r["steps_to_target"]) else "never"
        lines.append(
            f"| {a} | {steps_text} | {ci_text} | {r['resamples_reaching_target']:.0%} | "
            f"{r['final_val_loss']:.4f} | [{r['final_ci95'][0]:.4f}, {r['final_ci95'][1]:.4f}] |"
        )
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")
    atomic_write_text(out / "results.json", json.dumps(result, indent=1, default=str) + "\n")
    return result


# --- the command ----------------------------------------------------------------------------------


def curriculum_ab(cfg: CurriculumABConfig) -> dict[str, Any]:
    """Train (or continue) every arm x seed into OUT/<arm>-s<seed>, then write the report; `--report` only reports."""
    cfg = resolve_settings(cfg)
    check_arms(cfg)
    overrides = model_overrides(cfg.shape)
    out = Path(cfg.out)
    arms, seeds = list(cfg.arms), list(cfg.seeds)
    if not cfg.report:
        # A bad shape (e.g. d_model not divisible by n_head) fails here, before anything is written.
        build_model_config(cfg.preset, overrides, open_dataset(cfg.data).vocab_size)
        spec = {"settings": result_fields(cfg)}
        path = out / SPEC_FILE
        if not path.is_file() or json.loads(path.read_text(encoding="utf-8")) != spec:
            atomic_write_json(path, spec)
        todo = sum((trained_steps(run_dir(cfg, a, s)) or 0) < cfg.steps for s in seeds for a in arms)
        _log(f"{len(arms)} arms x {len(seeds)} seeds, {len(arms) * len(seeds) - todo} finished, {todo} to do")
        with torch_threads(cfg.threads):
            for seed in seeds:  # seeds outermost: a partial A/B already compares every arm
                for arm in arms:
                    t0 = time.perf_counter()
                    how = train_arm(cfg, arm, seed, overrides)
                    if how != "done":
                        _log(
                            f"{arm} seed {seed}: {how} to step {cfg.steps} in {time.perf_counter() - t0:.1f}s"
                        )
    result = report(out, arms, seeds, cfg.steps)
    print((out / "results.md").read_text(encoding="utf-8"), file=sys.stderr, end="", flush=True)
    return result
