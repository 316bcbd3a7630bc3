"""`tinystories pipeline`: the stages of the method on one pipeline folder, from a recipe.

    tinystories pipeline --recipe demo --out runs/demo      # a built-in recipe (demo, smoke, micro)
    tinystories pipeline --recipe my.toml --out runs/mine   # the same stages, the user's settings
    tinystories pipeline --recipe sweep --out runs/sweep    # an experiment (sweep, instruct, curriculum-ab)

A recipe (`tinystories.recipe`) is a TOML file with one section per
component, each holding fields of that component's config dataclass
(`SECTIONS`: `[synth]`, `[tokenize]`, `[model]` over the preset, `[train]`,
`[sample]`, `[eval]` (EvalConfig below), `[probes]`, `[diversity]`, `[judge]`,
`[heads]`, `[neurons]`, `[report]`, and the experiments' `[sweep]`,
`[instruct]`, `[instruct_sets]`, `[finetune]`, `[eval_instruct]`,
`[curriculum_ab]`). `[pipeline] stages` picks the stages a recipe runs
(default: the model's, synth to report). Paths between stages are the
pipeline's to choose, so a recipe may not set them (`OWNED`).

The pipeline folder:

    recipe.toml       the recipe as given
    pipeline.json     one record per stage: status, key, output fingerprint, seconds, summary
    corpus/           synth: job.json, stories_0000.jsonl, stories.txt
    data/             tokenize: the dataset folder
    model/            train: the run folder (config.toml, ckpt/, metrics.jsonl, ...)
      samples/samples.json, eval/consistency.json (names per sample)   sample
      eval/loss_procedural.json, eval/loss_real.json, eval/probes.json,
      eval/diversity.json, eval/judge.json (when a judge is set)           eval
      interp/heads.json, interp/neurons_layer*.json, *.png                interpret
    report.html       report: the whole run on one self-contained page
    sweep/            sweep: the sweep folder (points/, results.csv, report.html)
    instruct/         instruct: corpus/, data/, heldout/, sets/; finetune: model/; eval_instruct: eval/
    ab/               curriculum_ab: the A/B folder (one run per arm and seed, results.md)

Each stage calls its library function; nothing here repeats their logic
(the model's stages are in `pipeline_stages`, the experiments' in
`pipeline_experiments`; this module reads recipes and runs stages). A
stage's key hashes its resolved config and the fingerprints of the outputs it
reads; a stage is skipped when its record holds the same key and its outputs
still have the recorded fingerprint, so a re-run does only what changed or was
not finished. Training resumes from its newest checkpoint when only its
operational settings (budget, intervals: `config.OPERATIONAL`) or nothing
changed, e.g. after a kill; any other change starts that stage's outputs over.
Adding a stage is one more entry in STAGES. The closing note is `pipeline_note`.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinystories.config import parse_duration
from tinystories.curriculum_ab import CurriculumABConfig
from tinystories.data.tokenize import TokenizeConfig
from tinystories.errors import UserError
from tinystories.eval.diversity import DiversityConfig
from tinystories.eval.instruct import InstructEvalConfig
from tinystories.eval.judge import JudgeConfig
from tinystories.eval.probes import ProbesConfig
from tinystories.interp.heads import HeadsConfig
from tinystories.interp.neurons import NeuronsConfig
from tinystories.io import atomic_write_json, atomic_write_text
from tinystories.model import ModelConfig
from tinystories.pipeline_experiments import EXPERIMENT_STAGES, InstructSetsConfig
from tinystories.pipeline_note import STATE_FILE, closing_note
from tinystories.pipeline_stages import (
    MODEL_STAGE_LIST,
    MODEL_STAGES,  # noqa: F401  (re-exported: the default stages)
    EvalConfig,
    Pipeline,
    Stage,
    StagesConfig,
    hash_json,
)
from tinystories.recipe import Recipe, builtin_recipes, read_recipe  # noqa: F401  (builtin_recipes: re-exported)
from tinystories.report import ReportConfig
from tinystories.sample import SampleConfig
from tinystories.sweep import SweepConfig
from tinystories.synth.generate import SynthConfig
from tinystories.synth.instruct import InstructConfig
from tinystories.train import TrainConfig

RECIPE_FILE = "recipe.toml"


@dataclass
class PipelineConfig:
    """`tinystories pipeline`: run the stages of a recipe on one pipeline folder, skipping what is done."""

    recipe: str = "demo"
    """Built-in recipe name (demo, smoke, micro; the experiments sweep, instruct, curriculum-ab) or a recipe TOML file."""
    out: str | None = field(default=None, metadata={"aliases": ("--run",)})
    """Pipeline folder (default: runs/<recipe name>); a re-run continues it."""
    time: float | None = field(default=None, metadata={"parse": parse_duration})
    """Safety cap on training wall-clock time (e.g. 10m), over the recipe's; the budget is the recipe's tokens."""
    device: str = "auto"
    """Torch device for training, sampling and evaluation (auto: cuda when available)."""
    set: tuple[str, ...] = field(default=(), metadata={"repeat": True})
    """Recipe values to change, SECTION.FIELD=VALUE (e.g. sweep.flops=8e12 finetune.max_steps=400); recipe.toml in the folder records the result."""


# --- recipes ----------------------------------------------------------------------


SECTIONS: dict[str, type] = {
    "pipeline": StagesConfig,
    "synth": SynthConfig,
    "tokenize": TokenizeConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "sample": SampleConfig,
    "eval": EvalConfig,
    "probes": ProbesConfig,
    "diversity": DiversityConfig,
    "judge": JudgeConfig,
    "heads": HeadsConfig,
    "neurons": NeuronsConfig,
    "report": ReportConfig,
    "sweep": SweepConfig,
    "instruct": InstructConfig,
    "instruct_sets": InstructSetsConfig,
    "finetune": TrainConfig,
    "eval_instruct": InstructEvalConfig,
    "curriculum_ab": CurriculumABConfig,
}
"""Recipe section -> the config dataclass its fields belong to."""


# Fields each stage's paths and bookkeeping own: a recipe that sets them is refused.
OWNED: dict[str, tuple[str, ...]] = {
    "synth": ("out", "shard", "resume"),
    "tokenize": ("data", "out", "val_data"),
    "train": ("data", "run", "resume", "device"),
    "sample": ("run", "out", "stream", "device"),
    "probes": ("run", "write", "device"),
    "diversity": ("run", "data", "split", "write", "device"),
    "judge": ("run", "write", "device", "cache"),
    "heads": ("run", "out", "device"),
    "neurons": ("run", "out", "device"),
    "report": ("run", "out"),
    "model": ("vocab_size",),
    "sweep": ("out", "data", "report", "device"),
    "instruct": ("data", "out", "resume"),
    "finetune": ("data", "run", "init", "resume", "device"),
    "eval_instruct": ("run", "sets", "data", "write", "device"),
    "curriculum_ab": ("data", "out", "report", "device"),
}


def load_recipe(spec: str, overrides: tuple[str, ...] = ()) -> Recipe:
    """A built-in recipe by name, or a TOML file, with `overrides` (SECTION.FIELD=VALUE) set over it;
    unknown sections and fields, and fields the pipeline chooses, are errors."""
    return read_recipe(spec, SECTIONS, OWNED, overrides)


STAGES: tuple[Stage, ...] = MODEL_STAGE_LIST + EXPERIMENT_STAGES
"""The stages in order; a later stage is one more entry (in `pipeline_stages` or `pipeline_experiments`)."""


def _keys(stage: Stage, p: Pipeline) -> tuple[str, str]:
    """(key, resume key): the resume key hashes the stage's resume config in place of its config."""
    config = stage.config(p)
    inputs = {name: p.fingerprints.get(name) for name in stage.reads}
    resume = stage.resume_config(p) if stage.resume_config is not None else config
    return hash_json({"config": config, "inputs": inputs}), hash_json({"config": resume, "inputs": inputs})


