"""`tinystories pipeline`: the stages of the method on one pipeline folder, from a recipe.

    tinystories pipeline --recipe demo --out runs/demo      # a built-in recipe (demo, smoke, micro)
    tinystories pipeline --recipe my.toml --out runs/mine   # the same stages, the user's settings

A recipe is a TOML file with one section per component, each holding fields
of that component's config dataclass: `[synth]` (SynthConfig), `[tokenize]`
(TokenizeConfig), `[model]` (ModelConfig fields over the preset), `[train]`
(TrainConfig), `[sample]` (SampleConfig), `[eval]` (EvalConfig below),
`[probes]` (ProbesConfig), `[diversity]` (DiversityConfig), `[judge]`
(JudgeConfig), `[heads]` (HeadsConfig), `[neurons]` (NeuronsConfig) and
`[report]` (ReportConfig). Paths between stages are the pipeline's to
choose, so a recipe may not set them. Built-in recipes live in
`tinystories/recipes/`.

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

Each stage calls its library function; nothing here repeats their logic. A
stage's key hashes its resolved config and the fingerprints of the outputs it
reads; a stage is skipped when its record holds the same key and its outputs
still have the recorded fingerprint, so a re-run does only what changed or was
not finished. Training resumes from its newest checkpoint when only its budget
(or nothing) changed, e.g. after a kill; any other change starts that stage's
outputs over. Adding a stage is one more entry in STAGES.
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
import tomllib
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from tinystories.config import build, parse_count, parse_duration
from tinystories.errors import UserError
from tinystories.io import atomic_write_json, atomic_write_text, sha256_file

STATE_FILE = "pipeline.json"
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


# --- recipes ----------------------------------------------------------------------


def _sections() -> dict[str, type]:
    from tinystories.data.tokenize import TokenizeConfig
    from tinystories.eval.diversity import DiversityConfig
    from tinystories.eval.judge import JudgeConfig
    from tinystories.eval.probes import ProbesConfig
    from tinystories.interp.heads import HeadsConfig
    from tinystories.interp.neurons import NeuronsConfig
    from tinystories.model import ModelConfig
    from tinystories.report import ReportConfig
    from tinystories.sample import SampleConfig
    from tinystories.synth.generate import SynthConfig
    from tinystories.train import TrainConfig

    return {
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
    }


# Fields each stage's paths and bookkeeping own: a recipe that sets them is refused.
OWNED = {
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
}


@dataclass
class Recipe:
    name: str
    """Recipe name (its file name without .toml)."""
    text: str
    """The TOML as given."""
    sections: dict[str, dict[str, Any]]
    """Section name -> its fields, values coerced to the fields' types."""


def builtin_recipes() -> list[str]:
    """Names of the recipes shipped in tinystories/recipes."""
    folder = resources.files("tinystories") / "recipes"
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def _coerce(cls: type, section: str, values: dict[str, Any]) -> dict[str, Any]:
    # TOML gives strings for counts and durations ("3M", "10m"): parse them as the CLI would.
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = {}
    for key, value in values.items():
        if key not in fields:
            raise UserError(f"recipe [{section}] has no field {key!r} ({cls.__name__})")
        f = fields[key]
        if isinstance(value, str) and "parse" in f.metadata:
            value = f.metadata["parse"](value)
        elif isinstance(value, str) and hints[key] in (int, int | None):
            value = parse_count(value)
        out[key] = value
    return out


