"""`tinystories sweep`: train and grade a grid of model shapes at one budget.

    tinystories sweep --data data/ds --grid "d_model=64,128,256;n_layer=1,2,4,8" --flops 2e15 --seeds 2 --out sweeps/s1
    tinystories sweep --out sweeps/s1              # continue after a kill: finished work is skipped
    tinystories sweep --out sweeps/s1 --report     # results table + plots, sweeps/s1/report.html

The grid is a product of model fields (any `ModelConfig` field: width, depth,
heads, ...) and, to compare vocabularies, `data=` dataset folders (one per
tokenizer); each shape is trained once per seed. Every point gets the same
budget: FLOPs (the model's own training FLOPs per token, so a small model
sees more tokens), tokens, or wall-clock time. Each point is a run folder
trained by `tinystories.train.train`, then graded by the library's
evaluations: loss and bits per byte on the held-out split and on real
stories (`eval.loss`), the probes per category at every saved checkpoint
(`eval.probes`, the emergence curve), and GPT-Eval on a few beginnings when
a judge is named (`eval.judge`).

The sweep folder:

    sweep.json                      the settings that decide the results (a continuation reuses them)
    points/<name>/                  one run folder per point (name: its grid values and seed index)
      sweep/{train,eval,probes,judge}.json   one completion record per stage; a stage with one is skipped
      eval/loss_val.json, eval/loss_real.json, eval/probes.json, eval/judge.json
    results.csv, results.json       one row per point (+ per shape in the JSON), every score with its interval
    report.html, plots/*.png        `--report` (`sweep_report.py`)

A point killed while training resumes from its newest checkpoint (the
trajectory is the same as if it had not stopped); a stage killed while
evaluating is redone.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import io
import itertools
import json
import math
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tinystories import rundir
from tinystories.config import OPERATIONAL, build, continued, parse_count, parse_duration, result_fields
from tinystories.data.shards import open_dataset
from tinystories.errors import UserError
from tinystories.eval.judge import JudgeConfig, evaluate_judge, read_beginnings
from tinystories.eval.loss import LossConfig, evaluate_loss
from tinystories.eval.probes import ProbesConfig, evaluate_probes, wilson_interval
from tinystories.flops import count_params, flops_per_token
from tinystories.io import atomic_write_json, atomic_write_text
from tinystories.model import ModelConfig
from tinystories.sweep_report import score_columns, write_report
from tinystories.train import TrainConfig, train
from tinystories.train_setup import build_model_config

SPEC_FILE = "sweep.json"
POINTS_DIR = "points"
STAGE_DIR = "sweep"
EXTENDABLE = ("seeds",)
"""Settings a continuation may change: a point depends only on its own shape and seed, so more seeds add
points and leave the trained ones as they are (fewer seeds leave the extra points out of the results)."""
GRID_DATA = "data"
"""The grid key that varies the dataset folder (e.g. one per tokenizer, to compare vocabularies)."""


@dataclass
class SweepConfig:
    """`tinystories sweep`: a grid of model shapes x seeds, each trained at one budget and graded."""

    out: str = field(default="", metadata={"required": True, **OPERATIONAL})
    """Sweep folder; run the command again with only --out to continue it after a stop."""
    data: str = ""
    """Dataset folder (from `tinystories tokenize`) every point trains on, unless the grid varies data=."""
    grid: str = ""
    """The grid: KEY=V1,V2;KEY=V1,... over model fields (d_model, n_layer, n_head, d_ff, ...) and data= (dataset folders, one per vocabulary)."""
    seeds: int = field(default=1, metadata={"min": 1})
    """Seeds per shape (seed, seed+1, ...)."""
    seed: int = 1337
    """First training seed."""
    preset: str = "llama-260k"
    """Model preset the grid's fields override (vocab_size always comes from the dataset)."""
    flops: float | None = None
    """Budget per point in training FLOPs (forward + backward, the model's own count per token), e.g. 2e15."""
    tokens: int | None = None
    """Budget per point in training tokens, e.g. 20M."""
    time: float | None = field(default=None, metadata={"parse": parse_duration})
    """Budget per point in training wall-clock time, e.g. 10m (machine-dependent: record where it ran)."""
    seq_len: int | None = None
    """Tokens per training window (default: the model's max_seq_len)."""
    batch_size: int = 8
    """Windows per optimizer step."""
    lr: float = 2e-3
    """Peak learning rate (cosine decay to a tenth over the point's budget)."""
    checkpoints: int = field(default=8, metadata={"min": 1})
    """Checkpoints saved per point, evenly spaced (the emergence curve scores each); with --time: every --ckpt-interval steps."""
    ckpt_interval: int = field(default=200, metadata={"min": 1})
    """Steps between checkpoints when the budget is --time (the number of steps is not known ahead)."""
    eval_stories: int = field(default=200, metadata={"min": 0})
    """Held-out and real stories scored for loss and bits per byte (0 = all)."""
    real: str = "tinystories/TinyStories-valid.first201.txt"
    """Real stories scored beside the held-out split; a relative path not found here is looked up under $TINYSTORIES_TESTDATA; empty = none."""
    probe_sets: str = "builtin,procedural"
    """Probe sets (`eval probes --sets`): builtin, fact, reasoning, context, procedural."""
    probe_n: int = 200
    """Procedural probe items (with known answers) when probe_sets has procedural."""
    probe_greedy_tokens: int = 0
    """Greedy-completion length for the probes' accept-string measure (0 = skip it; it costs a decode per item)."""
    judge_model: str = ""
    """LLM judge for GPT-Eval (empty = no judge stage); see `tinystories eval judge`."""
    judge_base_url: str = ""
    """OpenAI-compatible endpoint of the judge."""
    judge_backend: str = "auto"
    """Judge backend: openai, local, auto."""
    judge_beginnings: int = 5
    """Beginnings (the first of the built-in set) each point completes for the judge."""
    judge_completions: int = 2
    """Completions per beginning for the judge."""
    workers: int = field(default=1, metadata={"min": 1, **OPERATIONAL})
    """Points trained side by side (each in its own process, with its share of the CPU threads)."""
    torchrun: int = field(default=0, metadata={"min": 0, **OPERATIONAL})
    """Train each point under `torchrun --standalone --nproc_per_node N` (0 = in this process)."""
    device: str = field(default="auto", metadata=OPERATIONAL)
    """Torch device for training and evaluation (auto: cuda when available)."""
    report: bool = field(default=False, metadata=OPERATIONAL)
    """Write results and report.html + plots/ from the finished points, without training anything."""


