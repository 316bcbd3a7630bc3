"""The one training loop: plain, gradient accumulation, DDP, resume.

    tinystories train --data DATASET --run RUN --preset llama-260k --max-steps 2000
    tinystories train --run RUN --resume --max-steps 4000               # continue, same trajectory
    torchrun --standalone --nproc_per_node 8 -m tinystories train --run-dir RUN ...   # same loop, DDP

(Under torchrun spell the run folder `--run-dir`: torchrun's own parser reads
`--run` as an abbreviation of its `--run-path`.)

Everything that trains a model goes through `train()`. The run is exactly
reproducible: batches are a pure function of (seed, step) (see
`tinystories.data.loader`), the learning rate is a pure function of the step,
and the RNG is re-seeded from (seed, step, rank) before each step, so a run
resumed from a checkpoint follows bit for bit the trajectory of one that was
never stopped. Settings that would change that trajectory are refused on
resume; the budget (max_steps, max_tokens, time) and the logging and
checkpoint intervals may change.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import importlib
import json
import math
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from tinystories import flops, rundir
from tinystories.config import OPERATIONAL, is_operational, parse_duration, result_fields
from tinystories.data.loader import Layout, TrainBatches, split_of, to_device, val_windows
from tinystories.data.shards import Dataset, open_dataset
from tinystories.errors import UserError
from tinystories.io import atomic_write_text


@dataclass
class TrainConfig:
    data: str | None = field(default=None, metadata=OPERATIONAL)
    """Dataset folder (from `tinystories tokenize`); on --resume, defaults to the run's."""
    run: str | None = field(default=None, metadata={"aliases": ("--run-dir",), **OPERATIONAL})
    """Run folder to create (default: runs/<preset>-<date>-<time>), or to continue with --resume."""
    preset: str = "llama-260k"
    """Model preset; any model field can be overridden with --model-<field>."""
    seq_len: int | None = None
    """Tokens per training window (default: the model's max_seq_len)."""
    batch_size: int = 32
    """Windows per optimizer step over all processes and micro-steps (the global batch)."""
    # Operational: micro-steps and processes only regroup the same global batch (equal up to rounding).
    grad_accum: int = field(default=1, metadata=OPERATIONAL)
    """Micro-steps per optimizer step on each process; micro-batch = batch_size / (grad_accum x processes)."""
    lr: float = 5e-4
    """Peak learning rate (the paper: 5e-4)."""
    min_lr: float | None = None
    """Learning rate at the end of the cosine decay (default: lr / 10)."""
    schedule: Literal["cosine", "constant"] = "cosine"
    """Learning rate after warmup: cosine decay to min_lr, or constant (the paper)."""
    warmup: int | None = None
    """Linear warmup steps (default: min(100, a tenth of the run))."""
    decay_steps: int | None = None
    """Length of the schedule in steps, warmup included; lr stays at min_lr after it (default: the run's max_steps or max_tokens)."""
    weight_decay: float = 0.1
    """AdamW weight decay, applied to matrices and embeddings only (parameters with >= 2 dims)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    eps: float = 1e-8
    """AdamW epsilon."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 = no clipping)."""
    seed: int = 1337
    """Seed for initialisation, data order and dropout."""
    max_steps: int | None = field(default=None, metadata=OPERATIONAL)
    """Stop after this many optimizer steps."""
    max_tokens: int | None = field(default=None, metadata=OPERATIONAL)
    """Stop once this many training tokens were seen (e.g. 20M)."""
    time: float | None = field(default=None, metadata={"parse": parse_duration, **OPERATIONAL})
    """Stop after this much training wall-clock time, summed over resumes (e.g. 90s, 10m, 2h)."""
    eval_interval: int = field(default=250, metadata=OPERATIONAL)
    """Validate every this many steps, and at the end (0 = only at the end)."""
    eval_tokens: int = field(default=100_000, metadata=OPERATIONAL)
    """Validation tokens scored per evaluation, evenly spread over the split (0 = the whole split)."""
    ckpt_interval: int = field(default=1000, metadata=OPERATIONAL)
    """Save a checkpoint every this many steps, and at the end (0 = only at the end)."""
    keep_ckpts: int = field(default=3, metadata=OPERATIONAL)
    """Keep only the newest this many checkpoints (0 = keep all)."""
    log_interval: int = field(default=10, metadata=OPERATIONAL)
    """Write a metrics line every this many steps."""
    device: str = "auto"
    """cpu, cuda, cuda:N, or auto (cuda when available)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Autocast dtype for forward/backward; weights stay fp32 (auto: bfloat16 on CUDA where supported, else float16 with a gradient scaler; float32 on CPU)."""
    compile: bool = False
    """Compile the model with torch.compile (slower start, faster steps on a GPU)."""
    progress: bool = field(default=True, metadata=OPERATIONAL)
    """Show a progress bar (only on a terminal, only on rank 0)."""
    tensorboard: bool = field(default=False, metadata=OPERATIONAL)
    """Also log to TensorBoard (in RUN/tb; needs the tensorboard package)."""
    resume: bool = field(default=False, metadata=OPERATIONAL)
    """Continue the run in --run from its newest checkpoint."""


