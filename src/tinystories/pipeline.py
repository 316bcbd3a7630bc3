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

Each stage calls its library function; nothing here repeats their logic. A
stage's key hashes its resolved config and the fingerprints of the outputs it
reads; a stage is skipped when its record holds the same key and its outputs
still have the recorded fingerprint, so a re-run does only what changed or was
not finished. Training resumes from its newest checkpoint when only its
operational settings (budget, intervals: `config.OPERATIONAL`) or nothing
changed, e.g. after a kill; any other change starts that stage's outputs over.
Adding a stage is one more entry in STAGES. The closing note is `pipeline_note`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tinystories import rundir
from tinystories.config import build, parse_duration, result_fields
from tinystories.curriculum_ab import SHARED, CurriculumABConfig, curriculum_ab
from tinystories.data.instruct import eval_sets
from tinystories.data.stories import iter_stories
from tinystories.data.tokenize import TokenizeConfig, tokenize
from tinystories.errors import UserError
from tinystories.eval.diversity import DiversityConfig, evaluate_diversity
from tinystories.eval.instruct import InstructEvalConfig, evaluate_instruct
from tinystories.eval.judge import BUILTIN_BEGINNINGS, JudgeConfig, evaluate_judge
from tinystories.eval.loss import LossConfig, evaluate_loss
from tinystories.eval.probes import BUILTIN_SETS, ProbesConfig, evaluate_probes
from tinystories.interp.heads import HeadsConfig, interpret_heads
from tinystories.interp.neurons import NeuronsConfig, interpret_neurons
from tinystories.io import atomic_write_json, atomic_write_text, sha256_file
from tinystories.model import ModelConfig
from tinystories.pipeline_note import REPORT_FILE, STATE_FILE, closing_note
from tinystories.recipe import Recipe, builtin_recipes, read_recipe  # noqa: F401  (builtin_recipes: re-exported)
from tinystories.report import ReportConfig, report
from tinystories.sample import SampleConfig, sample
from tinystories.sweep import EXTENDABLE, SweepConfig, sweep
from tinystories.synth.coherence import name_consistency
from tinystories.synth.generate import SynthConfig, synth
from tinystories.synth.instruct import InstructConfig, instruct
from tinystories.synth.stats import read_corpus
from tinystories.synth.world import BOY_NAMES, GIRL_NAMES
from tinystories.train import TrainConfig, train

RECIPE_FILE = "recipe.toml"
REAL_STORIES = "tinystories/TinyStories-valid.first201.txt"
"""Default real stories for the side-by-side loss, under $TINYSTORIES_TESTDATA."""


@dataclass
class PipelineConfig:
    """`tinystories pipeline`: run the stages of a recipe on one pipeline folder, skipping what is done."""

    recipe: str = "demo"
    """Built-in recipe name (demo, smoke, micro) or a recipe TOML file."""
    out: str | None = field(default=None, metadata={"aliases": ("--run",)})
    """Pipeline folder (default: runs/<recipe name>); a re-run continues it."""
    time: float | None = field(default=None, metadata={"parse": parse_duration})
    """Safety cap on training wall-clock time (e.g. 10m), over the recipe's; the budget is the recipe's tokens."""
    device: str = "auto"
    """Torch device for training, sampling and evaluation (auto: cuda when available)."""


@dataclass
class EvalConfig:
    """The eval stage: loss on procedural and on real text side by side, the probes, memorization and diversity, and the LLM judge when [judge] names one."""

    real: str = REAL_STORIES
    """Real stories scored beside the procedural validation split; a relative path not found from the working folder is looked up under $TINYSTORIES_TESTDATA (default ../shared/data); empty = none."""
    max_stories: int = 500
    """Score at most this many stories of each set (0 = all)."""
    batch: int = 16
    """Windows per forward in the loss evaluation."""
    diversity: bool = True
    """Also measure memorization and diversity against the training corpus ([diversity] settings)."""


MODEL_STAGES = ("synth", "tokenize", "train", "sample", "eval", "interpret", "report")
"""The stages that make and grade one model: what a recipe without [pipeline] runs."""


