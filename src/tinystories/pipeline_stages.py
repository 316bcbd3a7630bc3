"""The stages of `tinystories pipeline` that make and grade one model, and what every stage is built from.

`Pipeline` is one pipeline folder with its recipe; a `Stage` says what
configures it, what it reads, how it runs and how its outputs are
fingerprinted. The model's stages, in order (`MODEL_STAGE_LIST`): synth,
tokenize, train, sample, eval, interpret, report. Each calls its command's
library function; nothing here repeats their logic. The experiments' stages
are in `pipeline_experiments`; `pipeline` puts them together and runs them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tinystories import rundir
from tinystories.config import build, result_fields
from tinystories.data.stories import iter_stories
from tinystories.data.tokenize import TokenizeConfig, tokenize
from tinystories.errors import UserError
from tinystories.eval.diversity import DiversityConfig, evaluate_diversity
from tinystories.eval.judge import BUILTIN_BEGINNINGS, JudgeConfig, evaluate_judge
from tinystories.eval.loss import LossConfig, evaluate_loss
from tinystories.eval.probes import BUILTIN_SETS, ProbesConfig, evaluate_probes
from tinystories.interp.heads import HeadsConfig, interpret_heads
from tinystories.interp.neurons import NeuronsConfig, interpret_neurons
from tinystories.io import atomic_write_json, sha256_file
from tinystories.pipeline_note import REPORT_FILE
from tinystories.recipe import Recipe
from tinystories.report import ReportConfig, report
from tinystories.sample import SampleConfig, sample
from tinystories.summaries import NameFigures
from tinystories.synth.coherence import name_consistency
from tinystories.synth.generate import SynthConfig, synth
from tinystories.synth.world import BOY_NAMES, GIRL_NAMES
from tinystories.train import TrainConfig, train
from tinystories.train_config import without_later_defaults

REAL_STORIES = "tinystories/TinyStories-valid.first201.txt"
"""Default real stories for the side-by-side loss, under $TINYSTORIES_TESTDATA."""


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


def fingerprint_file(path: Path) -> str | None:
    return sha256_file(path) if path.is_file() else None


def hash_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def asdict_without(cfg: Any, leave_out: tuple[str, ...] = ()) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in leave_out}


def rmtree(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)



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


def synth_config(p: Pipeline) -> SynthConfig:
    return build(SynthConfig, {**p.section("synth"), "out": str(p.corpus)})



def _synth_txt(p: Pipeline) -> Path:
    return p.corpus / "stories.txt"


def _run_synth(p: Pipeline, resume: bool) -> dict[str, Any]:
    cfg = synth_config(p)
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
    rmtree(p.corpus)


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


def train_key(p: Pipeline, section: str = "train") -> dict[str, Any]:
    return {
        # A field added to TrainConfig later leaves the key of a folder that never set it unchanged.
        "train": without_later_defaults(
            asdict_without(_train_config(p, section=section), ("data", "run", "resume", "device", "progress"))
        ),
        "model": _model_section(p, section),
    }


def train_resume_key(p: Pipeline, section: str = "train") -> dict[str, Any]:
    # The training config's operational fields (budget, intervals, paths) continue the run when changed.
    cfg = without_later_defaults(result_fields(_train_config(p, section=section)))
    return {"train": {k: v for k, v in cfg.items() if k != "device"}, "model": _model_section(p, section)}


def run_train(p: Pipeline, resume: bool, section: str = "train") -> dict[str, Any]:
    run = Path(_train_paths(p, section)["run"])
    ckpt = rundir.latest_checkpoint(run) if resume else None
    if ckpt is None:
        clean_train(p, section)
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


def train_fingerprint(p: Pipeline, section: str = "train") -> str | None:
    ckpt = rundir.latest_checkpoint(Path(_train_paths(p, section)["run"]))
    if ckpt is None:
        return None
    return f"{ckpt.name}:{sha256_file(ckpt / rundir.MODEL_FILE)}"


def clean_train(p: Pipeline, section: str = "train") -> None:
    run = Path(_train_paths(p, section)["run"])
    if run.exists():
        print(f"[note] {section}: starting the model over (removing {run})", flush=True)
        shutil.rmtree(run)


def _samples_path(p: Pipeline) -> Path:
    return p.model / "samples" / "samples.json"


def _sample_config(p: Pipeline) -> SampleConfig:
    values = {**p.section("sample"), "run": str(p.model), "out": str(_samples_path(p)), "stream": False}
    return build(SampleConfig, {**values, "device": p.torch_device()})


# The figures the sample stage reports, for the model and for the real stories alike.
_NAME_FIGURES = tuple(f.name for f in dataclasses.fields(NameFigures))


def _run_sample(p: Pipeline, resume: bool) -> dict[str, Any]:
    # The closing note shows the samples; keep the command's own printing out of the log.
    with contextlib.redirect_stdout(io.StringIO()):
        sample(_sample_config(p))
    data = json.loads(_samples_path(p).read_text())
    consistency = _name_consistency(p, data["samples"])
    atomic_write_json(_samples_path(p), data)  # now with each sample's names
    summary = {k: consistency[k] for k in _NAME_FIGURES}
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
            **{k: ref[k] for k in _NAME_FIGURES},
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
        "probes": asdict_without(probes, ("run", "device")),
        "probes_sha256": fingerprint_file(Path(probes.probes)) if probes.probes else None,
        # Edits to the shipped sets must redo the stage too.
        "builtin_sha256": {f.name: sha256_file(f) for f in (*BUILTIN_SETS.values(), BUILTIN_BEGINNINGS)},
        "diversity": asdict_without(_diversity_config(p), ("run", "data", "device")) if ev.diversity else None,
        "judge": asdict_without(judge, ("run", "device", "cache", "progress", "concurrency", "timeout", "retries",
                                 "retry_base", "rpm", "tpm", "api_key_env")) if judge.judge_model else None,
        "judge_prompts_sha256": fingerprint_file(Path(judge.prompts)) if judge.prompts else None,
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
    return hash_json([sha256_file(f) for f in found])


def _interp_configs(p: Pipeline) -> tuple[HeadsConfig, NeuronsConfig]:
    common = {"run": str(p.model), "out": str(p.model / "interp"), "device": p.torch_device()}
    return (build(HeadsConfig, {**p.section("heads"), **common}),
            build(NeuronsConfig, {**p.section("neurons"), **common}))


def _interp_key(p: Pipeline) -> dict[str, Any]:
    heads, neurons = _interp_configs(p)
    return {"heads": asdict_without(heads, ("run", "out", "device")), "neurons": asdict_without(neurons, ("run", "out", "device"))}


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
        "induction_heads": heads["induction_heads"],
        "neurons_layer": neurons["layer"],
        "neurons": neurons["summary"],
    }


def _interp_fingerprint(p: Pipeline) -> str | None:
    folder = p.model / "interp"
    found = [folder / "heads.json", *sorted(folder.glob("neurons_layer*.json"))]
    if len(found) < 2 or not found[0].is_file():
        return None
    return hash_json([sha256_file(f) for f in found])


def _report_path(p: Pipeline) -> Path:
    return p.root / REPORT_FILE


def _report_config(p: Pipeline) -> ReportConfig:
    return build(ReportConfig, {**p.section("report"), "run": str(p.model), "out": str(_report_path(p))})


def _run_report(p: Pipeline, resume: bool) -> dict[str, Any]:
    return report(_report_config(p))


MODEL_STAGE_LIST: tuple[Stage, ...] = (
    Stage(
        "synth",
        reads=(),
        config=lambda p: asdict_without(synth_config(p), ("out", "resume", "progress")),
        run=_run_synth,
        fingerprint=lambda p: fingerprint_file(_synth_txt(p)),
        clean=_clean_synth,
        # The job's pacing, budget and paths are operational (config metadata): changing them continues it.
        resume_config=lambda p: result_fields(synth_config(p)),
    ),
    Stage(
        "tokenize",
        reads=("synth",),
        config=lambda p: asdict_without(_tokenize_config(p), ("data", "out", "workers")),
        run=_run_tokenize,
        fingerprint=_dataset_fingerprint,
        clean=lambda p: rmtree(p.data),
    ),
    Stage(
        "train",
        reads=("tokenize",),
        config=train_key,
        run=run_train,
        fingerprint=train_fingerprint,
        clean=clean_train,
        resume_config=train_resume_key,
    ),
    Stage(
        "sample",
        reads=("train",),
        config=lambda p: asdict_without(_sample_config(p), ("run", "out", "stream", "device")),
        run=_run_sample,
        fingerprint=lambda p: fingerprint_file(_samples_path(p)),
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
        clean=lambda p: rmtree(p.model / "interp"),
    ),
    Stage(
        "report",
        reads=("train", "sample", "eval", "interpret"),
        config=lambda p: asdict_without(_report_config(p), ("run", "out")),
        run=_run_report,
        fingerprint=lambda p: fingerprint_file(_report_path(p)),
    ),
)
"""The model's stages in order."""
