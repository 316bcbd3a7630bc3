"""The run folder: layout, config, environment record, checkpoints, loading.

A run folder holds everything about one training run:

    config.toml          [model] ModelConfig, [train] TrainConfig, [data] path + content hash
    tokenizer.json       copied from the dataset (+ vocab_map.json when pruned)
    env.json             versions, git sha, threads, device, hostname
    metrics.jsonl        one JSON line per logged step
    ckpt/step_XXXXXX/    model.safetensors, optim.pt, state.json

A checkpoint folder is written under a temporary name and renamed into place,
so a kill at any moment leaves either a complete checkpoint or none.
`load_run` is what sampling, evaluation and interpretation use.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tinystories import kernels
from tinystories.config import build, from_toml, to_toml
from tinystories.data.tokenizer import load_tokenizer
from tinystories.errors import UserError
from tinystories.io import atomic_folder, atomic_save, atomic_write_json, atomic_write_text
from tinystories.model import GPT, ModelConfig
from tinystories.train_config import TrainConfig

CONFIG_FILE = "config.toml"
ENV_FILE = "env.json"
METRICS_FILE = "metrics.jsonl"
CKPT_DIR = "ckpt"
MODEL_FILE = "model.safetensors"
OPTIM_FILE = "optim.pt"
STATE_FILE = "state.json"
TOKENIZER_FILES = ("tokenizer.json", "vocab_map.json")


# --- paths -------------------------------------------------------------------


def checkpoint_dir(run_dir: str | os.PathLike, step: int) -> Path:
    """`run_dir/ckpt/step_XXXXXX` for `step` (it may not exist)."""
    return Path(run_dir) / CKPT_DIR / f"step_{step:06d}"


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run as (step, folder), oldest first."""
    root = Path(run_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        # Temporary folders start with "." and are never listed.
        if p.is_dir() and p.name.startswith("step_") and p.name[5:].isdigit():
            found.append((int(p.name[5:]), p))
    return sorted(found)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1][1] if ckpts else None


def is_run(run_dir: str | os.PathLike) -> bool:
    """True when `run_dir` has a `config.toml`."""
    return (Path(run_dir) / CONFIG_FILE).is_file()


# --- config.toml ----------------------------------------------------------------


@dataclass
class RunConfig:
    """The three sections of a run's `config.toml`."""

    model: ModelConfig
    """Architecture the checkpoints were saved from."""
    train: TrainConfig | None
    """`TrainConfig` (None for a run folder made by `convert`)."""
    data: dict[str, Any]
    """`path` and `content_hash` of the dataset folder (empty when unknown)."""


def write_config(
    run_dir: str | os.PathLike,
    model: ModelConfig,
    train: Any | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    """Write `config.toml` atomically ([model], [train] when given, [data])."""
    sections: dict[str, Any] = {"model": model}
    if train is not None:
        sections["train"] = train
    sections["data"] = dict(data or {})
    atomic_write_text(Path(run_dir) / CONFIG_FILE, to_toml(sections))


def read_config(run_dir: str | os.PathLike) -> RunConfig:
    """Read a run's `config.toml`; a missing or malformed file is a `UserError`."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"no run at {run_dir} (no {CONFIG_FILE})")
    try:
        data = from_toml(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid TOML: {_first_line(e)}") from None
    if "model" not in data:
        raise UserError(f"{path} has no [model] section")
    model = _build_section(ModelConfig, data["model"], path)
    train = None
    if "train" in data:
        train = _build_section(TrainConfig, data["train"], path)
    return RunConfig(model=model, train=train, data=dict(data.get("data", {})))


def _build_section(cls: type, values: dict[str, Any], path: Path) -> Any:
    try:
        return build(cls, values)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    except TypeError as e:
        raise UserError(f"{path}: bad {cls.__name__}: {_first_line(e)}") from None


# --- env.json -------------------------------------------------------------------


def _git_sha() -> dict[str, Any] | None:
    # The code's own checkout, wherever the run is written.
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return {"sha": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def resolve_device(name: str | torch.device, local_rank: int | None = None) -> torch.device:
    """`auto` -> cuda when available, else cpu; a bare `cuda` -> this process's GPU (`local_rank` under torchrun)."""
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r} asked for, but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank if local_rank is not None else torch.cuda.current_device())
    return device


