"""Curriculum A/B: random order against curricula and a reverse control, equal tokens, several seeds.

    python scripts/curriculum_ab.py --data DATASET --out runs/curriculum-ab            # train every arm x seed, then report
    python scripts/curriculum_ab.py --data DATASET --out runs/curriculum-ab --report   # report only

Each arm trains the same model on the same dataset for the same steps (so the
same tokens) with `tinystories train`, validating every --eval-every steps. A
finished run is skipped and an interrupted one resumed, so the script can be
killed and started again. The main figure is the steps each arm needs to reach
the random arm's final validation loss (linear between validations), with a
95% bootstrap interval over seeds (the target is recomputed in each resample);
beside it, each arm's final validation loss. Writes OUT/results.json and
OUT/results.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from tinystories import rundir
from tinystories.io import atomic_write_text

ARMS = {
    "random": [],
    "length": ["--curriculum", "length"],
    "rare": ["--curriculum", "rare"],
    "compress": ["--curriculum", "compress"],
    "length-reverse": ["--curriculum", "length", "--curriculum-reverse"],
}
MODEL = ["--model-d-model", "64", "--model-n-layer", "2", "--model-n-head", "4", "--model-n-kv-head", "4",
         "--model-max-seq-len", "128"]


def train_arm(data: str, run: Path, arm: str, seed: int, steps: int, eval_every: int) -> None:
    done = rundir.latest_checkpoint(run) if rundir.is_run(run) else None
    if done is not None and int(rundir.read_state(done)["step"]) >= steps:
        return
    if done is not None:
        cmd = ["train", "--run", str(run), "--resume", "--max-steps", str(steps)]
    else:
        cmd = ["train", "--data", data, "--run", str(run), *MODEL, *ARMS[arm], "--seed", str(seed),
               "--batch-size", "16", "--lr", "3e-3", "--max-steps", str(steps), "--eval-interval", str(eval_every),
               "--eval-tokens", "20000", "--log-interval", str(eval_every), "--ckpt-interval", "100",
               "--no-progress"]
        if run.exists():  # made but killed before its first checkpoint
            shutil.rmtree(run)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "tinystories", *cmd], check=True, env=env, stdout=subprocess.DEVNULL)


def val_curve(run: Path) -> tuple[np.ndarray, np.ndarray]:
    rows = [json.loads(line) for line in (run / rundir.METRICS_FILE).read_text().splitlines()]
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
    return [float(np.percentile(draws, 2.5, method="lower")), float(np.percentile(draws, 97.5, method="higher"))]


def report(out: Path, seeds: list[int], n_boot: int = 10_000) -> dict:
    curves = {a: [val_curve(out / f"{a}-s{s}") for s in seeds] for a in ARMS}
    steps = curves["random"][0][0]
    losses = {a: np.stack([c[1] for c in curves[a]]) for a in ARMS}  # (seeds, validations)
    final = {a: losses[a][:, -1] for a in ARMS}
    target = float(final["random"].mean())
    rng = np.random.default_rng(0)
    n = len(seeds)
    boot_steps: dict[str, list[float]] = {a: [] for a in ARMS}
    boot_final: dict[str, list[float]] = {a: [] for a in ARMS}
    for _ in range(n_boot):
        picks = {a: rng.integers(n, size=n) for a in ARMS}
        t = float(final["random"][picks["random"]].mean())
        for a in ARMS:
            # The arm's mean curve over the resampled seeds, and where it crosses the resampled target.
            boot_steps[a].append(steps_to(steps, losses[a][picks[a]].mean(axis=0), t))
            boot_final[a].append(float(final[a][picks[a]].mean()))
    result = {"target_val_loss": target, "seeds": seeds, "arms": {}}
    for a in ARMS:
        draws = np.array(boot_steps[a])
        result["arms"][a] = {
            "steps_to_target": steps_to(steps, losses[a].mean(axis=0), target),
            "steps_to_target_per_seed": [steps_to(steps, row, target) for row in losses[a]],
            "steps_ci95": interval(draws),
            "resamples_reaching_target": float(np.isfinite(draws).mean()),
            "final_val_loss": float(final[a].mean()),
            "final_val_loss_per_seed": final[a].tolist(),
            "final_ci95": interval(np.array(boot_final[a])),
            "final_step": int(steps[-1]),
        }
    lines = [f"Target: the random arm's final validation loss, {target:.4f} (mean of {n} seeds).", "",
             "| arm | steps to target | 95% interval | resamples reaching it | final val loss | 95% interval |",
             "|---|---|---|---|---|---|"]
    for a, r in result["arms"].items():
        ci_text = "[{}, {}]".format(*(f"{x:.0f}" if math.isfinite(x) else "never" for x in r["steps_ci95"]))
        steps_text = f"{r['steps_to_target']:.0f}" if math.isfinite(r["steps_to_target"]) else "never"
        lines.append(f"| {a} | {steps_text} | {ci_text} | {r['resamples_reaching_target']:.0%} | "
                     f"{r['final_val_loss']:.4f} | [{r['final_ci95'][0]:.4f}, {r['final_ci95'][1]:.4f}] |")
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")
    atomic_write_text(out / "results.json", json.dumps(result, indent=1, default=str) + "\n")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", help="dataset folder (tinystories tokenize)")
    ap.add_argument("--out", default="runs/curriculum-ab")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--report", action="store_true", help="only write the report of the finished runs")
    args = ap.parse_args()
    out, seeds = Path(args.out), [int(s) for s in args.seeds.split(",")]
    if not args.report:
        for seed in seeds:  # seeds outermost: a partial sweep already compares every arm
            for arm in ARMS:
                train_arm(args.data, out / f"{arm}-s{seed}", arm, seed, args.steps, args.eval_every)
                print(f"done {arm} seed {seed}", flush=True)
    print((out / "results.md").read_text() if report(out, seeds) else "")


if __name__ == "__main__":
    main()