@dataclass
class StagesConfig:
    """[pipeline]: which stages a recipe runs."""

    stages: tuple[str, ...] = MODEL_STAGES
    """Stages to run, in the pipeline's order whatever order they are listed in: synth, tokenize, train,
    sample, eval, interpret, report (one model), and the experiments: sweep (a grid of shapes on the
    dataset), instruct (Instruct records, their dataset and held-out instruction sets), finetune (the
    model fine-tuned on them), eval_instruct (both models on the sets), curriculum_ab (random order
    against curricula)."""


@dataclass
class InstructSetsConfig:
    """The instruct stage's held-out instruction sets for `eval instruct`: in-distribution and OOD apart."""

    n: int = field(default=50, metadata={"min": 1})
    """Sets of each kind, one per held-out story."""
    start: int = field(default=1_000_000, metadata={"min": 0})
    """Index of the first held-out story: [synth]'s job from this index on, beyond its training stories."""
    seed: int = 0
    """Seed for the order of each set's fields and its random sentence."""


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


def load_recipe(spec: str) -> Recipe:
    """A built-in recipe by name, or a TOML file; unknown sections and fields, and fields the pipeline
    chooses, are errors."""
    return read_recipe(spec, SECTIONS, OWNED)


# --- the pipeline folder --------------------------------------------------------------------


@dataclass
class Pipeline:
    """One pipeline folder and the recipe run on it."""

    root: Path
    recipe: Recipe
    device: str = "auto"
    time_cap: float | None = None
    fingerprints: dict[str, str | None] = field(default_factory=dict)
    """Output fingerprint of each stage done or skipped so far in this invocation."""

    @property
    def corpus(self) -> Path:
        return self.root / "corpus"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def instruct(self) -> Path:
        """The Instruct experiment's folder: corpus/, data/, heldout/, sets/, model/, eval/."""
        return self.root / "instruct"

    @property
    def stages(self) -> tuple[str, ...]:
        return build(StagesConfig, self.section("pipeline")).stages

    def section(self, name: str) -> dict[str, Any]:
        return dict(self.recipe.sections.get(name, {}))

    def torch_device(self) -> str:
        if self.device != "auto":
            return self.device
        return "cuda" if torch.cuda.is_available() else "cpu"


def _fingerprint_file(path: Path) -> str | None:
    return sha256_file(path) if path.is_file() else None


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _asdict(cfg: Any, leave_out: tuple[str, ...] = ()) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in leave_out}


# --- stages -------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline: what configures it, what it reads, how to run it."""

    name: str
    reads: tuple[str, ...]
    """Earlier stages whose outputs it reads (their fingerprints enter its key)."""
    config: Callable[[Pipeline], dict[str, Any]]
    """Everything that decides its outputs besides `reads`, as plain data (hashed into the key)."""
    run: Callable[[Pipeline, bool], dict[str, Any]]
    """Do the work; the flag says whether to resume it. Returns a short summary."""
    fingerprint: Callable[[Pipeline], str | None]
    """Identity of its outputs as they are now; None when they are missing."""
    clean: Callable[[Pipeline], None] = lambda p: None
    """Remove outputs that would stop a fresh run."""
    resume_config: Callable[[Pipeline], dict[str, Any]] | None = None
    """A resumable stage's config less its operational settings (budget, intervals): an unfinished or
    outdated attempt whose resume config is unchanged is continued, not started over."""

    @property
    def resumable(self) -> bool:
        return self.resume_config is not None


def _synth_config(p: Pipeline) -> SynthConfig:
    return build(SynthConfig, {**p.section("synth"), "out": str(p.corpus)})



def _synth_txt(p: Pipeline) -> Path:
    return p.corpus / "stories.txt"


def _run_synth(p: Pipeline, resume: bool) -> dict[str, Any]:
    cfg = _synth_config(p)
    # An LLM job continues from its shards (nothing is paid for twice); the procedural engine
    # simply writes its job again.
    if resume and cfg.backend != "procedural" and (p.corpus / "job.json").is_file():
        cfg = dataclasses.replace(cfg, resume=True)
    r = synth(cfg)
    return {"stories": r["stories"], "stories_per_s": r["stories_per_s"], "txt": r["txt"]}