def load_recipe(spec: str) -> Recipe:
    """A built-in recipe by name, or a TOML file; unknown sections and fields are errors."""
    path = Path(spec)
    if spec.endswith(".toml") or path.is_file():
        if not path.is_file():
            raise UserError(f"no recipe file at {spec}")
        text, name = path.read_text(encoding="utf-8"), path.stem
    else:
        if spec not in builtin_recipes():
            raise UserError(f"unknown recipe {spec!r}; built-in: {', '.join(builtin_recipes())}, or a .toml file")
        text = (resources.files("tinystories") / "recipes" / f"{spec}.toml").read_text(encoding="utf-8")
        name = spec
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"recipe {spec} is not valid TOML: {e}") from None
    known = _sections()
    sections: dict[str, dict[str, Any]] = {}
    for key, value in data.items():
        if key not in known or not isinstance(value, dict):
            raise UserError(f"recipe {spec}: unknown section or key {key!r} (sections: {', '.join(known)})")
        owned = sorted(set(value) & set(OWNED.get(key, ())))
        if owned:
            raise UserError(f"recipe {spec}: [{key}] may not set {', '.join(owned)}: the pipeline chooses it")
        sections[key] = _coerce(known[key], key, value)
    return Recipe(name=name, text=text, sections=sections)


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

    def section(self, name: str) -> dict[str, Any]:
        return dict(self.recipe.sections.get(name, {}))

    def torch_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

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
    resumable: bool = False
    """An unfinished or outdated attempt with the same resume key is continued, not started over."""
    budget: tuple[str, ...] = ()
    """Config keys left out of the resume key: changing them continues the stage's work."""


def _synth_config(p: Pipeline) -> Any:
    from tinystories.synth.generate import SynthConfig

    return build(SynthConfig, {**p.section("synth"), "out": str(p.corpus)})


def _synth_txt(p: Pipeline) -> Path:
    return p.corpus / "stories.txt"


def _run_synth(p: Pipeline, resume: bool) -> dict[str, Any]:
    from tinystories.synth.generate import synth

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


def _tokenize_config(p: Pipeline) -> Any:
    from tinystories.data.tokenize import TokenizeConfig

    return build(TokenizeConfig, {**p.section("tokenize"), "data": (str(_synth_txt(p)),), "out": str(p.data)})


def _run_tokenize(p: Pipeline, resume: bool) -> dict[str, Any]:
    from tinystories.data.tokenize import tokenize

    r = tokenize(_tokenize_config(p))
    return {k: r[k] for k in ("vocab_size", "train", "val", "bytes_per_token") if k in r}


def _dataset_fingerprint(p: Pipeline) -> str | None:
    meta = p.data / "meta.json"
    return json.loads(meta.read_text())["content_hash"] if meta.is_file() else None


def _train_config(p: Pipeline, resume: bool = False) -> Any:
    from tinystories.train import TrainConfig

    values = {**p.section("train"), "data": str(p.data), "run": str(p.model), "resume": resume}
    if p.time_cap is not None:
        values["time"] = p.time_cap
    values["device"] = p.device
    cfg = build(TrainConfig, values)
    if cfg.max_tokens is None and cfg.max_steps is None:
        raise UserError("recipe [train] needs a budget: max_tokens (or max_steps); time is only a safety cap")
    return cfg


def _train_key(p: Pipeline) -> dict[str, Any]:
    return {
        "train": _asdict(_train_config(p), ("data", "run", "resume", "device", "progress")),
        "model": p.section("model"),
    }


def _run_train(p: Pipeline, resume: bool) -> dict[str, Any]:
    from tinystories import rundir
    from tinystories.train import train

    ckpt = rundir.latest_checkpoint(p.model) if resume else None
    if ckpt is None:
        _clean_train(p)
    cfg = _train_config(p, resume=ckpt is not None)
    step0 = int(rundir.read_state(ckpt)["step"]) if ckpt is not None else 0
    if ckpt is not None:
        print(f"[resume] train: from step {step0} ({ckpt})", flush=True)
    r = train(cfg, model_overrides=p.section("model"))
    assert r is not None
    summary = {k: r[k] for k in ("step", "tokens", "params", "val_loss", "val_bpb", "tokens_per_s", "elapsed_s")}
    summary["resumed_from_step"] = step0 if ckpt is not None else None
    short_of_tokens = cfg.max_tokens is not None and r["tokens"] < cfg.max_tokens
    short_of_steps = cfg.max_steps is not None and r["step"] < cfg.max_steps
    if short_of_tokens or short_of_steps:
        summary["stopped_by_time_cap"] = True
        print(
            f"[note] train: the time cap stopped training at step {r['step']} ({r['tokens']:,} tokens), "
            "short of the budget; raise it (--time) and run again to continue",
            flush=True,
        )
    return summary