# --- running -------------------------------------------------------------------------


def selected_stages(names: tuple[str, ...]) -> list[Stage]:
    """The stages [pipeline] names, in the pipeline's order; each must come with the stages it reads."""
    known = [stage.name for stage in STAGES]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"[pipeline] stages: unknown stage {unknown[0]!r} (stages: {', '.join(known)})")
    stages = [stage for stage in STAGES if stage.name in names]
    for stage in stages:
        missing = [r for r in stage.reads if r not in names]
        if missing:
            raise UserError(f"[pipeline] stages: {stage.name} reads what {missing[0]} makes; add {missing[0]}")
    return stages


def _read_state(root: Path) -> dict[str, Any]:
    path = root / STATE_FILE
    if not path.is_file():
        return {"stages": {}}
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise UserError(f"{path} is unreadable; remove it to start the pipeline over") from None
    state.setdefault("stages", {})
    return state


def _check_root(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise UserError(f"--out {root} exists and is not a folder")
    if root.is_dir() and any(root.iterdir()) and not (root / STATE_FILE).is_file():
        raise UserError(f"--out {root} is not empty and holds no {STATE_FILE}; choose another folder")


def run_pipeline(cfg: PipelineConfig) -> dict[str, Any]:
    """Run every stage of the recipe on `cfg.out`, skipping stages that are up to date."""
    recipe = load_recipe(cfg.recipe, cfg.set)
    root = Path(cfg.out or Path("runs") / recipe.name)
    p = Pipeline(root=root, recipe=recipe, device=cfg.device, time_cap=cfg.time)
    _check_root(root)
    stages = selected_stages(p.stages)
    # Build every stage's config before any work, so a mistake in the recipe stops nothing half-done.
    for stage in stages:
        stage.config(p)
    state = _read_state(root)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / RECIPE_FILE, recipe.text)
    state["recipe"] = recipe.name
    t_all = time.perf_counter()
    outcome: dict[str, str] = {}
    for stage in stages:
        key, resume_key = _keys(stage, p)
        rec = state["stages"].get(stage.name, {})
        now = stage.fingerprint(p)
        if rec.get("status") == "done" and rec.get("key") == key and now is not None and rec.get("fingerprint") == now:
            print(f"[skip] {stage.name}: up to date", flush=True)
            p.fingerprints[stage.name] = now
            outcome[stage.name] = "skipped"
            continue
        resume = stage.resumable and rec.get("resume_key") == resume_key
        if not resume:
            stage.clean(p)
        state["stages"][stage.name] = {"status": "running", "key": key, "resume_key": resume_key}
        atomic_write_json(root / STATE_FILE, state)
        print(f"[stage] {stage.name}", flush=True)
        t0 = time.perf_counter()
        summary = stage.run(p, resume)
        seconds = time.perf_counter() - t0
        now = stage.fingerprint(p)
        if now is None:
            raise RuntimeError(f"stage {stage.name} finished but its outputs are missing")
        p.fingerprints[stage.name] = now
        state["stages"][stage.name] = {
            "status": "done",
            "key": key,
            "resume_key": resume_key,
            "fingerprint": now,
            "seconds": round(seconds, 3),
            "summary": summary,
        }
        atomic_write_json(root / STATE_FILE, state)
        print(f"[time] {stage.name}: {seconds:.1f}s  {json.dumps(summary)}", flush=True)
        outcome[stage.name] = "done"
    total = time.perf_counter() - t_all
    return {"run": str(root), "stages": outcome, "seconds": round(total, 3), "records": state["stages"]}


def run_command(cfg: PipelineConfig) -> None:
    """`tinystories pipeline`: the stages, each phase's time, then the closing note."""
    result = run_pipeline(cfg)
    print(f"[time] pipeline: {result['seconds']:.1f}s", flush=True)
    print(closing_note(Path(result["run"]), bold=sys.stdout.isatty()), flush=True)
    sys.stdout.flush()