def _clean_synth(p: Pipeline) -> None:
    job = p.corpus / "job.json"
    backend = json.loads(job.read_text()).get("backend") if job.is_file() else None
    if backend not in (None, "procedural"):
        # Stories an LLM wrote cost money and time: never thrown away here.
        raise UserError(
            f"[synth] changed, but {p.corpus} holds stories from the {backend} backend; "
            "move that folder away or choose another --run"
        )
    _rmtree(p.corpus)


def _tokenize_config(p: Pipeline) -> TokenizeConfig:
    return build(TokenizeConfig, {**p.section("tokenize"), "data": (str(_synth_txt(p)),), "out": str(p.data)})


def _run_tokenize(p: Pipeline, resume: bool) -> dict[str, Any]:
    r = tokenize(_tokenize_config(p))
    return {k: r[k] for k in ("vocab_size", "train", "val", "bytes_per_token") if k in r}


def _dataset_fingerprint(p: Pipeline) -> str | None:
    meta = p.data / "meta.json"
    return json.loads(meta.read_text())["content_hash"] if meta.is_file() else None


def _train_paths(p: Pipeline, section: str) -> dict[str, Any]:
    """Where the [train] model or the [finetune] one (from the [train] model's weights) reads and writes."""
    if section == "finetune":
        return {"data": str(p.instruct / "data"), "run": str(p.instruct / "model"), "init": str(p.model)}
    return {"data": str(p.data), "run": str(p.model)}


def _train_config(p: Pipeline, resume: bool = False, section: str = "train") -> TrainConfig:
    values = {**p.section(section), **_train_paths(p, section), "resume": resume}
    if resume:
        values.pop("init", None)  # a resumed run keeps the weights source it recorded
    if p.time_cap is not None:
        values["time"] = p.time_cap
    values["device"] = p.device
    cfg = build(TrainConfig, values)
    if cfg.max_tokens is None and cfg.max_steps is None:
        raise UserError(f"recipe [{section}] needs a budget: max_tokens (or max_steps); time is only a safety cap")
    return cfg


def _model_section(p: Pipeline, section: str) -> dict[str, Any]:
    # A fine-tuned model is the [train] model's shape; [model] shapes only the model trained from scratch.
    return {} if section == "finetune" else p.section("model")


def _train_key(p: Pipeline, section: str = "train") -> dict[str, Any]:
    return {
        "train": _asdict(_train_config(p, section=section), ("data", "run", "resume", "device", "progress")),
        "model": _model_section(p, section),
    }


def _train_resume_key(p: Pipeline, section: str = "train") -> dict[str, Any]:
    # The training config's operational fields (budget, intervals, paths) continue the run when changed.
    cfg = result_fields(_train_config(p, section=section))
    return {"train": {k: v for k, v in cfg.items() if k != "device"}, "model": _model_section(p, section)}


def _run_train(p: Pipeline, resume: bool, section: str = "train") -> dict[str, Any]:
    run = Path(_train_paths(p, section)["run"])
    ckpt = rundir.latest_checkpoint(run) if resume else None
    if ckpt is None:
        _clean_train(p, section)
    cfg = _train_config(p, resume=ckpt is not None, section=section)
    step0 = int(rundir.read_state(ckpt)["step"]) if ckpt is not None else 0
    if ckpt is not None:
        print(f"[resume] {section}: from step {step0} ({ckpt})", flush=True)
    r = train(cfg, model_overrides=_model_section(p, section))
    assert r is not None
    summary = {k: r[k] for k in ("step", "tokens", "params", "val_loss", "val_bpb", "tokens_per_s", "elapsed_s")}
    summary["resumed_from_step"] = step0 if ckpt is not None else None
    short_of_tokens = cfg.max_tokens is not None and r["tokens"] < cfg.max_tokens
    short_of_steps = cfg.max_steps is not None and r["step"] < cfg.max_steps
    if short_of_tokens or short_of_steps:
        summary["stopped_by_time_cap"] = True
        print(
            f"[note] {section}: the time cap stopped training at step {r['step']} ({r['tokens']:,} tokens), "
            "short of the budget; raise it (--time) and run again to continue",
            flush=True,
        )
    return summary


def _train_fingerprint(p: Pipeline, section: str = "train") -> str | None:
    ckpt = rundir.latest_checkpoint(Path(_train_paths(p, section)["run"]))
    if ckpt is None:
        return None
    return f"{ckpt.name}:{sha256_file(ckpt / rundir.MODEL_FILE)}"