def _train_fingerprint(p: Pipeline) -> str | None:
    from tinystories import rundir

    ckpt = rundir.latest_checkpoint(p.model)
    if ckpt is None:
        return None
    return f"{ckpt.name}:{sha256_file(ckpt / rundir.MODEL_FILE)}"


def _clean_train(p: Pipeline) -> None:
    if p.model.exists():
        print(f"[note] train: starting the model over (removing {p.model})", flush=True)
        shutil.rmtree(p.model)


def _samples_path(p: Pipeline) -> Path:
    return p.model / "samples" / "samples.json"


def _sample_config(p: Pipeline) -> Any:
    from tinystories.sample import SampleConfig

    values = {**p.section("sample"), "run": str(p.model), "out": str(_samples_path(p)), "stream": False}
    return build(SampleConfig, {**values, "device": p.torch_device()})


def _run_sample(p: Pipeline, resume: bool) -> dict[str, Any]:
    from tinystories.sample import sample

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
    from tinystories.synth.coherence import name_consistency
    from tinystories.synth.world import BOY_NAMES, GIRL_NAMES

    known = GIRL_NAMES + BOY_NAMES
    result = name_consistency([s["prompt"] + s["completion"] for s in samples], known)
    for s, per in zip(samples, result["per_sample"], strict=True):
        s["names"] = per.pop("names")
    real = real_stories_path(_eval_config(p).real)
    if real is not None:
        from tinystories.data.stories import iter_stories

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


def _probes_config(p: Pipeline) -> Any:
    from tinystories.eval.probes import ProbesConfig

    return build(ProbesConfig, {**p.section("probes"), "run": str(p.model), "device": p.torch_device()})


def _diversity_config(p: Pipeline) -> Any:
    from tinystories.eval.diversity import DiversityConfig

    # The corpus is the pipeline's own training split.
    return build(DiversityConfig, {**p.section("diversity"), "run": str(p.model), "data": (str(p.data),),
                                   "split": "train", "device": p.torch_device()})


def _judge_config(p: Pipeline) -> Any:
    from tinystories.eval.judge import JudgeConfig

    return build(JudgeConfig, {**p.section("judge"), "run": str(p.model), "device": p.torch_device(),
                               "cache": str(p.root / "judge_cache.sqlite")})


def _eval_key(p: Pipeline) -> dict[str, Any]:
    from tinystories.eval.judge import BUILTIN_BEGINNINGS
    from tinystories.eval.probes import BUILTIN_SETS

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
    from tinystories.eval.loss import LossConfig, evaluate_loss
    from tinystories.eval.probes import evaluate_probes

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
    from tinystories.eval.diversity import evaluate_diversity

    if not enabled:
        (out / "diversity.json").unlink(missing_ok=True)
        return {}
    t0 = time.perf_counter()
    brief = evaluate_diversity(_diversity_config(p))
    print(f"[time] eval diversity: {time.perf_counter() - t0:.1f}s", flush=True)
    keep = ("completion_vs_original_rouge2_p", "between_generations_rouge2_f", "kgrams_never_in_corpus")
    return {"diversity": {k: brief[k] for k in keep}}


def _run_judge(p: Pipeline, out: Path) -> dict[str, Any]:
    from tinystories.eval.judge import evaluate_judge

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


def _interp_configs(p: Pipeline) -> tuple[Any, Any]:
    from tinystories.interp.heads import HeadsConfig
    from tinystories.interp.neurons import NeuronsConfig

    common = {"run": str(p.model), "out": str(p.model / "interp"), "device": p.torch_device()}
    return (build(HeadsConfig, {**p.section("heads"), **common}),
            build(NeuronsConfig, {**p.section("neurons"), **common}))


def _interp_key(p: Pipeline) -> dict[str, Any]:
    heads, neurons = _interp_configs(p)
    return {"heads": _asdict(heads, ("run", "out", "device")), "neurons": _asdict(neurons, ("run", "out", "device"))}


def _run_interpret(p: Pipeline, resume: bool) -> dict[str, Any]:
    from tinystories.interp.heads import interpret_heads
    from tinystories.interp.neurons import interpret_neurons

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
    return p.root / "report.html"


