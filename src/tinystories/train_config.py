"""What a training run is asked to do: its config, and what follows from it (schedule, defaults).

Kept apart from the loop so that the run folder (`rundir`) can read a run's
`[train]` section without importing the training machinery.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from tinystories.config import OPERATIONAL, parse_duration
from tinystories.errors import UserError


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
    windows: Literal["stream", "stories"] = "stream"
    """Where training windows start: stream cuts the token stream at a seeded offset (every token is predicted once an epoch; most windows begin mid-story); stories starts each window at a story's first token, so the model reads every story from its beginning (the window's rest is the next story's opening; a story longer than the window is cut)."""
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
    decay_by_time: bool = False
    """With --time, the cosine decay follows the clock as well as the steps: its progress is the larger of the two, so a run the time cap stops has still decayed to min_lr (a slow machine trains fewer tokens rather than stopping mid-schedule); the learning rate then depends on the machine's speed."""
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
    """Compile the model with torch.compile: 20-35 s to start (35 the first time on a machine; the compiled kernels are cached), then faster steps (a third more tokens/s for the demo model on 2 CPU cores); on a CPU it needs a C++ compiler and runs eager without one."""
    progress: bool = field(default=True, metadata=OPERATIONAL)
    """Show a progress bar (only on a terminal, only on rank 0)."""
    tensorboard: bool = field(default=False, metadata=OPERATIONAL)
    """Also log to TensorBoard (in RUN/tb; needs the tensorboard package)."""
    resume: bool = field(default=False, metadata=OPERATIONAL)
    """Continue the run in --run from its newest checkpoint."""
    init: str | None = None
    """Start from the weights of another run, RUN or RUN:step (its model; fresh optimizer, step 0; the dataset must use its tokenizer)."""
    curriculum: str | None = None
    """Draw the first windows from the easiest stories: length, rare, diversity, compress, or a file of one score per training story (default: uniform random order)."""
    curriculum_steps: int | None = None
    """Steps over which the curriculum's pool grows from the easiest windows to all; uniform random order after (default: half the run)."""
    curriculum_start: float = 0.1
    """Fraction of the windows, the easiest, that the curriculum draws from at step 0."""
    curriculum_reverse: bool = False
    """Order the curriculum hard to easy (a control)."""


# Fields added after runs existed: left out of the config hash while at their defaults, so those runs still resume.
LATER_FIELDS = (
    "init", "curriculum", "curriculum_steps", "curriculum_start", "curriculum_reverse", "windows", "decay_by_time",
)


def without_later_defaults(fields: dict[str, Any]) -> dict[str, Any]:
    """A TrainConfig's fields as hashed into a key: the later ones left out while at their defaults."""
    defaults = TrainConfig()
    return {k: v for k, v in fields.items() if not (k in LATER_FIELDS and v == getattr(defaults, k))}


def lr_at(step: int, cfg: TrainConfig, time_used: float = 0.0) -> float:
    """Learning rate for optimizer step `step` (0-based) of a resolved config; `time_used` is the share of
    the time cap spent so far, which the decay follows too when `cfg.decay_by_time`."""
    warmup = cfg.warmup or 0
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "constant":
        return cfg.lr
    assert cfg.decay_steps is not None and cfg.min_lr is not None
    span = max(1, cfg.decay_steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    if cfg.decay_by_time:
        progress = max(progress, min(1.0, time_used))
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
    if cfg.decay_by_time and (cfg.time is None or cfg.schedule != "cosine"):
        raise UserError("--decay-by-time needs --time and the cosine schedule")
    if cfg.curriculum and cfg.windows == "stories":
        raise UserError("--curriculum orders stream windows; it cannot be combined with --windows stories")
    span = cfg.curriculum_steps
    if cfg.curriculum and span is None:
        if planned is None:
            raise UserError("--curriculum needs a length: give --max-steps, --max-tokens or --curriculum-steps")
        span = max(1, planned // 2)
    return dataclasses.replace(
        cfg, seq_len=seq_len, decay_steps=decay, warmup=warmup, min_lr=min_lr, curriculum_steps=span
    )