def with_device(cfg: Any) -> Any:
    """A command's config with its `device` resolved (`auto` -> cuda or cpu), so outputs name the real device."""
    return dataclasses.replace(cfg, device=str(resolve_device(cfg.device)))


def compiled(fn: Any, device: torch.device, **kwargs: Any) -> Any:
    """torch.compile(fn, **kwargs); on the CPU only where a C++ compiler is found, since inductor builds its
    CPU kernels with one (without it the first call would fail): otherwise `fn` itself, saying so."""
    if device.type == "cpu" and not any(
        shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "clang++", "c++") if c
    ):
        print("no C++ compiler (g++, clang++ or $CXX) for torch.compile on the CPU; running eager", file=sys.stderr)
        return fn
    return torch.compile(fn, **kwargs)


def environment(device: str | torch.device = "cpu", world_size: int = 1) -> dict[str, Any]:
    """What produced a run: versions, git sha, threads, device, hostname, and on the CPU whether the C kernels ran."""
    device = torch.device(device)
    env: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "git": _git_sha(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "device": str(device),
        "world_size": world_size,
    }
    if device.type == "cpu":  # whether attention ran on the C kernels or on PyTorch's operations
        env["cpu_kernels"] = kernels.available()
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["gpu"] = torch.cuda.get_device_name(device)
        env["gpu_count"] = torch.cuda.device_count()
    return env


def write_env(
    run_dir: str | os.PathLike, device: str | torch.device = "cpu", world_size: int = 1, resumed: bool = False
) -> None:
    """Write `env.json` atomically; a resumed run keeps the first record and appends to `resumes`."""
    path = Path(run_dir) / ENV_FILE
    env = environment(device, world_size)
    if resumed and path.is_file():
        try:
            first = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            first = None
        if isinstance(first, dict):
            first["resumes"] = [*first.get("resumes", []), env]
            env = first
    atomic_write_json(path, env)


# --- RNG states ------------------------------------------------------------------


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


def rng_state() -> dict[str, Any]:
    """All RNG states (torch CPU and CUDA, numpy, python) as JSON-able values."""
    np_state: tuple[Any, ...] = np.random.get_state(legacy=True)  # type: ignore[assignment]  # a tuple when legacy
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": _b64(torch.get_rng_state()),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    torch.set_rng_state(_unb64(state["torch"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        cuda = [_unb64(s) for s in state["cuda"]]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# --- checkpoints -----------------------------------------------------------------


def _alias_groups(model: torch.nn.Module) -> list[list[str]]:
    """State-dict names grouped by shared storage (tied weights form one group)."""
    groups: dict[tuple[int, int, tuple[int, ...]], list[str]] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        groups.setdefault(key, []).append(name)
    return list(groups.values())


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with tied tensors stored once (safetensors refuses shared storage)."""
    state = model.state_dict()
    return {group[0]: state[group[0]].detach().cpu().contiguous() for group in _alias_groups(model)}


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    state: dict[str, Any] | None = None,
) -> Path:
    """Write `ckpt/step_XXXXXX/` atomically: into a temp folder, then renamed into place.

    `model` is the plain module (not DDP- or compile-wrapped). `state` goes to
    `state.json` (step, tokens, elapsed, RNG states, data position, config hash).
    An existing checkpoint of the same step is replaced.
    """
    final = checkpoint_dir(run_dir, step)
    with atomic_folder(final) as tmp:
        tensors = model_tensors(model)
        atomic_save(tmp / MODEL_FILE, lambda name: save_file(tensors, name, metadata={"format": "pt"}))
        if optimizer is not None:
            opt_state = optimizer.state_dict()
            atomic_save(tmp / OPTIM_FILE, lambda name: torch.save(opt_state, name))
        atomic_write_json(tmp / STATE_FILE, {"step": step, **(state or {})})
    return final


def prune_checkpoints(run_dir: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (0 keeps all) and stale temp folders."""
    root = Path(run_dir) / CKPT_DIR
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".step_"):
                shutil.rmtree(p, ignore_errors=True)
    if keep > 0:
        for _, path in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(path, ignore_errors=True)