def _report_config(p: Pipeline) -> Any:
    from tinystories.report import ReportConfig

    return build(ReportConfig, {**p.section("report"), "run": str(p.model), "out": str(_report_path(p))})


def _run_report(p: Pipeline, resume: bool) -> dict[str, Any]:
    from tinystories.report import report

    return report(_report_config(p))


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
        resumable=True,
        # Operational settings of LLM jobs: changing them continues the job.
        budget=("budget_usd", "concurrency", "rpm", "tpm", "timeout", "retries", "retry_base", "api_key_env"),
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
        resumable=True,
        budget=("max_steps", "max_tokens", "time", "eval_interval", "eval_tokens", "ckpt_interval", "keep_ckpts",
                "log_interval", "tensorboard", "grad_accum"),
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
)
"""The stages in order; a later stage is one more entry."""


def _keys(stage: Stage, p: Pipeline) -> tuple[str, str]:
    """(key, resume key): the resume key leaves out the stage's budget fields."""
    config = stage.config(p)
    inputs = {name: p.fingerprints.get(name) for name in stage.reads}
    key = _hash({"config": config, "inputs": inputs})
    return key, _hash({"config": _without(config, stage.budget), "inputs": inputs})


def _without(config: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    # Budget fields sit at the top (synth) or one section down (train: {"train": ..., "model": ...}).
    return {
        k: _without(v, names) if isinstance(v, dict) else v for k, v in config.items() if k not in names
    }


# --- running -------------------------------------------------------------------------


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
    # Build every stage's config before any work, so a mistake in the recipe stops nothing half-done.
    for stage in STAGES:
        stage.config(p)
    state = _read_state(root)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / RECIPE_FILE, recipe.text)
    state["recipe"] = recipe.name
    t_all = time.perf_counter()
    outcome: dict[str, str] = {}
    for stage in STAGES:
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


# --- the closing note --------------------------------------------------------------------