def _clean_train(p: Pipeline, section: str = "train") -> None:
    run = Path(_train_paths(p, section)["run"])
    if run.exists():
        print(f"[note] {section}: starting the model over (removing {run})", flush=True)
        shutil.rmtree(run)


def _samples_path(p: Pipeline) -> Path:
    return p.model / "samples" / "samples.json"


def _sample_config(p: Pipeline) -> SampleConfig:
    values = {**p.section("sample"), "run": str(p.model), "out": str(_samples_path(p)), "stream": False}
    return build(SampleConfig, {**values, "device": p.torch_device()})


def _run_sample(p: Pipeline, resume: bool) -> dict[str, Any]:
    # The closing note shows the samples; keep the command's own printing out of the log.
    with contextlib.redirect_stdout(io.StringIO()):
        sample(_sample_config(p))
    data = json.loads(_samples_path(p).read_text())
    consistency = _name_consistency(p, data["samples"])
    atomic_write_json(_samples_path(p), data)  # now with each sample's names
    summary = {k: consistency[k] for k in ("median_distinct_names", "protagonist_kept_share")}
    return {"samples": len(data["samples"]), "file": str(_samples_path(p)), **summary}


def _name_consistency(p: Pipeline, samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Adds `names` to each sample; writes eval/consistency.json beside the real stories' figure."""
    known = GIRL_NAMES + BOY_NAMES
    result = name_consistency([s["prompt"] + s["completion"] for s in samples], known)
    for s, per in zip(samples, result["per_sample"], strict=True):
        s["names"] = per.pop("names")
    real = real_stories_path(_eval_config(p).real)
    if real is not None:
        ref = name_consistency(list(iter_stories([str(real)])), known)
        result["reference"] = {
            "median_distinct_names": ref["median_distinct_names"],
            "protagonist_kept_share": ref["protagonist_kept_share"],
            "n_stories": ref["n_samples"],
            "source": f"{ref['n_samples']} real TinyStories validation stories",
        }
    atomic_write_json(p.model / "eval" / "consistency.json", result)
    return result


def _eval_config(p: Pipeline) -> EvalConfig:
    return build(EvalConfig, p.section("eval"))


def real_stories_path(spec: str) -> Path | None:
    """The real stories file named by [eval] real, or None when it is empty or not found."""
    if not spec:
        return None
    path = Path(spec)
    if path.is_file():
        return path
    if not path.is_absolute():
        root = Path(os.environ.get("TINYSTORIES_TESTDATA", "../shared/data"))
        if (root / path).is_file():
            return root / path
    return None


def _probes_config(p: Pipeline) -> ProbesConfig:
    return build(ProbesConfig, {**p.section("probes"), "run": str(p.model), "device": p.torch_device()})


def _diversity_config(p: Pipeline) -> DiversityConfig:
    # The corpus is the pipeline's own training split.
    return build(DiversityConfig, {**p.section("diversity"), "run": str(p.model), "data": (str(p.data),),
                                   "split": "train", "device": p.torch_device()})


def _judge_config(p: Pipeline) -> JudgeConfig:
    return build(JudgeConfig, {**p.section("judge"), "run": str(p.model), "device": p.torch_device(),
                               "cache": str(p.root / "judge_cache.sqlite")})


def _eval_key(p: Pipeline) -> dict[str, Any]:
    ev = _eval_config(p)
    real = real_stories_path(ev.real)
    probes = _probes_config(p)
    judge = _judge_config(p)
    return {
        "eval": dataclasses.asdict(ev),
        "real_sha256": sha256_file(real) if real else None,
        "probes": _asdict(probes, ("run", "device")),
        "probes_sha256": _fingerprint_file(Path(probes.probes)) if probes.probes else None,
        # Edits to the shipped sets must redo the stage too.
        "builtin_sha256": {f.name: sha256_file(f) for f in (*BUILTIN_SETS.values(), BUILTIN_BEGINNINGS)},
        "diversity": _asdict(_diversity_config(p), ("run", "data", "device")) if ev.diversity else None,
        "judge": _asdict(judge, ("run", "device", "cache", "progress", "concurrency", "timeout", "retries",
                                 "retry_base", "rpm", "tpm", "api_key_env")) if judge.judge_model else None,
        "judge_prompts_sha256": _fingerprint_file(Path(judge.prompts)) if judge.prompts else None,
    }


def _run_eval(p: Pipeline, resume: bool) -> dict[str, Any]:
    ev = _eval_config(p)
    out = p.model / "eval"
    device = p.torch_device()
    common = {"run": str(p.model), "max_stories": ev.max_stories, "batch": ev.batch, "device": device, "write": False}
    summary: dict[str, Any] = {}
    t0 = time.perf_counter()
    proc = evaluate_loss(build(LossConfig, {**common, "data": (str(p.data),), "split": "val"}))
    atomic_write_json(out / "loss_procedural.json", proc)
    summary["procedural"] = _loss_brief(proc)
    real = real_stories_path(ev.real)
    if real is None:
        (out / "loss_real.json").unlink(missing_ok=True)
        if ev.real:
            print(f"[note] eval: real stories {ev.real} not found; scoring procedural text only", flush=True)
    else:
        r = evaluate_loss(build(LossConfig, {**common, "data": (str(real),)}))
        atomic_write_json(out / "loss_real.json", r)
        summary["real"] = _loss_brief(r)
    print(f"[time] eval loss: {time.perf_counter() - t0:.1f}s", flush=True)
    t0 = time.perf_counter()
    probes = evaluate_probes(_probes_config(p))
    print(f"[time] eval probes: {time.perf_counter() - t0:.1f}s", flush=True)
    summary["probes"] = {k: probes[k] for k in ("n", "accuracy", "ci95", "chance", "significant")}
    summary.update(_run_diversity(p, ev.diversity, out))
    summary.update(_run_judge(p, out))
    return summary


def _run_diversity(p: Pipeline, enabled: bool, out: Path) -> dict[str, Any]:
    if not enabled:
        (out / "diversity.json").unlink(missing_ok=True)
        return {}
    t0 = time.perf_counter()
    brief = evaluate_diversity(_diversity_config(p))
    print(f"[time] eval diversity: {time.perf_counter() - t0:.1f}s", flush=True)
    keep = ("completion_vs_original_rouge2_p", "between_generations_rouge2_f", "kgrams_never_in_corpus")
    return {"diversity": {k: brief[k] for k in keep}}


def _run_judge(p: Pipeline, out: Path) -> dict[str, Any]:
    cfg = _judge_config(p)
    if not cfg.judge_model:
        (out / "judge.json").unlink(missing_ok=True)
        return {}
    t0 = time.perf_counter()
    result = evaluate_judge(cfg)
    print(f"[time] eval judge: {time.perf_counter() - t0:.1f}s", flush=True)
    return {"judge": {"scores": {k: v["mean"] if v else None for k, v in result["scores"].items()},
                      "parse": result["parse"]}}


def _loss_brief(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "stories": r["stories"],
        "loss": r["per_story"]["loss"],
        "bits_per_byte": r["per_story"]["bits_per_byte"],
        "stream_loss": r["stream"]["loss"],
    }


def _eval_fingerprint(p: Pipeline) -> str | None:
    need = ["loss_procedural.json", "probes.json"]
    if _eval_config(p).diversity:
        need.append("diversity.json")
    if _judge_config(p).judge_model:
        need.append("judge.json")
    found = [p.model / "eval" / f for f in need]
    if not all(f.is_file() for f in found):
        return None
    return _hash([sha256_file(f) for f in found])


def _interp_configs(p: Pipeline) -> tuple[HeadsConfig, NeuronsConfig]:
    common = {"run": str(p.model), "out": str(p.model / "interp"), "device": p.torch_device()}
    return (build(HeadsConfig, {**p.section("heads"), **common}),
            build(NeuronsConfig, {**p.section("neurons"), **common}))


def _interp_key(p: Pipeline) -> dict[str, Any]:
    heads, neurons = _interp_configs(p)
    return {"heads": _asdict(heads, ("run", "out", "device")), "neurons": _asdict(neurons, ("run", "out", "device"))}


def _run_interpret(p: Pipeline, resume: bool) -> dict[str, Any]:
    heads_cfg, neurons_cfg = _interp_configs(p)
    t0 = time.perf_counter()
    heads = interpret_heads(heads_cfg)
    print(f"[time] interpret heads: {time.perf_counter() - t0:.1f}s", flush=True)
    t0 = time.perf_counter()
    neurons = interpret_neurons(neurons_cfg)
    print(f"[time] interpret neurons: {time.perf_counter() - t0:.1f}s", flush=True)
    return {
        "heads": heads["counts"],
        "distance_heads": heads["distance_heads"],
        "semantic_heads": heads["semantic_heads"],
        "neurons_layer": neurons["layer"],
        "neurons": neurons["summary"],
    }


def _interp_fingerprint(p: Pipeline) -> str | None:
    folder = p.model / "interp"
    found = [folder / "heads.json", *sorted(folder.glob("neurons_layer*.json"))]
    if len(found) < 2 or not found[0].is_file():
        return None
    return _hash([sha256_file(f) for f in found])


def _report_path(p: Pipeline) -> Path:
    return p.root / REPORT_FILE


def _report_config(p: Pipeline) -> ReportConfig:
    return build(ReportConfig, {**p.section("report"), "run": str(p.model), "out": str(_report_path(p))})


def _run_report(p: Pipeline, resume: bool) -> dict[str, Any]:
    return report(_report_config(p))


# --- experiments -------------------------------------------------------------------


def _sweep_config(p: Pipeline) -> SweepConfig:
    values = {**p.section("sweep"), "out": str(p.root / "sweep"), "data": str(p.data), "device": p.device}
    return build(SweepConfig, values)


def _run_sweep(p: Pipeline, resume: bool) -> dict[str, Any]:
    # The sweep folder keeps its own per-point records: an interrupted sweep continues where it stopped.
    cfg = _sweep_config(p)
    trained = sweep(cfg)
    drawn = sweep(dataclasses.replace(cfg, report=True))
    return {"points": trained["points"], "trained": trained["trained"], "results": trained["results"],
            "report": drawn.get("report")}


def _sweep_fingerprint(p: Pipeline) -> str | None:
    return _fingerprint_file(p.root / "sweep" / "results.json")


def _instruct_config(p: Pipeline, data: Path, out: Path) -> InstructConfig:
    return build(InstructConfig, {**p.section("instruct"), "data": str(data), "out": str(out)})


def _sets_config(p: Pipeline) -> InstructSetsConfig:
    return build(InstructSetsConfig, p.section("instruct_sets"))


def _heldout_config(p: Pipeline) -> SynthConfig:
    """[synth]'s job for the held-out stories the instruction sets are made from."""
    sets, corpus = _sets_config(p), _synth_config(p)
    if sets.start < corpus.start + corpus.n:
        raise UserError(f"[instruct_sets] start {sets.start} is inside the training stories "
                        f"({corpus.start}..{corpus.start + corpus.n - 1}); choose a start beyond them")
    return dataclasses.replace(corpus, n=sets.n, start=sets.start, out=str(p.instruct / "heldout"))


def _instruct_tokenize_config(p: Pipeline) -> TokenizeConfig:
    # The story model's tokenizer, so the fine-tuned model reads the same token ids.
    values = {**p.section("tokenize"), "data": (str(p.instruct / "corpus" / "stories.txt"),),
              "out": str(p.instruct / "data"), "tokenizer": str(p.data)}
    return build(TokenizeConfig, values)


def _instruct_key(p: Pipeline) -> dict[str, Any]:
    return {
        "instruct": _asdict(_instruct_config(p, p.corpus, p.instruct / "corpus"), ("data", "out", "resume", "progress")),
        "tokenize": _asdict(_instruct_tokenize_config(p), ("data", "out", "tokenizer", "workers")),
        "heldout": _asdict(_heldout_config(p), ("out", "resume", "progress")),
        "sets": dataclasses.asdict(_sets_config(p)),
    }


def _run_instruct(p: Pipeline, resume: bool) -> dict[str, Any]:
    # Summaries an LLM wrote continue from their log (nothing is paid for twice).
    corpus, heldout = p.instruct / "corpus", p.instruct / "heldout"
    made = instruct(dataclasses.replace(_instruct_config(p, p.corpus, corpus), resume=resume))
    tokenized = tokenize(_instruct_tokenize_config(p))
    synth(_heldout_config(p))
    held = instruct(dataclasses.replace(_instruct_config(p, heldout, p.instruct / "heldout-instruct"), resume=resume))
    records, _ = read_corpus(held["jsonl"])
    sets_cfg = _sets_config(p)
    for kind, entries in eval_sets(records, sets_cfg.n, sets_cfg.seed).items():
        atomic_write_text(p.instruct / "sets" / f"{kind}.jsonl", "".join(json.dumps(e) + "\n" for e in entries))
    return {"records": made["records"], "tokens": tokenized.get("train"), "sets": sets_cfg.n}


def _instruct_fingerprint(p: Pipeline) -> str | None:
    meta = p.instruct / "data" / "meta.json"
    sets = [p.instruct / "sets" / f"{kind}.jsonl" for kind in ("id", "ood")]
    if not meta.is_file() or not all(f.is_file() for f in sets):
        return None
    return _hash([json.loads(meta.read_text())["content_hash"], *(sha256_file(f) for f in sets)])


def _clean_instruct(p: Pipeline) -> None:
    for name in ("corpus", "heldout-instruct"):
        if (p.instruct / name / "summaries_0000.jsonl").is_file():
            # Summaries an LLM wrote cost money and time: never thrown away here.
            raise UserError(f"[instruct] changed, but {p.instruct / name} holds LLM summaries; "
                            "move that folder away or choose another --out")
    for name in ("corpus", "data", "heldout", "heldout-instruct", "sets"):
        _rmtree(p.instruct / name)


INSTRUCT_EVALS = (("story", "model"), ("instruct", "instruct/model"))
"""(label, run folder under the pipeline folder) of the models eval_instruct grades: before and after fine-tuning."""


def _eval_instruct_config(p: Pipeline, run: Path, kind: str) -> InstructEvalConfig:
    values = {**p.section("eval_instruct"), "run": str(run), "sets": str(p.instruct / "sets" / f"{kind}.jsonl"),
              "data": (str(p.instruct / "corpus"),), "write": False, "device": p.torch_device()}
    return build(InstructEvalConfig, values)


def _eval_instruct_files(p: Pipeline) -> list[Path]:
    return [p.instruct / "eval" / f"{label}-{kind}.json" for label, _ in INSTRUCT_EVALS for kind in ("id", "ood")]


def _run_eval_instruct(p: Pipeline, resume: bool) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for label, run in INSTRUCT_EVALS:
        for kind in ("id", "ood"):
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                r = evaluate_instruct(_eval_instruct_config(p, p.root / run, kind))
            atomic_write_json(p.instruct / "eval" / f"{label}-{kind}.json", r)
            print(f"[time] eval instruct {label} {kind}: {time.perf_counter() - t0:.1f}s", flush=True)
            summary[f"{label}-{kind}"] = {k: {"mean": v["mean"], "ci95": v["ci95"]} for k, v in r["checks"].items()}
    return summary


def _eval_instruct_fingerprint(p: Pipeline) -> str | None:
    files = _eval_instruct_files(p)
    return _hash([sha256_file(f) for f in files]) if all(f.is_file() for f in files) else None


def _ab_config(p: Pipeline) -> CurriculumABConfig:
    values = {**p.section("curriculum_ab"), "data": str(p.data), "out": str(p.root / "ab"), "device": p.device}
    return build(CurriculumABConfig, values)


def _run_ab(p: Pipeline, resume: bool) -> dict[str, Any]:
    # The A/B folder keeps its runs: an interrupted A/B continues (finished runs skipped, the cut one resumed).
    result = curriculum_ab(_ab_config(p))
    brief = ("steps_to_target", "steps_ci95", "final_val_loss")
    return {"target_val_loss": result["target_val_loss"],
            "arms": {arm: {k: r[k] for k in brief} for arm, r in result["arms"].items()}}


def _rmtree(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)


STAGES: tuple[Stage, ...] = (
    Stage(
        "synth",
        reads=(),
        config=lambda p: _asdict(_synth_config(p), ("out", "resume", "progress")),
        run=_run_synth,
        fingerprint=lambda p: _fingerprint_file(_synth_txt(p)),
        clean=_clean_synth,
        # The job's pacing, budget and paths are operational (config metadata): changing them continues it.
        resume_config=lambda p: result_fields(_synth_config(p)),
    ),
    Stage(
        "tokenize",
        reads=("synth",),
        config=lambda p: _asdict(_tokenize_config(p), ("data", "out", "workers")),
        run=_run_tokenize,
        fingerprint=_dataset_fingerprint,
        clean=lambda p: _rmtree(p.data),
    ),
    Stage(
        "train",
        reads=("tokenize",),
        config=_train_key,
        run=_run_train,
        fingerprint=_train_fingerprint,
        clean=_clean_train,
        resume_config=_train_resume_key,
    ),
    Stage(
        "sample",
        reads=("train",),
        config=lambda p: _asdict(_sample_config(p), ("run", "out", "stream", "device")),
        run=_run_sample,
        fingerprint=lambda p: _fingerprint_file(_samples_path(p)),
    ),
    Stage(
        "eval",
        reads=("tokenize", "train"),
        config=_eval_key,
        run=_run_eval,
        fingerprint=_eval_fingerprint,
    ),
    Stage(
        "interpret",
        reads=("tokenize", "train"),
        config=_interp_key,
        run=_run_interpret,
        fingerprint=_interp_fingerprint,
        clean=lambda p: _rmtree(p.model / "interp"),
    ),
    Stage(
        "report",
        reads=("train", "sample", "eval", "interpret"),
        config=lambda p: _asdict(_report_config(p), ("run", "out")),
        run=_run_report,
        fingerprint=lambda p: _fingerprint_file(_report_path(p)),
    ),
    Stage(
        "sweep",
        reads=("tokenize",),
        config=lambda p: result_fields(_sweep_config(p)),
        run=_run_sweep,
        fingerprint=_sweep_fingerprint,
        clean=lambda p: _rmtree(p.root / "sweep"),
        # More seeds extend the sweep (its trained points stay); any other change starts it over.
        resume_config=lambda p: {k: v for k, v in result_fields(_sweep_config(p)).items() if k not in EXTENDABLE},
    ),
    Stage(
        "instruct",
        reads=("synth", "tokenize"),
        config=_instruct_key,
        run=_run_instruct,
        fingerprint=_instruct_fingerprint,
        clean=_clean_instruct,
        resume_config=_instruct_key,
    ),
    Stage(
        "finetune",
        reads=("instruct", "train"),
        config=lambda p: _train_key(p, "finetune"),
        run=lambda p, resume: _run_train(p, resume, "finetune"),
        fingerprint=lambda p: _train_fingerprint(p, "finetune"),
        clean=lambda p: _clean_train(p, "finetune"),
        resume_config=lambda p: _train_resume_key(p, "finetune"),
    ),
    Stage(
        "eval_instruct",
        reads=("instruct", "train", "finetune"),
        config=lambda p: _asdict(_eval_instruct_config(p, p.model, "id"), ("run", "sets", "data", "write", "device")),
        run=_run_eval_instruct,
        fingerprint=_eval_instruct_fingerprint,
    ),
    Stage(
        "curriculum_ab",
        reads=("tokenize",),
        config=lambda p: result_fields(_ab_config(p)),
        run=_run_ab,
        fingerprint=lambda p: _fingerprint_file(p.root / "ab" / "results.json"),
        clean=lambda p: _rmtree(p.root / "ab"),
        # More arms or seeds extend the A/B; any other change starts it over.
        resume_config=lambda p: {k: v for k, v in result_fields(_ab_config(p)).items() if k not in SHARED},
    ),
)
"""The stages in order; a later stage is one more entry."""


def _keys(stage: Stage, p: Pipeline) -> tuple[str, str]:
    """(key, resume key): the resume key hashes the stage's resume config in place of its config."""
    config = stage.config(p)
    inputs = {name: p.fingerprints.get(name) for name in stage.reads}
    resume = stage.resume_config(p) if stage.resume_config is not None else config
    return _hash({"config": config, "inputs": inputs}), _hash({"config": resume, "inputs": inputs})


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
    recipe = load_recipe(cfg.recipe)
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