@dataclass(frozen=True)
class Point:
    """One grid point: its shape (grid values) and seed index."""

    name: str
    values: dict[str, Any]
    seed_index: int

    @property
    def shape(self) -> str:
        return self.name.rsplit("-seed", 1)[0]


# --- the grid -----------------------------------------------------------------------------------


def _field_parser(name: str) -> Any:
    """The value parser of ModelConfig field `name` (UserError for fields a grid cannot vary)."""

    hints = typing.get_type_hints(ModelConfig)
    names = [f.name for f in dataclasses.fields(ModelConfig)]
    if name == "vocab_size":
        raise UserError("the grid cannot vary vocab_size: it comes from the dataset; vary data= (one dataset per vocabulary)")
    if name not in names:
        raise UserError(f"unknown grid key {name!r}: use model fields ({', '.join(names)}) or {GRID_DATA}=")
    tp = hints[name]
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    base = args[0] if args and type(None) in typing.get_args(tp) else tp
    if base is bool:
        return lambda s: {"true": True, "false": False}[s.lower()]
    if base is int:
        return parse_count
    if base is float:
        return float
    if base is str or typing.get_origin(base) is typing.Literal:
        return str
    raise UserError(f"the grid cannot vary {name!r} (a {tp} field)")


def parse_grid(spec: str) -> list[tuple[str, list[Any]]]:
    """'d_model=64,128;n_layer=1,2' -> [('d_model', [64, 128]), ('n_layer', [1, 2])]; UserError on a bad grid."""
    axes: list[tuple[str, list[Any]]] = []
    for part in (p.strip() for p in spec.split(";")):
        if not part:
            continue
        key, eq, values = part.partition("=")
        key = key.strip()
        texts = [v.strip() for v in values.split(",") if v.strip()]
        if not eq or not key or not texts:
            raise UserError(f"bad grid part {part!r}: write KEY=V1,V2 (parts separated by ';')")
        if any(k == key for k, _ in axes):
            raise UserError(f"grid key {key!r} is given twice")
        parse = str if key == GRID_DATA else _field_parser(key)
        try:
            parsed = [parse(t) for t in texts]
        except (ValueError, KeyError, UserError):
            raise UserError(f"bad value in grid part {part!r} for {key}") from None
        if len(set(map(str, parsed))) != len(parsed):
            raise UserError(f"grid key {key!r} repeats a value")
        axes.append((key, parsed))
    if not axes:
        raise UserError('--grid is required for a new sweep, e.g. --grid "d_model=64,128;n_layer=1,2"')
    return axes


