"""Everything a training run checks and builds before its first step.

Where the process sits (rank, device, process group), the checks of a new run,
a resumed one (nothing that changes the trajectory may change) and one started
from another run's weights (`--init`), the model config, the optimizer and the
loss scaler. Every rank makes the same read-only checks, so a user error stops
all of them, and nothing is written before every check passed.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from tinystories import rundir
from tinystories.config import is_operational, result_fields
from tinystories.data.curriculum import Curriculum
from tinystories.data.loader import TrainBatches, split_of
from tinystories.data.shards import Dataset, open_dataset
from tinystories.data.tokenizer import load_tokenizer
from tinystories.errors import UserError
from tinystories.io import atomic_write_text
from tinystories.model import GPT, ModelConfig
from tinystories.presets import preset
from tinystories.train_config import TrainConfig, resolve, without_later_defaults

# --- processes and devices ------------------------------------------------------------


@dataclass
class Dist:
    """Where this process sits in a (possibly single-process) job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def dist_from_env() -> Dist:
    # torchrun sets these; a plain `python -m tinystories train` has none.
    return Dist(
        rank=int(os.environ.get("RANK", "0")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
    )


def pick_device(name: str, dist: Dist) -> torch.device:
    device = rundir.resolve_device(name, dist.local_rank if dist.active else None)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        # TF32 tensor cores for the fp32 matmuls left outside autocast (and all of them at --dtype float32).
        torch.set_float32_matmul_precision("high")
    return device


def compute_dtype(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype that `--dtype name` means on `device` (float32: no autocast)."""
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def step_seed(seed: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


def barrier(dist: Dist) -> None:
    if dist.active:
        torch.distributed.barrier()


def start_process_group(dist: Dist, device: torch.device) -> None:
    """Join the job's process group (several processes only; gloo on the CPU, nccl on CUDA)."""
    if not dist.active or torch.distributed.is_initialized():
        return
    # DDP imports torch._dynamo. Imported while a process group exists, it keeps references to
    # the group that outlive destroy_process_group, and the group's communication threads then run
    # on into interpreter shutdown, where one that touches a Python object aborts the process
    # ("terminate called without an active exception"). Imported before, it holds none.
    importlib.import_module("torch._dynamo")
    torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


# --- model, optimizer, scaler ------------------------------------------------------


def build_model_config(preset_name: str, overrides: dict[str, Any], vocab_size: int) -> ModelConfig:
    """The preset with overrides applied; the vocabulary size always comes from the dataset."""
    given = overrides.get("vocab_size")
    if given is not None and given != vocab_size:
        raise UserError(
            f"--model-vocab-size {given} differs from the dataset's tokenizer ({vocab_size} tokens)"
        )
    return preset(preset_name, **{**overrides, "vocab_size": vocab_size})


def build_model(model_cfg: ModelConfig, cfg: TrainConfig, ckpt: Path | None) -> GPT:
    """The model, initialised from the seed, then given the checkpoint's weights or --init's."""
    torch.manual_seed(cfg.seed)
    model = GPT(model_cfg)
    if ckpt is not None:
        rundir.load_weights(model, ckpt / rundir.MODEL_FILE)
    elif cfg.init:
        load_init(model, cfg.init)
    return model


def config_hash(model_cfg: ModelConfig, cfg: TrainConfig, content_hash: str) -> str:
    """Hash of everything that determines the trajectory (stored in each checkpoint)."""
    train = without_later_defaults(result_fields(cfg))
    blob = json.dumps(
        {"model": rundir.config_dict(model_cfg), "train": train, "data": content_hash},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    betas = (cfg.beta1, cfg.beta2)
    # The fused kernel makes one pass over each parameter's state (4-5x faster than foreach on CPU).
    try:
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, eps=cfg.eps, fused=device.type in ("cuda", "cpu"))
    except (RuntimeError, TypeError):  # a device or torch build without the fused kernel
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, eps=cfg.eps)


def make_scaler(device: torch.device) -> Any:
    """A loss scaler for float16 autocast (torch.amp.GradScaler; torch.cuda.amp's on old torch)."""
    try:
        return torch.amp.GradScaler(device.type)
    except (AttributeError, TypeError):  # torch < 2.3
        return torch.cuda.amp.GradScaler()


# --- checks before the first step ------------------------------------------------


def _check_basic(cfg: TrainConfig, dist: Dist) -> None:
    for name in ("batch_size", "grad_accum"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if cfg.batch_size % (cfg.grad_accum * dist.world_size):
        raise UserError(
            f"--batch-size {cfg.batch_size} is not divisible by grad_accum x processes = "
            f"{cfg.grad_accum} x {dist.world_size}"
        )
    if cfg.max_steps is None and cfg.max_tokens is None and cfg.time is None:
        raise UserError("no budget: give --max-steps, --max-tokens or --time")
    if cfg.log_interval < 1:
        raise UserError("--log-interval must be at least 1")


def _merge_resume(saved: TrainConfig, given: TrainConfig) -> TrainConfig:
    """The saved config with the given budget; other settings must not change."""
    defaults = TrainConfig()
    changes = {}
    for f in dataclasses.fields(TrainConfig):
        new, old, default = getattr(given, f.name), getattr(saved, f.name), getattr(defaults, f.name)
        if new in (default, old):
            continue
        if is_operational(f):
            changes[f.name] = new
        else:
            flag = "--" + f.name.replace("_", "-")
            raise UserError(
                f"cannot resume with {flag} {new} (the run used {old}): it would change the trajectory; "
                f"only the budget and intervals may change, or start a new --run"
            )
    return dataclasses.replace(saved, **changes)


def _check_model_resume(saved: Any, overrides: dict[str, Any]) -> None:
    for name, value in overrides.items():
        old = getattr(saved, name)
        if name == "windows":
            value = tuple(value)
        if value != old:
            flag = "--model-" + name.replace("_", "-")
            raise UserError(
                f"cannot resume with {flag} {value} (the run used {old}): the checkpoint belongs to the saved model"
            )


class RunStart(NamedTuple):
    """What a checked run starts from."""

    run_dir: Path
    cfg: TrainConfig
    """Resolved: every default that depends on the run filled in."""
    model_cfg: ModelConfig
    data: dict[str, Any]
    """The [data] section of config.toml."""
    ckpt: Path | None
    """The checkpoint to resume from (None for a new run)."""


def prepare_run(cfg: TrainConfig, model_overrides: dict[str, Any], dist: Dist) -> RunStart:
    """Check the run folder and settings of a new or resumed run."""
    if cfg.resume:
        if not cfg.run:
            raise UserError("--resume needs --run (the run folder to continue)")
        run_dir = Path(cfg.run)
        if not rundir.is_run(run_dir):
            raise UserError(f"nothing to resume: {run_dir} is not a run folder (no {rundir.CONFIG_FILE})")
        ckpt = rundir.latest_checkpoint(run_dir)
        if ckpt is None:
            raise UserError(f"nothing to resume: run {run_dir} has no checkpoint yet")
        saved = rundir.read_config(run_dir)
        if saved.train is None:
            raise UserError(f"run {run_dir} was not made by training ({rundir.CONFIG_FILE} has no [train]); it cannot be resumed")
        merged = _merge_resume(saved.train, cfg)
        _check_model_resume(saved.model, model_overrides)
        data_path = cfg.data or saved.data.get("path")
        if not data_path:
            raise UserError(f"{run_dir / rundir.CONFIG_FILE} names no dataset; pass --data")
        dataset = open_dataset(data_path)
        if dataset.content_hash != saved.data.get("content_hash"):
            raise UserError(
                f"dataset {data_path} has content hash {dataset.content_hash}, but the run was trained on "
                f"{saved.data.get('content_hash')}: resuming on other data would change the trajectory"
            )
        merged = dataclasses.replace(merged, data=str(data_path), run=str(run_dir), resume=True)
        _check_basic(merged, dist)
        data = {**saved.data, "path": str(Path(data_path).resolve())}
        return RunStart(run_dir, merged, saved.model, data, ckpt)

    if not cfg.data:
        raise UserError("--data is required: a dataset folder made by `tinystories tokenize`")
    data_path = cfg.data
    dataset = open_dataset(data_path)
    if cfg.init:
        cfg, model_cfg = _init_source(cfg, model_overrides, dataset)
    else:
        model_cfg = build_model_config(cfg.preset, model_overrides, dataset.vocab_size)
    seq_len = cfg.seq_len or model_cfg.max_seq_len
    if seq_len > model_cfg.max_seq_len:
        raise UserError(
            f"--seq-len {seq_len} exceeds the model's max_seq_len {model_cfg.max_seq_len} "
            "(raise it with --model-max-seq-len)"
        )
    if cfg.run is None and dist.active:
        raise UserError("--run is required with several processes (each would pick its own default name)")
    run_dir = Path(cfg.run or Path("runs") / f"{cfg.preset}-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise UserError(f"run folder {run_dir} already exists; pass --resume to continue it, or choose another --run")
    _check_basic(cfg, dist)
    resolved = resolve(dataclasses.replace(cfg, run=str(run_dir)), seq_len)
    data = {
        "path": str(Path(data_path).resolve()),
        "content_hash": dataset.content_hash,
        "tokenizer_sha256": dataset.meta.get("tokenizer_sha256"),
    }
    return RunStart(run_dir, resolved, model_cfg, data, None)


def _split_init(spec: str) -> tuple[Path, int | None]:
    """`RUN` or `RUN:step` -> (run folder, step or None for the newest)."""
    head, sep, tail = spec.rpartition(":")
    return (Path(head), int(tail)) if sep and tail.isdigit() else (Path(spec), None)


def _init_source(cfg: TrainConfig, overrides: dict[str, Any], dataset: Dataset) -> tuple[TrainConfig, Any]:
    """Check --init against the dataset; returns cfg with --init pinned to `RUN:step` and the run's model config."""
    assert cfg.init is not None
    src, step = _split_init(cfg.init)
    if not rundir.is_run(src):
        raise UserError(f"--init {cfg.init}: {src} is not a run folder (no {rundir.CONFIG_FILE})")
    ckpt = rundir.find_checkpoint(src, step)
    source = rundir.read_config(src)
    if source.model.vocab_size != dataset.vocab_size:
        raise UserError(
            f"--init {cfg.init}: the run's vocabulary has {source.model.vocab_size} tokens, the dataset's "
            f"{dataset.vocab_size}: the weights belong to another tokenizer"
        )
    theirs = rundir.load_tokenizer_checked(src, source.model.vocab_size)
    if theirs.sha256 != load_tokenizer(dataset.path).sha256:
        raise UserError(
            f"--init {cfg.init}: the run's tokenizer differs from the dataset's ({dataset.path}): "
            "the same ids would mean other tokens"
        )
    fields = {f.name for f in dataclasses.fields(source.model)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise UserError(f"unknown model option(s): {', '.join(unknown)}")
    values: dict[str, Any] = {k: tuple(v) if k == "windows" and v is not None else v for k, v in overrides.items()}
    model_cfg = dataclasses.replace(source.model, **values)
    pinned = f"{src.resolve()}:{int(rundir.read_state(ckpt)['step'])}"
    return dataclasses.replace(cfg, init=pinned), model_cfg


def load_init(model: torch.nn.Module, spec: str) -> None:
    src, step = _split_init(spec)
    try:
        rundir.load_weights(model, rundir.find_checkpoint(src, step) / rundir.MODEL_FILE)
    except UserError as e:
        raise UserError(f"--init {spec} does not fit this model: {e}") from None


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop metrics lines past `step` (written after the checkpoint we resume from)."""
    path = run_dir / rundir.METRICS_FILE
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if row.get("step", 0) <= step:
            keep.append(line)
    atomic_write_text(path, "".join(k + "\n" for k in keep))


def resume_state(
    run_dir: Path, ckpt: Path | None, chash: str, vocab_size: int, grad_accum: int, dist: Dist
) -> dict[str, Any]:
    """The checkpoint's state.json, checked against the run (empty for a new run)."""
    if ckpt is None:
        return {}
    state = rundir.read_state(ckpt)
    if state.get("config_hash") != chash:
        raise UserError(f"checkpoint {ckpt} does not belong to {run_dir / rundir.CONFIG_FILE} (config hash differs)")
    rundir.load_tokenizer_checked(run_dir, vocab_size)
    regrouped = state.get("world_size", 1) * state.get("grad_accum", grad_accum) != dist.world_size * grad_accum
    if dist.main and regrouped:
        print(
            "tinystories: note: the global batch is now split differently over processes and micro-steps; "
            "the continuation is the same up to floating-point rounding",
            file=sys.stderr,
        )
    return state


def train_batches(dataset: Dataset, cfg: TrainConfig, state: dict[str, Any]) -> TrainBatches:
    """The training windows, in the curriculum's order when there is one (checked against a resumed run)."""
    assert cfg.seq_len is not None
    split = split_of(dataset, "train")
    curriculum = None
    if cfg.curriculum:
        assert cfg.curriculum_steps is not None
        curriculum = Curriculum(
            split, cfg.seq_len, cfg.curriculum, cfg.seed, cfg.curriculum_steps * cfg.batch_size,
            cfg.curriculum_start, cfg.curriculum_reverse,
        )
        if state and state.get("data", {}).get("curriculum") != curriculum.fingerprint:
            raise UserError(f"--curriculum {cfg.curriculum}: its scores differ from those the run was trained with")
    return TrainBatches(split, cfg.seq_len, cfg.seed, curriculum, story_starts=cfg.windows == "stories")


def write_run_files(
    run_dir: Path, model_cfg: ModelConfig, cfg: TrainConfig, data: dict[str, Any], device: torch.device,
    dist: Dist, state: dict[str, Any],
) -> None:
    """config.toml, env.json and the tokenizer of a new run; a resumed one loses its metrics past the checkpoint."""
    assert cfg.data is not None
    run_dir.mkdir(parents=True, exist_ok=True)
    rundir.write_config(run_dir, model_cfg, cfg, data)
    rundir.write_env(run_dir, device, dist.world_size, resumed=bool(state))
    if not state:
        load_tokenizer(cfg.data).save(run_dir)
    else:
        truncate_metrics(run_dir, int(state["step"]))