# --- setup ------------------------------------------------------------------------


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


def _dist_from_env() -> Dist:
    # torchrun sets these; a plain `python -m tinystories train` has none.
    return Dist(
        rank=int(os.environ.get("RANK", "0")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
    )


def _pick_device(name: str, dist: Dist) -> torch.device:
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


def _step_seed(seed: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based) of a resolved config."""
    warmup = cfg.warmup or 0
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "constant":
        return cfg.lr
    assert cfg.decay_steps is not None and cfg.min_lr is not None
    span = max(1, cfg.decay_steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def resolve(cfg: TrainConfig, seq_len: int) -> TrainConfig:
    """Fill in the defaults that depend on the run (seq_len, min_lr, schedule length, warmup)."""
    tokens_per_step = cfg.batch_size * seq_len
    planned = cfg.max_steps
    if planned is None and cfg.max_tokens is not None:
        planned = math.ceil(cfg.max_tokens / tokens_per_step)
    decay = cfg.decay_steps
    if cfg.schedule == "cosine" and decay is None:
        if planned is None:
            raise UserError(
                "the cosine schedule needs a length: give --max-steps, --max-tokens or --decay-steps "
                "(or use --schedule constant)"
            )
        decay = planned
    horizon = decay if decay is not None else planned
    warmup = cfg.warmup
    if warmup is None:
        warmup = 100 if horizon is None else min(100, horizon // 10)
    min_lr = cfg.min_lr if cfg.min_lr is not None else cfg.lr / 10
    return dataclasses.replace(cfg, seq_len=seq_len, decay_steps=decay, warmup=warmup, min_lr=min_lr)


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


def build_model_config(preset_name: str, overrides: dict[str, Any], vocab_size: int) -> Any:
    """The preset with overrides applied; the vocabulary size always comes from the dataset."""
    from tinystories.presets import preset

    given = overrides.get("vocab_size")
    if given is not None and given != vocab_size:
        raise UserError(
            f"--model-vocab-size {given} differs from the dataset's tokenizer ({vocab_size} tokens)"
        )
    return preset(preset_name, **{**overrides, "vocab_size": vocab_size})


def config_hash(model_cfg: Any, cfg: TrainConfig, content_hash: str) -> str:
    """Hash of everything that determines the trajectory (stored in each checkpoint)."""
    blob = json.dumps(
        {"model": rundir.config_dict(model_cfg), "train": result_fields(cfg), "data": content_hash},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


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


def _make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    kwargs = {"lr": cfg.lr, "betas": (cfg.beta1, cfg.beta2), "eps": cfg.eps}
    # The fused kernel makes one pass over each parameter's state (4-5x faster than foreach on CPU).
    try:
        return torch.optim.AdamW(groups, fused=device.type in ("cuda", "cpu"), **kwargs)
    except (RuntimeError, TypeError):  # a device or torch build without the fused kernel
        return torch.optim.AdamW(groups, **kwargs)


# --- throughput -------------------------------------------------------------------


_CPU_PEAK: dict[int, float] = {}


def cpu_matmul_flops(seconds: float = 0.3, n: int = 1024) -> float:
    """Achievable fp32 FLOP/s of this CPU with the current torch thread count (timed matmuls).

    The fastest single product counts, not the average: on a shared machine a
    burst of other work during the measurement would otherwise lower the peak
    and push the reported MFU above 100%.
    """
    threads = torch.get_num_threads()
    if threads in _CPU_PEAK:
        return _CPU_PEAK[threads]
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    fastest, reps, t0 = float("inf"), 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or reps < 3:
        t = time.perf_counter()
        a @ b
        fastest = min(fastest, time.perf_counter() - t)
        reps += 1
    _CPU_PEAK[threads] = 2 * n**3 / fastest
    return _CPU_PEAK[threads]


_GPU_PEAK: dict[tuple[str, torch.dtype], float] = {}


def gpu_matmul_flops(device: torch.device, dtype: torch.dtype, seconds: float = 0.3, n: int = 8192) -> float:
    """Achievable dense matmul FLOP/s of a GPU in `dtype` (fp32 runs on TF32 tensor cores), timed.

    The fastest of a few timed batches of products counts, as on the CPU, so
    the reference is what this device really reaches (clocks, power limit), not a data sheet.
    """
    key = (str(device), dtype)
    if key in _GPU_PEAK:
        return _GPU_PEAK[key]
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    reps = 5
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    fastest, t0 = float("inf"), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            a @ b
        stop.record()
        stop.synchronize()
        fastest = min(fastest, start.elapsed_time(stop) / 1000 / reps)
    _GPU_PEAK[key] = 2 * n**3 / fastest
    return _GPU_PEAK[key]


def peak_flops(device: torch.device, dtype: torch.dtype = torch.float32) -> float | None:
    """Peak FLOP/s for MFU, measured: a timed matmul in the compute dtype on CUDA, fp32 on CPU."""
    if device.type == "cpu":
        return cpu_matmul_flops()
    if device.type == "cuda":
        return gpu_matmul_flops(device, dtype)
    return None


def train_flops_per_token(model: Any, seq_len: int) -> float:
    """Forward + backward FLOPs per training token at `seq_len` (the model's own count)."""
    return flops.flops_per_token(model.config, seq_len)


# --- one step -------------------------------------------------------------------


def make_scaler(device: torch.device) -> Any:
    """A loss scaler for float16 autocast (torch.amp.GradScaler; torch.cuda.amp's on old torch)."""
    try:
        return torch.amp.GradScaler(device.type)
    except (AttributeError, TypeError):  # torch < 2.3
        return torch.cuda.amp.GradScaler()


def optimizer_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: Any, grad_clip: float
) -> torch.Tensor | None:
    """Clip, step and clear the gradients; returns the gradient norm (a device tensor, never read here).

    With a scaler the gradients are unscaled before clipping, and a step whose
    gradients hold inf or nan is skipped (weights and optimizer state untouched)
    while the scale is lowered.
    """
    if scaler is not None:
        scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip) if grad_clip > 0 else None
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