def _label(key: str, value: Any) -> str:
    text = Path(str(value)).name if key == GRID_DATA else str(value)
    return f"{key}{text}".replace("/", "_").replace(" ", "")


def grid_points(cfg: SweepConfig) -> list[Point]:
    """Every (shape, seed) of the grid, shapes in grid order, seeds innermost."""
    axes = parse_grid(cfg.grid)
    # Names carry the axes that vary; a single-valued key (e.g. n_head=4) applies to all points alike.
    named = [k for k, vals in axes if len(vals) > 1] or [k for k, _ in axes]
    points: list[Point] = []
    for combo in itertools.product(*(vals for _, vals in axes)):
        values = dict(zip((k for k, _ in axes), combo))
        shape = "-".join(_label(k, values[k]) for k in named)
        points.extend(Point(f"{shape}-seed{i}", values, i) for i in range(cfg.seeds))
    return points


# --- per point: settings and budget ------------------------------------------------------------


def _point_data(cfg: SweepConfig, point: Point) -> str:
    return str(point.values.get(GRID_DATA, cfg.data))


def model_config(cfg: SweepConfig, point: Point) -> Any:
    """The point's ModelConfig (UserError when the shape is not a valid model, e.g. d_model % n_head)."""

    overrides = {k: v for k, v in point.values.items() if k != GRID_DATA}
    return build_model_config(cfg.preset, overrides, open_dataset(_point_data(cfg, point)).vocab_size)


def model_counts(model_cfg: Any, seq_len: int) -> dict[str, Any]:
    """Parameters (all, embedding, non-embedding) and training FLOPs per token, from the model's own count."""
    total, non_emb = count_params(model_cfg), count_params(model_cfg, non_embedding=True)
    return {"params": total, "embedding_params": total - non_emb, "non_embedding_params": non_emb,
            "flops_per_token": flops_per_token(model_cfg, seq_len)}