def _shown_samples(samples: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    # One completion of each prompt first (the recipe may ask for several per prompt).
    firsts = list({s["prompt"]: s for s in reversed(samples)}.values())[::-1]
    return (firsts + [s for s in samples if s not in firsts])[:n]


def _mark_names(text: str, names: list[str], bold: bool) -> str:
    """The text with each character name in bold (a terminal) or in [brackets] (a log file)."""
    import re

    if not names:
        return text
    pattern = re.compile(r"\b(" + "|".join(re.escape(n) for n in names) + r")\b")
    return pattern.sub(lambda m: f"\033[1m{m.group()}\033[0m" if bold else f"[{m.group()}]", text)


def _consistency_lines(path: Path) -> list[str]:
    if not path.is_file():
        return []
    r = json.loads(path.read_text())
    ref = r.get("reference")
    line = (
        f"names: median {r['median_distinct_names']:g} distinct names per sample, "
        f"{r['protagonist_kept_share']:.0%} keep the protagonist's name to the end ({r['n_samples']} samples)"
    )
    if ref:
        line += (
            f"; real stories: median {ref['median_distinct_names']:g}, "
            f"{ref.get('protagonist_kept_share', float('nan')):.0%} keep it ({ref['source']})"
        )
    return [line]


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _target_lines(model: Path) -> list[str]:
    """What a small model trained on this corpus should reach, and by how much each is met or missed."""
    found: list[tuple[str, float, float, bool, str]] = []  # name, value, target, higher is better, unit
    probes = _read(model / "eval" / "probes.json")
    context = (probes or {}).get("by_category", {}).get("context")
    if context:
        found.append(("context probes, lower end of the 95% interval", context["ci95"][0] * 100, 60.0, True, "%"))
    heads = _read(model / "interp" / "heads.json")
    if heads:
        semantic = sum(h["kind"] == "semantic" for h in heads["heads"])
        found.append(("semantic (copying) heads", semantic, 1, True, ""))
    names = _read(model / "eval" / "consistency.json")
    if names:
        found.append(("distinct names per sample (median)", names["median_distinct_names"], 3, False, ""))
        found.append(("samples keeping the protagonist", names["protagonist_kept_share"] * 100, 80.0, True, "%"))
    real = _read(model / "eval" / "loss_real.json")
    if real:
        found.append(("bits per byte on real stories", real["per_story"]["bits_per_byte"], 2.0, False, ""))
    lines = ["targets:"] if found else []
    for name, value, target, higher, unit in found:
        ok = value >= target if higher else value <= target
        gap = "met" if ok else f"missed by {abs(value - target):.3g}{' points' if unit else ''}"
        lines.append(f"  {name}: {value:.3g}{unit} ({'>=' if higher else '<='} {target:g}{unit}: {gap})")
    return lines


def closing_note(root: Path, n_samples: int = 3, bold: bool = False) -> str:
    """Samples with their names marked, name consistency, loss and bits per byte on procedural vs real
    text, and the probes, from the stage outputs."""
    model = root / "model"
    lines = [f"== {root} =="]
    samples = model / "samples" / "samples.json"
    if samples.is_file():
        lines.append("samples (character names marked):")
        for s in _shown_samples(json.loads(samples.read_text())["samples"], n_samples):
            text = " ".join((s["prompt"] + s["completion"]).split())
            lines.append(f"  > {_mark_names(text, s.get('names', []), bold)}")
    lines += _consistency_lines(model / "eval" / "consistency.json")
    loss = {name: model / "eval" / f"loss_{name}.json" for name in ("procedural", "real")}
    found = {name: json.loads(f.read_text()) for name, f in loss.items() if f.is_file()}
    if found:
        header = "".join(f"{name:>14}" for name in found)
        lines.append(f"{'':<22}{header}")
        lines.append(f"{'stories':<22}" + "".join(f"{r['stories']:>14}" for r in found.values()))
        lines.append(f"{'loss (per story)':<22}" + "".join(f"{r['per_story']['loss']:>14.3f}" for r in found.values()))
        lines.append(
            f"{'bits per byte':<22}" + "".join(f"{r['per_story']['bits_per_byte']:>14.3f}" for r in found.values())
        )
    probes = model / "eval" / "probes.json"
    if probes.is_file():
        r = json.loads(probes.read_text())
        lo, hi = r["ci95"]
        lines.append(
            f"probes: {r['accuracy']:.1%} of {r['n']} (95% CI {lo:.1%}-{hi:.1%}), chance {r['chance']:.1%}"
            + ("" if r["significant"] else "  [not above chance]")
        )
        sources = r.get("by_source", {})
        groups = {**(sources if len(sources) > 1 else {}), **r.get("by_category", {})}
        for name, c in groups.items():
            lines.append(f"  {name:<10} {c['accuracy']:.1%} of {c['n']} (95% CI {c['ci95'][0]:.1%}-{c['ci95'][1]:.1%}),"
                         f" chance {c['chance']:.1%}")
    diversity = model / "eval" / "diversity.json"
    if diversity.is_file():
        r = json.loads(diversity.read_text())
        rouge = r["completion_vs_original"]
        never = r["kgrams_in_corpus"].get("4", {}).get("never_share")
        lines.append(
            f"memorization: completions vs the cut stories' true endings, Rouge-2 precision mean {rouge['mean']:.3f}"
            + (f"; 4-grams never in the corpus {never:.1%}" if never is not None else "")
        )
    judge = model / "eval" / "judge.json"
    if judge.is_file():
        r = json.loads(judge.read_text())
        cells = ", ".join(f"{k} {v['mean']:.1f}" for k, v in r["scores"].items() if v and v["mean"] is not None)
        lines.append(f"judge ({r['judge']['model']}): {cells or 'no grades'}; "
                     f"parse failures {r['parse']['failure_rate']:.0%}")
    lines += _target_lines(model)
    lines.append(f"outputs: {model} (eval/, samples/, interp/), records: {root / STATE_FILE}")
    report = root / "report.html"
    if report.is_file():
        lines.append(f"report: {report}")
    return "\n".join(lines)


def run_command(cfg: PipelineConfig) -> None:
    """`tinystories pipeline`: the stages, each phase's time, then the closing note."""
    result = run_pipeline(cfg)
    print(f"[time] pipeline: {result['seconds']:.1f}s", flush=True)
    print(closing_note(Path(result["run"]), bold=sys.stdout.isatty()), flush=True)
    sys.stdout.flush()
