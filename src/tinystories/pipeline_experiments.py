"""The experiments' stages of `tinystories pipeline`: a sweep, the Instruct chain, the curriculum A/B.

They run after the model's stages (`pipeline_stages`) when a recipe's
`[pipeline] stages` names them: **sweep** (`tinystories sweep` on the
tokenize stage's dataset, then its report), **instruct** (Instruct records of
the corpus, tokenized with the story tokenizer, and held-out instruction
sets), **finetune** (the train stage's model fine-tuned on them),
**eval_instruct** (both models on the in-distribution and OOD sets) and
**curriculum_ab**. Each calls its command's library function.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinystories.config import build, result_fields
from tinystories.curriculum_ab import SHARED, CurriculumABConfig, curriculum_ab
from tinystories.data.instruct import eval_sets
from tinystories.data.tokenize import TokenizeConfig, tokenize
from tinystories.errors import UserError
from tinystories.eval.instruct import InstructEvalConfig, evaluate_instruct
from tinystories.io import atomic_write_json, atomic_write_text, sha256_file
from tinystories.pipeline_stages import (
    Pipeline,
    Stage,
    asdict_without,
    clean_train,
    fingerprint_file,
    hash_json,
    rmtree,
    run_train,
    synth_config,
    train_fingerprint,
    train_key,
    train_resume_key,
)
from tinystories.sweep import EXTENDABLE, SweepConfig, sweep
from tinystories.synth.generate import SynthConfig, synth
from tinystories.synth.instruct import InstructConfig, instruct
from tinystories.synth.stats import read_corpus


@dataclass
class InstructSetsConfig:
    """The instruct stage's held-out instruction sets for `eval instruct`: in-distribution and OOD apart."""

    n: int = field(default=50, metadata={"min": 1})
    """Sets of each kind, one per held-out story."""
    start: int = field(default=1_000_000, metadata={"min": 0})
    """Index of the first held-out story: [synth]'s job from this index on, beyond its training stories."""
    seed: int = 0
    """Seed for the order of each set's fields and its random sentence."""


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
    return fingerprint_file(p.root / "sweep" / "results.json")


def _instruct_config(p: Pipeline, data: Path, out: Path) -> InstructConfig:
    return build(InstructConfig, {**p.section("instruct"), "data": str(data), "out": str(out)})


def _sets_config(p: Pipeline) -> InstructSetsConfig:
    return build(InstructSetsConfig, p.section("instruct_sets"))


def _heldout_config(p: Pipeline) -> SynthConfig:
    """[synth]'s job for the held-out stories the instruction sets are made from."""
    sets, corpus = _sets_config(p), synth_config(p)
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
        "instruct": asdict_without(_instruct_config(p, p.corpus, p.instruct / "corpus"), ("data", "out", "resume", "progress")),
        "tokenize": asdict_without(_instruct_tokenize_config(p), ("data", "out", "tokenizer", "workers")),
        "heldout": asdict_without(_heldout_config(p), ("out", "resume", "progress")),
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
    return hash_json([json.loads(meta.read_text())["content_hash"], *(sha256_file(f) for f in sets)])


def _clean_instruct(p: Pipeline) -> None:
    for name in ("corpus", "heldout-instruct"):
        if (p.instruct / name / "summaries_0000.jsonl").is_file():
            # Summaries an LLM wrote cost money and time: never thrown away here.
            raise UserError(f"[instruct] changed, but {p.instruct / name} holds LLM summaries; "
                            "move that folder away or choose another --out")
    for name in ("corpus", "data", "heldout", "heldout-instruct", "sets"):
        rmtree(p.instruct / name)


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
    return hash_json([sha256_file(f) for f in files]) if all(f.is_file() for f in files) else None


def _ab_config(p: Pipeline) -> CurriculumABConfig:
    values = {**p.section("curriculum_ab"), "data": str(p.data), "out": str(p.root / "ab"), "device": p.device}
    return build(CurriculumABConfig, values)


def _run_ab(p: Pipeline, resume: bool) -> dict[str, Any]:
    # The A/B folder keeps its runs: an interrupted A/B continues (finished runs skipped, the cut one resumed).
    result = curriculum_ab(_ab_config(p))
    brief = ("steps_to_target", "steps_ci95", "final_val_loss")
    return {"target_val_loss": result["target_val_loss"],
            "arms": {arm: {k: r[k] for k in brief} for arm, r in result["arms"].items()}}


EXPERIMENT_STAGES: tuple[Stage, ...] = (
    Stage(
        "sweep",
        reads=("tokenize",),
        config=lambda p: result_fields(_sweep_config(p)),
        run=_run_sweep,
        fingerprint=_sweep_fingerprint,
        clean=lambda p: rmtree(p.root / "sweep"),
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
        config=lambda p: train_key(p, "finetune"),
        run=lambda p, resume: run_train(p, resume, "finetune"),
        fingerprint=lambda p: train_fingerprint(p, "finetune"),
        clean=lambda p: clean_train(p, "finetune"),
        resume_config=lambda p: train_resume_key(p, "finetune"),
    ),
    Stage(
        "eval_instruct",
        reads=("instruct", "train", "finetune"),
        config=lambda p: asdict_without(_eval_instruct_config(p, p.model, "id"), ("run", "sets", "data", "write", "device")),
        run=_run_eval_instruct,
        fingerprint=_eval_instruct_fingerprint,
    ),
    Stage(
        "curriculum_ab",
        reads=("tokenize",),
        config=lambda p: result_fields(_ab_config(p)),
        run=_run_ab,
        fingerprint=lambda p: fingerprint_file(p.root / "ab" / "results.json"),
        clean=lambda p: rmtree(p.root / "ab"),
        # More arms or seeds extend the A/B; any other change starts it over.
        resume_config=lambda p: {k: v for k, v in result_fields(_ab_config(p)).items() if k not in SHARED},
    ),
)
"""The experiments' stages in order."""
