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
import json
import math
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm  # type: ignore[import-untyped]

from tinystories import flops, rundir
from tinystories.data.loader import Layout, TrainBatches, to_device, val_windows
from tinystories.data.shards import Dataset, open_dataset
from tinystories.errors import UserError
from tinystories.train_config import TrainConfig, lr_at, resolve
from tinystories.train_setup import (
    Dist,
    barrier,
    build_model,
    compute_dtype,
    config_hash,
    dist_from_env,
    make_optimizer,
    make_scaler,
    pick_device,
    prepare_run,
    resume_state,
    start_process_group,
    step_seed,
    train_batches,
    write_run_files,
)

__all__ = ["TrainConfig", "compute_dtype", "lr_at", "make_optimizer", "make_scaler", "peak_flops", "resolve", "train"]


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


# --- the loop ----------------------------------------------------------------------


def train(cfg: TrainConfig, model_overrides: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Train (or resume) a run; returns a summary on rank 0 (None on other ranks)."""
    dist = dist_from_env()
    try:
        return _train(cfg, dict(model_overrides or {}), dist)
    finally:
        if dist.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _train(cfg: TrainConfig, overrides: dict[str, Any], dist: Dist) -> dict[str, Any] | None:
    # Every rank makes the same read-only checks, so a user error stops all of them.
    run_dir, cfg, model_cfg, data, ckpt = prepare_run(cfg, overrides, dist)
    assert cfg.seq_len is not None and cfg.data is not None
    device = pick_device(cfg.device, dist)
    start_process_group(dist, device)
    dataset = open_dataset(cfg.data)
    chash = config_hash(model_cfg, cfg, data["content_hash"])
    state = resume_state(run_dir, ckpt, chash, model_cfg.vocab_size, cfg.grad_accum, dist)
    layout = Layout(cfg.batch_size // (cfg.grad_accum * dist.world_size), cfg.grad_accum, dist.world_size)
    batches = train_batches(dataset, cfg, state)
    has_val = "val" in dataset.splits and dataset.splits["val"].n_tokens > cfg.seq_len
    val = val_windows(dataset.splits["val"], cfg.seq_len, cfg.eval_tokens) if has_val else None

    # Model and optimizer; weights from the checkpoint when resuming, or from --init.
    raw = build_model(model_cfg, cfg, ckpt).to(device)
    optimizer = make_optimizer(raw, cfg, device)
    if ckpt is not None:
        rundir.load_optimizer(optimizer, ckpt)
        rundir.set_rng_state(state["rng"])
    # Nothing is written before every check passed, so a refused run leaves the folder as it was.
    barrier(dist)
    if dist.main:
        write_run_files(run_dir, model_cfg, cfg, data, device, dist, state)
    barrier(dist)

    model: torch.nn.Module = raw
    ddp = None
    if dist.active:
        ddp = DistributedDataParallel(raw, device_ids=[device.index] if device.type == "cuda" else None)
        model = ddp
    if cfg.compile:
        model = rundir.compiled(model, device)

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
                        **({"curriculum": batches.curriculum.fingerprint} if batches.curriculum else {}),
                    },
                    "rng": rundir.rng_state(),
                    "val_loss": last_val[0] if last_val else None,
                    **({"scaler": scaler.state_dict()} if scaler is not None else {}),
                },
            )
            rundir.prune_checkpoints(run_dir, cfg.keep_ckpts)
        last_ckpt = step

    time_used = elapsed_before / cfg.time if cfg.time else 0.0  # share of the time cap spent, on rank 0's clock

    def out_of_budget(elapsed: float, check_time: bool) -> bool:
        nonlocal time_used
        if cfg.max_steps is not None and step >= cfg.max_steps:
            return True
        if cfg.max_tokens is not None and step * tokens_per_step >= cfg.max_tokens:
            return True
        if cfg.time is None or not check_time:
            return False
        if dist.active:
            # Wall clocks differ per rank; rank 0's decides, so that all stop together (and, with
            # decay_by_time, all use one learning rate).
            clock = torch.tensor([elapsed], dtype=torch.float32, device=device)
            torch.distributed.broadcast(clock, 0)
            elapsed = float(clock.item())
        time_used = elapsed / cfg.time
        return time_used >= 1.0

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
            lr = lr_at(step, cfg, time_used)
            for group in optimizer.param_groups:
                group["lr"] = lr
            torch.manual_seed(step_seed(cfg.seed, step, dist.rank))
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

            # Validate every eval_interval steps and at the last step of a step or token budget.
            due = cfg.eval_interval > 0 and step % cfg.eval_interval == 0
            do_eval = val is not None and (due or out_of_budget(0.0, check_time=False))
            if step % cfg.log_interval == 0 or do_eval:
                last_row = _metrics_row(
                    step, tokens_per_step, loss_sum, lr, grad_norm, t_mark, tokens_mark, flops_per_token, peak, dist,
                    elapsed_before + time.perf_counter() - t0,
                )
                if val is not None and do_eval:
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
                step, tokens_per_step, loss_sum, lr_at(step - 1, cfg, time_used), None, t_mark, tokens_mark, flops_per_token,
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