class BatchLoader:
    """The (inputs, targets) of each (step, micro-step) in order, on the device.

    Threaded, a background thread reads the windows of the coming micro-steps
    (two ahead) into pinned memory, so the copy to the GPU is asynchronous and
    the step never waits on the disk or numpy. The batches are the same either
    way: they are a pure function of (seed, step, rank, micro-step).
    """

    def __init__(
        self, batches: TrainBatches, layout: Layout, rank: int, start_step: int, device: torch.device,
        threaded: bool = False, depth: int = 2,
    ):
        self.batches, self.layout, self.rank, self.device = batches, layout, rank, device
        self.thread: threading.Thread | None = None
        if threaded:
            self.queue: queue.Queue = queue.Queue(maxsize=depth)
            self.stop = threading.Event()
            self.thread = threading.Thread(target=self._fill, args=(start_step,), name="tinystories-batches", daemon=True)
            self.thread.start()

    def _host(self, step: int, micro: int) -> torch.Tensor:
        t = torch.from_numpy(self.batches.batch(step, self.layout, self.rank, micro))  # (B, T + 1)
        return t.pin_memory() if self.device.type == "cuda" else t

    def _put(self, item: tuple) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self, step: int) -> None:
        try:
            while True:
                for micro in range(self.layout.grad_accum):
                    if not self._put((step, micro, self._host(step, micro))):
                        return
                step += 1
        except BaseException as e:  # handed to the training loop, which raises it
            self._put((-1, -1, e))

    def get(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each (micro_batch, seq_len) long, of `step` at micro-step `micro`."""
        if self.thread is None:
            return to_device(self.batches.batch(step, self.layout, self.rank, micro), self.device)
        got_step, got_micro, t = self.queue.get()
        if isinstance(t, BaseException):
            raise t
        assert (got_step, got_micro) == (step, micro), "batches must be taken in order"
        t = t.to(self.device, non_blocking=True)
        return t[:, :-1].contiguous(), t[:, 1:].contiguous()

    def close(self) -> None:
        """Stop and join the thread (a thread alive at interpreter exit can abort the process)."""
        if self.thread is not None:
            self.stop.set()
            self.thread.join()
            self.thread = None


# --- validation -------------------------------------------------------------------


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    windows: np.ndarray,
    batch: int,
    device: torch.device,
    autocast: Any,
    dist: Dist,
) -> float:
    """Mean next-token loss (nats) over `windows`, split across processes."""
    was_training = model.training
    model.eval()
    mine = windows[dist.rank :: dist.world_size]
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for i in range(0, len(mine), batch):
        x, y = to_device(mine[i : i + batch], device)
        with autocast():
            out = model(x, y, logits="none")
        total[0] += out.loss.double() * y.numel()
        total[1] += y.numel()
    if dist.active:
        torch.distributed.all_reduce(total)
    model.train(was_training)
    return float(total[0] / total[1])


def _bytes_per_token(dataset: Dataset) -> float:
    """UTF-8 bytes per token of the validation split (bits per byte = nats / ln 2 / this)."""
    meta = dataset.meta
    split = meta.get("splits", {}).get("val", {})
    if split.get("bytes") and split.get("tokens"):
        return split["bytes"] / split["tokens"]
    return float(meta["bytes_per_token"])


# --- logging ----------------------------------------------------------------------


class _Log:
    """metrics.jsonl (rank 0), optional TensorBoard, and the progress bar."""

    def __init__(self, run_dir: Path, cfg: TrainConfig, dist: Dist, start: int):
        self.main = dist.main
        # Held open for the whole run (appending one line per log step); closed in close().
        self.file = open(run_dir / rundir.METRICS_FILE, "a", encoding="utf-8") if self.main else None  # noqa: SIM115
        self.tb = None
        if self.main and cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("--tensorboard needs the tensorboard package (pip install tensorboard)") from None
            self.tb = SummaryWriter(str(run_dir / "tb"))
        from tqdm import tqdm

        show = self.main and cfg.progress and sys.stderr.isatty()
        self.bar = tqdm(total=cfg.max_steps, initial=start, disable=not show, unit="step", dynamic_ncols=True)

    def write(self, row: dict[str, Any]) -> None:
        if not self.main:
            return
        assert self.file is not None
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, int | float):
                    self.tb.add_scalar(key, value, row["step"])
        post = {k: f"{row[k]:.4g}" for k in ("loss", "val_loss", "tokens_per_s") if row.get(k) is not None}
        self.bar.set_postfix(post, refresh=False)

    def close(self) -> None:
        self.bar.close()
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


def _truncate_metrics(run_dir: Path, step: int) -> None:
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


# --- the loop ----------------------------------------------------------------------


def _barrier(dist: Dist) -> None:
    if dist.active:
        torch.distributed.barrier()


def _prepare_run(cfg: TrainConfig, model_overrides: dict[str, Any], dist: Dist) -> tuple[Path, TrainConfig, Any, dict, Path | None]:
    """Check the run folder and settings; returns (run_dir, resolved cfg, model cfg, data section, checkpoint)."""
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
        return run_dir, merged, saved.model, data, ckpt

    if not cfg.data:
        raise UserError("--data is required: a dataset folder made by `tinystories tokenize`")
    dataset = open_dataset(cfg.data)
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
        "path": str(Path(cfg.data).resolve()),
        "content_hash": dataset.content_hash,
        "tokenizer_sha256": dataset.meta.get("tokenizer_sha256"),
    }
    return run_dir, resolved, model_cfg, data, None


def train(cfg: TrainConfig, model_overrides: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Train (or resume) a run; returns a summary on rank 0 (None on other ranks)."""
    dist = _dist_from_env()
    try:
        return _train(cfg, dict(model_overrides or {}), dist)
    finally:
        if dist.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _train(cfg: TrainConfig, overrides: dict[str, Any], dist: Dist) -> dict[str, Any] | None:
    from tinystories.model import GPT

    # Every rank makes the same read-only checks, so a user error stops all of them.
    run_dir, cfg, model_cfg, data, ckpt = _prepare_run(cfg, overrides, dist)
    assert cfg.seq_len is not None and cfg.data is not None
    device = _pick_device(cfg.device, dist)
    if dist.active and not torch.distributed.is_initialized():
        # DDP imports torch._dynamo. Imported while a process group exists, it keeps references to
        # the group that outlive destroy_process_group, and the group's communication threads then run
        # on into interpreter shutdown, where one that touches a Python object aborts the process
        # ("terminate called without an active exception"). Imported before, it holds none.
        importlib.import_module("torch._dynamo")
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    dataset = open_dataset(cfg.data)
    chash = config_hash(model_cfg, cfg, data["content_hash"])

    state: dict[str, Any] = {}
    if ckpt is not None:
        state = rundir.read_state(ckpt)
        if state.get("config_hash") != chash:
            raise UserError(f"checkpoint {ckpt} does not belong to {run_dir / rundir.CONFIG_FILE} (config hash differs)")
        rundir.load_tokenizer_checked(run_dir, model_cfg.vocab_size)
        regrouped = state.get("world_size", 1) * state.get("grad_accum", cfg.grad_accum) != dist.world_size * cfg.grad_accum
        if dist.main and regrouped:
            print(
                "tinystories: note: the global batch is now split differently over processes and micro-steps; "
                "the continuation is the same up to floating-point rounding",
                file=sys.stderr,
            )
    layout = Layout(cfg.batch_size // (cfg.grad_accum * dist.world_size), cfg.grad_accum, dist.world_size)
    batches = TrainBatches(split_of(dataset, "train"), cfg.seq_len, cfg.seed)
    has_val = "val" in dataset.splits and dataset.splits["val"].n_tokens > cfg.seq_len
    val = val_windows(dataset.splits["val"], cfg.seq_len, cfg.eval_tokens) if has_val else None

    # Model and optimizer; weights from the checkpoint when resuming.
    torch.manual_seed(cfg.seed)
    raw = GPT(model_cfg)
    if ckpt is not None:
        rundir.load_weights(raw, ckpt / rundir.MODEL_FILE)
    raw.to(device)
    optimizer = _make_optimizer(raw, cfg, device)
    if ckpt is not None:
        rundir.load_optimizer(optimizer, ckpt)
        rundir.set_rng_state(state["rng"])
    # Nothing is written before every check passed, so a refused run leaves the folder as it was.
    _barrier(dist)
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        rundir.write_config(run_dir, model_cfg, cfg, data)
        rundir.write_env(run_dir, device, dist.world_size, resumed=ckpt is not None)
        if ckpt is None:
            from tinystories.data.tokenizer import load_tokenizer

            load_tokenizer(cfg.data).save(run_dir)
        else:
            _truncate_metrics(run_dir, int(state["step"]))
    _barrier(dist)

    model: torch.nn.Module = raw
    ddp = None
    if dist.active:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(raw, device_ids=[device.index] if device.type == "cuda" else None)
        model = ddp
    if cfg.compile:
        model = torch.compile(model)  # type: ignore[assignment]

    dtype = compute_dtype(cfg.dtype, device)

    def autocast() -> Any:
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=dtype)

    # float16 overflows where bfloat16 does not: scale the loss, and skip steps whose gradients hit inf.
    scaler = make_scaler(device) if dtype == torch.float16 else None
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])

    bytes_per_token = _bytes_per_token(dataset) if val is not None else None
    tokens_per_step = cfg.batch_size * cfg.seq_len
    peak = peak_flops(device, dtype) if dist.main else None
    flops_per_token = train_flops_per_token(raw, cfg.seq_len)
    n_params = sum(p.numel() for p in raw.parameters())

    step = int(state.get("step", 0))
    elapsed_before = float(state.get("elapsed", 0.0))
    log = _Log(run_dir, cfg, dist, step)
    last_ckpt = step if ckpt is not None else -1
    last_row: dict[str, Any] = {}
    last_val: tuple[float, float] | None = None

    def checkpoint(elapsed: float) -> None:
        nonlocal last_ckpt
        if dist.main:
            rundir.save_checkpoint(
                run_dir,
                step,
                raw,
                optimizer,
                {
                    "tokens": step * tokens_per_step,
                    "elapsed": elapsed,
                    "config_hash": chash,
                    "world_size": dist.world_size,
                    "grad_accum": cfg.grad_accum,
                    "data": {
                        "seed": cfg.seed,
                        "next_window": step * cfg.batch_size,
                        "windows_per_epoch": batches.windows_per_epoch,
                        "epoch": step * cfg.batch_size / batches.windows_per_epoch,
                    },
                    "rng": rundir.rng_state(),
                    "val_loss": last_val[0] if last_val else None,
                    **({"scaler": scaler.state_dict()} if scaler is not None else {}),
                },
            )
            rundir.prune_checkpoints(run_dir, cfg.keep_ckpts)
        last_ckpt = step

    def out_of_budget(elapsed: float, check_time: bool) -> bool:
        if cfg.max_steps is not None and step >= cfg.max_steps:
            return True
        if cfg.max_tokens is not None and step * tokens_per_step >= cfg.max_tokens:
            return True
        if cfg.time is None or not check_time:
            return False
        if not dist.active:
            return elapsed >= cfg.time
        # Wall clocks differ per rank; rank 0 decides so that all stop together.
        over = torch.tensor([elapsed >= cfg.time], dtype=torch.float32, device=device)
        torch.distributed.broadcast(over, 0)
        return bool(over.item())

    raw.train()
    # On a GPU a background thread gathers (and pins) the next batches while the step runs;
    # on the CPU it would only compete with the step for the same cores.
    loader = BatchLoader(batches, layout, dist.rank, step, device, threaded=device.type == "cuda")
    t0 = time.perf_counter()
    t_mark, tokens_mark = t0, step * tokens_per_step
    loss_sum = torch.zeros((), device=device)
    try:
        # Nothing in this loop reads a value back from the device except at log steps, so a GPU never waits on the host.
        while not out_of_budget(elapsed_before + time.perf_counter() - t0, not dist.active or step % cfg.log_interval == 0):
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            torch.manual_seed(_step_seed(cfg.seed, step, dist.rank))
            loss_sum.zero_()
            for micro in range(layout.grad_accum):
                x, y = loader.get(step, micro)
                sync = ddp is None or micro == layout.grad_accum - 1
                with contextlib.nullcontext() if sync else ddp.no_sync():  # type: ignore[union-attr]
                    with autocast():
                        loss = model(x, y, logits="none").loss / layout.grad_accum
                    (loss if scaler is None else scaler.scale(loss)).backward()
                loss_sum += loss.detach()
            grad_norm = optimizer_step(raw, optimizer, scaler, cfg.grad_clip)
            step += 1
            log.bar.update()

            do_eval = val is not None and cfg.eval_interval > 0 and step % cfg.eval_interval == 0
            if step % cfg.log_interval == 0 or do_eval:
                last_row = _metrics_row(
                    step, tokens_per_step, loss_sum, lr, grad_norm, t_mark, tokens_mark, flops_per_token, peak, dist,
                    elapsed_before + time.perf_counter() - t0,
                )
                if do_eval:
                    last_val = _validate(raw, val, layout.micro_batch, device, autocast, dist, bytes_per_token)
                    last_row.update(val_loss=last_val[0], val_bpb=last_val[1])
                log.write(last_row)
                t_mark, tokens_mark = time.perf_counter(), step * tokens_per_step
            if cfg.ckpt_interval > 0 and step % cfg.ckpt_interval == 0:
                checkpoint(elapsed_before + time.perf_counter() - t0)
                t_mark = time.perf_counter()

        # Final metrics line, validation and checkpoint, unless this step already had them.
        elapsed = elapsed_before + time.perf_counter() - t0
        if last_row.get("step") != step and step > int(state.get("step", 0)):
            last_row = _metrics_row(
                step, tokens_per_step, loss_sum, lr_at(step - 1, cfg), None, t_mark, tokens_mark, flops_per_token,
                peak, dist, elapsed,
            )
            if val is not None:
                last_val = _validate(raw, val, layout.micro_batch, device, autocast, dist, bytes_per_token)
                last_row.update(val_loss=last_val[0], val_bpb=last_val[1])
            log.write(last_row)
        if last_ckpt != step:
            checkpoint(elapsed)
    finally:
        loader.close()
        log.close()
    if not dist.main:
        return None
    return {
        "run": str(run_dir),
        "step": step,
        "tokens": step * tokens_per_step,
        "params": n_params,
        "loss": last_row.get("loss"),
        "val_loss": last_val[0] if last_val else None,
        "val_bpb": last_val[1] if last_val else None,
        "tokens_per_s": last_row.get("tokens_per_s"),
        "mfu": last_row.get("mfu"),
        "elapsed_s": round(elapsed, 3),
        "checkpoint": str(rundir.checkpoint_dir(run_dir, step)),
    }