def train_settings(cfg: SweepConfig, point: Point, run: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(TrainConfig values, model overrides) that train `point` into `run` at the sweep's budget."""
    model_cfg = model_config(cfg, point)
    seq_len = cfg.seq_len or model_cfg.max_seq_len
    counts = model_counts(model_cfg, seq_len)
    per_step = cfg.batch_size * seq_len
    values: dict[str, Any] = {
        "data": _point_data(cfg, point), "run": str(run), "preset": cfg.preset, "seq_len": seq_len,
        "batch_size": cfg.batch_size, "lr": cfg.lr, "seed": cfg.seed + point.seed_index,
        "device": cfg.device, "keep_ckpts": 0, "progress": False, "eval_interval": 0, "log_interval": 10,
        "eval_tokens": 8192,
    }
    if cfg.time is not None:
        values.update(time=cfg.time, schedule="constant", ckpt_interval=cfg.ckpt_interval)
    else:
        tokens = cfg.tokens if cfg.tokens is not None else math.ceil(float(cfg.flops or 0) / counts["flops_per_token"])
        steps = max(1, math.ceil(tokens / per_step))
        values.update(max_steps=steps, ckpt_interval=max(1, math.ceil(steps / cfg.checkpoints)),
                      log_interval=max(1, min(10, steps // 50)))
    overrides = {k: v for k, v in point.values.items() if k != GRID_DATA}
    return values, overrides


def check_budget(cfg: SweepConfig) -> None:
    given = [n for n in ("flops", "tokens", "time") if getattr(cfg, n) is not None]
    if len(given) != 1:
        raise UserError("give exactly one budget per point: --flops, --tokens or --time")
    if (cfg.flops is not None and cfg.flops <= 0) or (cfg.tokens is not None and cfg.tokens <= 0) or (
        cfg.time is not None and cfg.time <= 0
    ):
        raise UserError(f"the budget must be positive (--{given[0]})")


# --- the sweep folder ----------------------------------------------------------------------------


def resolve_spec(cfg: SweepConfig) -> SweepConfig:
    """The sweep's settings: the given ones for a new folder; the saved ones (plus operational options) to continue.

    A continuation may repeat the saved settings but not change them: that would
    mix points trained differently in one table.
    """
    spec_path = Path(cfg.out) / SPEC_FILE
    if spec_path.is_file():
        saved = json.loads(spec_path.read_text(encoding="utf-8"))["settings"]
        return continued(cfg, saved, EXTENDABLE, f"sweep {cfg.out}")
    if cfg.report:
        raise UserError(f"no sweep at {cfg.out} (no {SPEC_FILE}): run the sweep first")
    if not cfg.data and GRID_DATA not in {k for k, _ in parse_grid(cfg.grid)}:
        raise UserError("--data is required for a new sweep: the dataset folder every point trains on")
    return cfg


def _check_points(cfg: SweepConfig, points: list[Point]) -> None:
    # Every shape must be a valid model before anything trains, so a bad grid fails in a second, not an hour in.
    for point in points:
        if point.seed_index == 0:
            try:
                model_config(cfg, point)
            except UserError as e:
                raise UserError(f"grid point {point.shape}: {e}") from None


def stage_done(run: Path, stage: str) -> dict[str, Any] | None:
    """The completion record of `stage` in a point's run folder, or None when the stage has not finished."""
    path = run / STAGE_DIR / f"{stage}.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _mark(run: Path, stage: str, record: dict[str, Any]) -> None:
    atomic_write_json(run / STAGE_DIR / f"{stage}.json", record)


# --- the stages of one point -------------------------------------------------------------------


def _cli_args(values: dict[str, Any], prefix: str = "") -> list[str]:
    args = []
    for key, value in values.items():
        if value is None:
            continue
        flag = "--" + (prefix + key).replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + (prefix + key).replace("_", "-"))
        else:
            args += [flag, str(value)]
    return args


def _stage_train(cfg: SweepConfig, point: Point, run: Path) -> dict[str, Any]:

    values, overrides = train_settings(cfg, point, run)
    if rundir.latest_checkpoint(run) is not None:
        values["resume"] = True
    elif run.exists():  # stopped before its first checkpoint: start it over
        shutil.rmtree(run)
    t0 = time.perf_counter()
    if cfg.torchrun > 0:
        values = dict(values)
        values["run_dir"] = values.pop("run")  # torchrun's own parser would take --run for its --run-path
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={cfg.torchrun}",
               "-m", "tinystories", "train", *_cli_args(values), *_cli_args(overrides, "model_")]
        if subprocess.run(cmd).returncode != 0:
            raise UserError(f"training point {point.name} under torchrun failed (command: {' '.join(cmd)})")
        summary = _summary_from_run(run)
    else:
        summary = train(build(TrainConfig, values), overrides) or {}
    model_cfg = model_config(cfg, point)
    counts = model_counts(model_cfg, int(values["seq_len"]))
    tokens = int(summary["tokens"])
    return {**counts, "steps": summary["step"], "tokens": tokens, "flops": counts["flops_per_token"] * tokens,
            "train_loss": summary.get("loss"), "train_s": summary.get("elapsed_s"),
            "seconds": round(time.perf_counter() - t0, 2)}


def _summary_from_run(run: Path) -> dict[str, Any]:

    ckpt = rundir.latest_checkpoint(run)
    if ckpt is None:
        raise UserError(f"training {run} left no checkpoint")
    state = rundir.read_state(ckpt)
    rows = [json.loads(line) for line in (run / rundir.METRICS_FILE).read_text(encoding="utf-8").splitlines() if line]
    last = rows[-1] if rows else {}
    return {"step": state["step"], "tokens": state["tokens"], "loss": last.get("loss"), "elapsed_s": state.get("elapsed")}


def real_stories(spec: str) -> Path | None:
    """The real stories file: as given, or under $TINYSTORIES_TESTDATA; None when empty or absent."""
    if not spec:
        return None
    path = Path(spec)
    if path.is_file():
        return path
    root = Path(os.environ.get("TINYSTORIES_TESTDATA", "../shared/data"))
    return root / path if not path.is_absolute() and (root / path).is_file() else None


def _loss_brief(result: dict[str, Any]) -> dict[str, Any]:
    per = result["per_story"]
    return {"loss": per["loss"], "bpb": per["bits_per_byte"], "stories": result["stories"], "tokens": result["tokens"]}


def _stage_eval(cfg: SweepConfig, point: Point, run: Path) -> dict[str, Any]:

    common = {"run": str(run), "max_stories": cfg.eval_stories, "device": cfg.device, "write": False}
    out: dict[str, Any] = {}
    val = evaluate_loss(build(LossConfig, {**common, "data": (_point_data(cfg, point),), "split": "val"}))
    atomic_write_json(run / "eval" / "loss_val.json", val)
    out["val"] = _loss_brief(val)
    real = real_stories(cfg.real)
    if real is not None:
        r = evaluate_loss(build(LossConfig, {**common, "data": (str(real),)}))
        atomic_write_json(run / "eval" / "loss_real.json", r)
        out["real"] = _loss_brief(r)
    return out


def _stage_probes(cfg: SweepConfig, point: Point, run: Path) -> dict[str, Any]:

    several = len(rundir.list_checkpoints(run)) > 1
    procedural = "procedural" in cfg.probe_sets
    brief = evaluate_probes(build(ProbesConfig, {
        "run": str(run), "sets": cfg.probe_sets, "n": cfg.probe_n if procedural else 0,
        "checkpoints": "all" if several else "", "max_new_tokens": cfg.probe_greedy_tokens, "device": cfg.device,
    }))
    return {"n": brief["n"], "accuracy": brief["accuracy"], "ci95": brief["ci95"]}


def judge_prompts(cfg: SweepConfig, out: Path) -> Path:
    """A file with the first `judge_beginnings` built-in beginnings (the same small subset for every point)."""

    beginnings, _ = read_beginnings(None)
    path = out / "judge_beginnings.jsonl"
    text = "".join(json.dumps(b, ensure_ascii=False) + "\n" for b in beginnings[: cfg.judge_beginnings])
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)
    return path


def _stage_judge(cfg: SweepConfig, point: Point, run: Path) -> dict[str, Any]:

    result = evaluate_judge(build(JudgeConfig, {
        "run": str(run), "judge_model": cfg.judge_model, "base_url": cfg.judge_base_url,
        "backend": cfg.judge_backend, "prompts": str(judge_prompts(cfg, Path(cfg.out))),
        "completions": cfg.judge_completions, "device": cfg.device, "progress": False, "table": "none",
    }))
    return {"scores": result["scores"]}


STAGES = {"train": _stage_train, "eval": _stage_eval, "probes": _stage_probes, "judge": _stage_judge}


def run_point(cfg: SweepConfig, point: Point) -> dict[str, Any]:
    """Train and grade one point, skipping each stage whose completion record exists."""
    run = Path(cfg.out) / POINTS_DIR / point.name
    done: dict[str, Any] = {}
    for name, fn in STAGES.items():
        if name == "judge" and not cfg.judge_model:
            continue
        record = stage_done(run, name)
        if record is None:
            t0 = time.perf_counter()
            record = {**fn(cfg, point, run), "stage_seconds": round(time.perf_counter() - t0, 2)}
            _mark(run, name, record)
            print(f"[sweep] {point.name}: {name} done in {record['stage_seconds']:.1f}s", file=sys.stderr, flush=True)
        done[name] = record
    return done


def _worker(cfg: SweepConfig, point: Point, threads: int) -> str:

    torch.set_num_threads(threads)
    run_point(cfg, point)
    return point.name


def sweep(cfg: SweepConfig) -> dict[str, Any]:
    """Run (or continue) a sweep, then write results.csv / results.json; `--report` writes the report instead."""
    cfg = resolve_spec(cfg)
    check_budget(cfg)
    points = grid_points(cfg)
    out = Path(cfg.out)
    if cfg.report:
        results = write_results(cfg, points)
        return {"out": str(out), "points": len(points), "finished": results["finished"],
                **write_report(out, results, out / POINTS_DIR)}
    _check_points(cfg, points)
    spec = {"settings": result_fields(cfg), "points": [p.name for p in points]}
    if not (out / SPEC_FILE).is_file() or json.loads((out / SPEC_FILE).read_text(encoding="utf-8")) != spec:
        atomic_write_json(out / SPEC_FILE, spec)
    todo = [p for p in points if not _finished(cfg, out / POINTS_DIR / p.name)]
    print(f"[sweep] {len(points)} points, {len(points) - len(todo)} finished, {len(todo)} to do",
          file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    if cfg.workers == 1 or len(todo) <= 1:
        for point in todo:
            run_point(cfg, point)
    else:
        threads = max(1, (os.cpu_count() or 1) // cfg.workers)
        # spawn: a forked child would inherit this process's torch thread pools and locks.
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(cfg.workers, mp_context=ctx) as pool:
            for fut in concurrent.futures.as_completed([pool.submit(_worker, cfg, p, threads) for p in todo]):
                fut.result()
    results = write_results(cfg, points)
    return {"out": str(out), "points": len(points), "trained": len(todo), "finished": results["finished"],
            "seconds": round(time.perf_counter() - t0, 1), "results": str(out / "results.csv")}


def _finished(cfg: SweepConfig, run: Path) -> bool:
    return all(stage_done(run, s) is not None for s in STAGES if s != "judge" or cfg.judge_model)


# --- results -----------------------------------------------------------------------------------


def _acc_columns(prefix: str, block: dict[str, Any] | None) -> dict[str, Any]:
    if not block:
        return {}
    return {prefix: block["accuracy"], f"{prefix}_lo": block["ci95"][0], f"{prefix}_hi": block["ci95"][1],
            f"{prefix}_n": block["n"]}


def point_row(cfg: SweepConfig, point: Point) -> dict[str, Any] | None:
    """One results row from a point's run folder (None until its stages are finished)."""
    run = Path(cfg.out) / POINTS_DIR / point.name
    if not _finished(cfg, run):
        return None
    train = stage_done(run, "train") or {}
    ev = stage_done(run, "eval") or {}
    row: dict[str, Any] = {"point": point.name, "shape": point.shape, "seed": cfg.seed + point.seed_index,
                           **{k: Path(str(v)).name if k == GRID_DATA else v for k, v in point.values.items()}}
    for key in ("params", "embedding_params", "non_embedding_params", "flops_per_token", "steps", "tokens",
                "flops", "train_s", "train_loss"):
        row[key] = train.get(key)
    for name in ("val", "real"):
        if name in ev:
            row[f"{name}_loss"], row[f"{name}_bpb"] = ev[name]["loss"], ev[name]["bpb"]
    probes = json.loads((run / "eval" / "probes.json").read_text(encoding="utf-8"))
    row.update(_acc_columns("probes", probes))
    for group in ("by_category", "by_source"):
        for key, block in sorted(probes.get(group, {}).items()):
            row.update(_acc_columns(f"probes_{key}", block))
    if "greedy" in probes:
        row.update(_acc_columns("greedy", probes["greedy"]))
    judge = stage_done(run, "judge")
    for key, s in ((judge or {}).get("scores") or {}).items():
        if isinstance(s, dict) and "mean" in s:
            lo, hi = s.get("ci95", [None, None])
            row.update({f"judge_{key}": s["mean"], f"judge_{key}_lo": lo, f"judge_{key}_hi": hi})
    return row


def shape_rows(rows: list[dict[str, Any]], keys: list[str]) -> list[dict[str, Any]]:
    """Rows averaged over seeds, per shape: each score's mean, and an interval.

    Probe accuracies pool the items of all seeds (Wilson 95% interval on the
    pooled count); losses and judge scores give the lowest and highest seed
    (with two seeds a 95% interval on their mean would be uninformative).
    """

    out = []
    for shape, group in itertools.groupby(sorted(rows, key=lambda r: r["shape"]), key=lambda r: r["shape"]):
        g = list(group)
        agg: dict[str, Any] = {"shape": shape, "seeds": len(g), **{k: g[0].get(k) for k in keys}}
        for key in ("params", "embedding_params", "non_embedding_params", "flops_per_token", "steps", "tokens",
                    "flops", "train_s"):
            agg[key] = _mean([r.get(key) for r in g])
        for score in score_columns(g):
            vals = [r.get(score) for r in g]
            agg[score] = _mean(vals)
            if f"{score}_n" in g[0]:
                n = sum(int(r[f"{score}_n"]) for r in g)
                correct = sum(float(r[score]) * int(r[f"{score}_n"]) for r in g)
                agg[f"{score}_lo"], agg[f"{score}_hi"] = wilson_interval(correct, n)
                agg[f"{score}_n"] = n
            else:
                present = [v for v in vals if v is not None]
                agg[f"{score}_lo"], agg[f"{score}_hi"] = (min(present), max(present)) if present else (None, None)
        out.append(agg)
    return out


def _mean(vals: list[Any]) -> Any:
    present = [float(v) for v in vals if v is not None]
    return sum(present) / len(present) if present else None


def write_results(cfg: SweepConfig, points: list[Point]) -> dict[str, Any]:
    """results.csv (one row per finished point) and results.json (points, shapes, settings)."""

    keys = [k if k != GRID_DATA else GRID_DATA for k, _ in parse_grid(cfg.grid)]
    rows = [r for r in (point_row(cfg, p) for p in points) if r is not None]
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    out = Path(cfg.out)
    atomic_write_text(out / "results.csv", buf.getvalue())
    results = {"settings": result_fields(cfg), "grid": keys, "points": rows, "shapes": shape_rows(rows, keys),
               "finished": len(rows), "total": len(points),
               "intervals": "per point: probes 95% Wilson (items), judge 95% bootstrap (beginnings); per shape: "
                            "probes pooled over seeds (Wilson), losses and judge lowest-highest seed"}
    atomic_write_json(out / "results.json", results)
    return results
