"""`tinystories convert`: checkpoints between llama2.c, Hugging Face and run folders, every direction,
and out to GGUF for llama.cpp.

The source is recognised by what it is: a run folder (`config.toml`), a
Hugging Face model folder (`config.json`), a llama2.c `.bin` file (v0 or v1),
or a Hugging Face Hub id (`owner/name[@revision]`, fetched into the HF cache).
It is read completely (model, tokenizer, vocabulary size checked) before
anything is written, and the output appears all at once: folders are built
under a temporary name and renamed into place, files are written atomically.
An existing output is never replaced unless `--overwrite` is given.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from tinystories.convert.card import model_card
from tinystories.convert.gguf import write_gguf
from tinystories.convert.hf import read_hf_folder, write_hf_folder
from tinystories.convert.hub import download, hub_token, is_hub_id, push
from tinystories.convert.llama2c import BOS_ID, llama2c_v0_bytes, read_llama2c
from tinystories.data.llama2c_tokenizer import tokenizer_to_llama2c
from tinystories.data.tokenizer import load_tokenizer, tokenizer_in_folder
from tinystories.errors import UserError
from tinystories.flops import count_params
from tinystories.io import (
    atomic_folder,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    sha256_file,
)
from tinystories.model import GPT, ModelConfig
from tinystories.rundir import is_run, load_run, save_checkpoint, write_config, write_env


@dataclass
class ConvertConfig:
    """`tinystories convert`: import llama2.c / Hugging Face checkpoints, export runs to either."""

    source: str = field(default="", metadata={"aliases": ("--from",)})
    """What to convert: a llama2.c .bin checkpoint, a Hugging Face model folder (config.json), a run folder, or a Hugging Face Hub model owner/name[@revision] (downloaded into the HF cache)."""
    out: str = ""
    """Where to write: a run folder (--format run), an HF model folder (hf), a .bin file (llama2c; tokenizer.bin beside it) or a .gguf file (gguf)."""
    format: Literal["run", "hf", "llama2c", "gguf"] = "run"
    """Output format: run (a run folder that sample/eval use), hf (AutoModelForCausalLM folder), llama2c (v0 .bin for run.c), gguf (one file for llama.cpp / Ollama, Llama family only)."""
    gguf_type: Literal["f32", "f16", "q8_0"] = "f32"
    """Weight type of a GGUF export: f32 (exact), f16, or q8_0 (8-bit; matrices whose rows are not a multiple of 32 fall back to f16)."""
    tokenizer: str = ""
    """Tokenizer when the source has none (llama2.c tokenizer.bin / tok512.bin, SentencePiece .model, tokenizer.json, a folder, gpt2); default: the one in the source folder, or tokenizer.bin / tokenizer.model beside a .bin."""
    step: int | None = None
    """Checkpoint step of a run-folder source; default = the latest."""
    overwrite: bool = False
    """Replace an existing output."""
    offline: bool = False
    """Hub models: use the Hugging Face cache only, never the network (as HF_HUB_OFFLINE=1 does)."""
    push_to_hub: str = ""
    """After an hf or gguf export, upload it to this Hugging Face model repository (owner/name; created when missing; token from HF_TOKEN)."""


@dataclass
class Source:
    """A model read from any of the three formats, in our terms."""

    config: ModelConfig
    """Architecture."""
    state: dict[str, torch.Tensor]
    """Our state dict (float32)."""
    tokenizer: Any
    """Its `Tokenizer`, vocabulary size checked against the model."""
    kind: str
    """What it was read from: run, hf or llama2c."""


# --- reading ----------------------------------------------------------------------


def _default_tokenizer(source: Path, kind: str) -> Any:
    """The tokenizer that comes with a source, or None."""
    if kind == "hf":
        tok = tokenizer_in_folder(source)
        if tok is None and (source / "tokenizer.model").is_file():
            tok = load_tokenizer(source / "tokenizer.model")
        return tok
    for name in ("tokenizer.bin", "tokenizer.model"):
        if (source.parent / name).is_file() and source.parent / name != source:
            return load_tokenizer(source.parent / name)
    return None


def read_source(path: str | os.PathLike, tokenizer: str = "", step: int | None = None,
                offline: bool = False) -> Source:
    """Model config, weights (ours) and tokenizer of a run folder, an HF folder, a llama2.c .bin or a Hub model."""
    if is_hub_id(os.fspath(path)):
        path = download(os.fspath(path), offline)
    path = Path(path)
    if not path.exists():
        raise UserError(f"nothing to convert at {path}")
    if path.is_dir() and is_run(path):
        loaded = load_run(path, step=step)
        cfg, sd, kind = loaded.config.model, loaded.model.state_dict(), "run"
        tok = load_tokenizer(tokenizer) if tokenizer else loaded.tokenizer
    else:
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise UserError(f"{path} is neither a run folder (config.toml) nor a Hugging Face model folder "
                                "(config.json)")
            cfg, sd = read_hf_folder(path)
            kind = "hf"
        else:
            cfg, sd = read_llama2c(path)
            kind = "llama2c"
        tok = load_tokenizer(tokenizer) if tokenizer else _default_tokenizer(path, kind)
        if tok is None:
            raise UserError(f"no tokenizer found with {path}: pass --tokenizer (tokenizer.bin, .model, tokenizer.json, gpt2)")
    if tok.vocab_size != cfg.vocab_size:
        hint = "" if tokenizer else " (it was found with the checkpoint; pass --tokenizer for the right one)"
        raise UserError(
            f"tokenizer {tok.name or tokenizer} has {tok.vocab_size} tokens but the model's vocabulary is "
            f"{cfg.vocab_size}: they do not belong together{hint}"
        )
    return Source(cfg, sd, tok, kind)


def _model(src: Source) -> GPT:
    model = GPT(src.config)
    model.load_state_dict(src.state, strict=True)
    return model.eval()


# --- writing ----------------------------------------------------------------------


def _check_free(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists (pass --overwrite to replace it)")


def _write_folder(out: Path, fill: Any) -> None:
    with atomic_folder(out) as tmp:
        fill(tmp)


def write_run(out: Path, src: Source, origin: dict[str, Any]) -> None:
    """A run folder holding the model as checkpoint step 0, its tokenizer and where it came from."""
    model = _model(src)

    def fill(tmp: Path) -> None:
        write_config(tmp, src.config)
        src.tokenizer.save(tmp)
        write_env(tmp)
        atomic_write_json(tmp / "convert.json", origin)
        save_checkpoint(tmp, 0, model, state={"tokens": 0, "converted_from": origin["from"]})

    _write_folder(out, fill)


def convert(cfg: ConvertConfig) -> dict[str, Any]:
    """Read `--from`, write `--out` in `--format`; returns a summary."""
    if not cfg.source or not cfg.out:
        raise UserError("give both --from (what to convert) and --out (where to write)")
    out = Path(cfg.out)
    _check_free(out, cfg.overwrite)
    if cfg.push_to_hub:
        if cfg.format not in ("hf", "gguf"):
            raise UserError("--push-to-hub uploads an export: use it with --format hf or --format gguf")
        token = hub_token()  # before any work: a missing token should not cost a conversion
    src = read_source(cfg.source, cfg.tokenizer, cfg.step, cfg.offline)
    source = Path(cfg.source)
    origin = {
        "from": os.fspath(source),
        "kind": src.kind,
        "sha256": sha256_file(source) if source.is_file() else None,
        "tokenizer": src.tokenizer.name,
    }
    written: list[str] = [os.fspath(out)]
    notes: list[str] = []
    if cfg.format == "run":
        write_run(out, src, origin)
    elif cfg.format == "gguf":
        notes += write_gguf(out, src.config, src.state, src.tokenizer, cfg.gguf_type, name=out.stem)
    elif cfg.format == "hf":
        run_dir = source if src.kind == "run" else None

        def fill(tmp: Path) -> None:
            arch = write_hf_folder(tmp, src.config, src.state, src.tokenizer)
            card = model_card(src.config, arch, run_dir, repo=cfg.push_to_hub, step=cfg.step, origin=cfg.source)
            atomic_write_text(tmp / "README.md", card)

        _write_folder(out, fill)
    else:
        tok_path = out.parent / "tokenizer.bin"
        _check_free(tok_path, cfg.overwrite)
        model_bytes = llama2c_v0_bytes(src.config, src.state)  # both built before either is written
        tok_bytes = tokenizer_to_llama2c(src.tokenizer)
        atomic_write_bytes(out, model_bytes)
        atomic_write_bytes(tok_path, tok_bytes)
        written.append(os.fspath(tok_path))
        if src.tokenizer.eot_id != BOS_ID:
            notes.append(f"run.c starts from and stops at token {BOS_ID}; this model's end-of-text is "
                         f"{src.tokenizer.eot_id}, so run.c will not sample it as `tinystories sample` does")
    pushed = {}
    if cfg.push_to_hub:
        pushed = {"pushed_to": push(out, cfg.push_to_hub, token, f"tinystories convert --from {cfg.source}")}
    return {
        "from": os.fspath(source),
        "source_kind": src.kind,
        "format": cfg.format,
        "written": written,
        "family": "neo" if src.config.pos == "learned" else "llama",
        "params": count_params(src.config),
        "vocab_size": src.config.vocab_size,
        "eot_id": src.tokenizer.eot_id,
        "model": dataclasses.asdict(src.config),
        **({"notes": notes} if notes else {}),
        **pushed,
    }