def _validate(
    model: torch.nn.Module, val: np.ndarray, batch: int, device: torch.device, autocast: Any, dist: Dist, bpt: float | None
) -> tuple[float, float]:
    loss = evaluate(model, val, batch, device, autocast, dist)
    bpb = loss / math.log(2) / bpt if bpt else float("nan")
    return loss, bpb


def _metrics_row(
    step: int,
    tokens_per_step: int,
    loss_sum: torch.Tensor,
    lr: float,
    grad_norm: torch.Tensor | None,
    t_mark: float,
    tokens_mark: int,
    flops_per_token: float,
    peak: float | None,
    dist: Dist,
    elapsed: float,
) -> dict[str, Any]:
    loss = loss_sum.detach().clone()
    if dist.active:
        torch.distributed.all_reduce(loss)
        loss /= dist.world_size
    # Reading the values back waits for the device to finish the interval's steps, so the clock is read
    # after it: on a GPU the host runs ahead, and timing before the read-back counts only the launches.
    loss_value = float(loss)
    norm_value = float(grad_norm) if grad_norm is not None else None
    tokens = step * tokens_per_step
    seconds = max(time.perf_counter() - t_mark, 1e-9)
    tps = (tokens - tokens_mark) / seconds  # tokens count all processes
    row: dict[str, Any] = {
        "step": step,
        "tokens": tokens,
        "loss": loss_value,
        "lr": lr,
        "tokens_per_s": round(tps, 1),
        "elapsed_s": round(elapsed, 3),
    }
    if norm_value is not None:
        row["grad_norm"] = norm_value
    if peak:
        row["mfu"] = round(tps * flops_per_token / (peak * dist.world_size), 5)
    return row