def load_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load `model.safetensors` into `model`, with a clear error for corrupt or mismatched files."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint weights {path} are missing")
    try:
        saved = load_file(str(path))
    except Exception as e:  # safetensors raises several types for bad headers and short files
        raise UserError(f"checkpoint {path} is corrupt or truncated ({_first_line(e)})") from None
    expected = model.state_dict()
    full: dict[str, torch.Tensor] = {}
    for group in _alias_groups(model):
        present = [n for n in group if n in saved]
        if not present:
            raise UserError(f"checkpoint {path} lacks tensor {group[0]!r}: it does not match the config")
        for name in group:
            full[name] = saved[present[0]]
    unexpected = sorted(set(saved) - set(full))
    if unexpected:
        raise UserError(
            f"checkpoint {path} has tensor {unexpected[0]!r} that the config's model lacks: "
            "it does not match the config"
        )
    for name, t in full.items():
        if tuple(t.shape) != tuple(expected[name].shape):
            raise UserError(
                f"checkpoint tensor {name!r} in {path} has shape {tuple(t.shape)}, the config gives "
                f"{tuple(expected[name].shape)}: it does not match the config"
            )
    model.load_state_dict(full, strict=True)


def read_state(ckpt: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's `state.json`."""
    path = Path(ckpt) / STATE_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"checkpoint {ckpt} has no {STATE_FILE}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"checkpoint state {path} is corrupt ({_first_line(e)})") from None


def load_optimizer(optimizer: torch.optim.Optimizer, ckpt: str | os.PathLike) -> None:
    """Load `optim.pt` into `optimizer`."""
    path = Path(ckpt) / OPTIM_FILE
    if not path.is_file():
        raise UserError(f"checkpoint {ckpt} has no {OPTIM_FILE}; it cannot be resumed")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state)
    except Exception as e:  # truncated zip, unpickling errors, mismatched groups
        raise UserError(f"optimizer state {path} is corrupt or does not match ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


# --- loading a run ------------------------------------------------------------------


@dataclass
class LoadedRun:
    """A run's model at one checkpoint, with its tokenizer and config."""

    model: GPT
    """The model in eval mode, on the requested device."""
    tokenizer: Any
    """The run's `Tokenizer` (from its `tokenizer.json`)."""
    config: RunConfig
    """The run's `config.toml`."""
    step: int
    """Training step of the checkpoint."""
    path: Path
    """The checkpoint folder."""


def find_checkpoint(run_dir: str | os.PathLike, step: int | None = None) -> Path:
    """The checkpoint at `step` (default: the newest); a clear error when there is none."""
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise UserError(f"run {run_dir} has no checkpoint")
    if step is None:
        return ckpts[-1][1]
    for s, path in ckpts:
        if s == step:
            return path
    have = ", ".join(str(s) for s, _ in ckpts)
    raise UserError(f"run {run_dir} has no checkpoint at step {step} (have: {have})")


def load_tokenizer_checked(run_dir: str | os.PathLike, vocab_size: int) -> Any:
    """The run folder's tokenizer; an error when its vocabulary does not fit the model."""
    if not (Path(run_dir) / "tokenizer.json").is_file():
        raise UserError(f"run {run_dir} has no tokenizer.json")
    tok = load_tokenizer(str(run_dir))
    if tok.vocab_size != vocab_size:
        raise UserError(
            f"tokenizer in {run_dir} has {tok.vocab_size} tokens but the model's vocab_size is "
            f"{vocab_size}: they do not belong together"
        )
    return tok


def load_run(run_dir: str | os.PathLike, step: int | None = None, device: str | torch.device = "cpu") -> LoadedRun:
    """Load a run's model (eval mode) at `step` (default: newest), its tokenizer and config; device may be `auto`."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"no run folder at {run_dir}")
    config = read_config(run_dir)
    ckpt = find_checkpoint(run_dir, step)
    model = GPT(config.model)
    load_weights(model, ckpt / MODEL_FILE)
    tokenizer = load_tokenizer_checked(run_dir, config.model.vocab_size)
    state = read_state(ckpt)
    model.to(resolve_device(device)).eval()
    return LoadedRun(model=model, tokenizer=tokenizer, config=config, step=int(state["step"]), path=ckpt)


def config_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as a plain dict (tuples as lists), for hashing and comparing."""
    data = dataclasses.asdict(obj)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}
