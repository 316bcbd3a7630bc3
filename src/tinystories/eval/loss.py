"""`tinystories eval loss`: loss, perplexity and bits per byte of a run on stories.

Two numbers, because they answer different questions:

- per story: each story is scored alone, as the model meets it when asked for
  one: `[eot] + tokens`, predicting every token and the final end-of-text.
  Windows never cross a story boundary. A story longer than the context is
  scored with a sliding window: windows start every `stride` tokens and each
  token is scored once, in the first window that holds it after the earlier
  ones, so it sees at least `context - stride` tokens of its story.
- stream: the stories joined as stored (`[eot] + tokens` each, and one final
  end-of-text), cut into non-overlapping windows of `context` tokens, as the
  validation loss in training is measured. Tokens early in a window see little
  context, and windows cross story boundaries, so this is usually a bit higher.

Both score the same tokens (every story token plus one end-of-text per story).
Bits per byte = summed NLL in nats / ln 2 / UTF-8 bytes of the story text.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinystories.errors import UserError
from tinystories.loss import IGNORE_INDEX
from tinystories.model import GPT


@dataclass
class LossConfig:
    """`tinystories eval loss`: how well a run's model predicts a set of stories."""

    run: str = ""
    """Run folder whose model is evaluated."""
    data: tuple[str, ...] = ()
    """Story files (.txt, .jsonl, .json, .parquet, globs, folders) or one dataset folder; default: the run's dataset."""
    split: str = "val"
    """Split of a dataset folder to score."""
    max_stories: int = 0
    """Score only the first this many stories (0 = all)."""
    stride: int = 0
    """Sliding-window stride for stories longer than the context; 0 = half the context."""
    batch: int = 16
    """Windows per forward."""
    separator: str = ""
    """How .txt files separate stories: default <|endoftext|> (as the released files); blank (empty lines between stories), line (one story per line), none (each file is one story), or any other text (\\n for a newline)."""
    step: int | None = None
    """Checkpoint step to evaluate; default = the latest."""
    device: str = "auto"
    """Torch device: auto (CUDA when present, else the CPU), cpu, cuda, cuda:1."""
    write: bool = True
    """Write eval/loss.json in the run folder."""


# --- scoring ---------------------------------------------------------------------


def story_windows(doc: Sequence[int], eot_id: int, context: int, stride: int) -> Iterator[tuple[list[int], list[int]]]:
    """(inputs, targets) windows that score one story stored as `[eot] + tokens`.

    The story is `doc + [eot]`: n = len(doc) predictions. Window k reads inputs
    [k*stride, k*stride + context) and scores the predictions not scored by an
    earlier window; the others have target IGNORE_INDEX.
    """
    seq = [*list(doc), eot_id]
    n = len(seq) - 1  # predictions
    begin, scored = 0, 0
    while scored < n:
        end = min(begin + context, n)
        inputs = seq[begin:end]
        targets = [IGNORE_INDEX] * (scored - begin) + seq[scored + 1 : end + 1]
        yield inputs, targets
        scored = end
        begin += stride


def stream_windows(docs: Sequence[Sequence[int]], eot_id: int, context: int) -> Iterator[tuple[list[int], list[int]]]:
    """(inputs, targets) non-overlapping windows of `context` tokens over the joined stories + a final eot."""
    stream = np.concatenate([np.asarray(d, dtype=np.int64) for d in docs] + [np.asarray([eot_id])])
    for begin in range(0, len(stream) - 1, context):
        chunk = stream[begin : begin + context + 1].tolist()
        yield chunk[:-1], chunk[1:]


@torch.inference_mode()
def summed_nll(
    model: GPT, windows: Sequence[tuple[list[int], list[int]]], batch: int, device: torch.device | str
) -> tuple[float, int]:
    """Total NLL in nats and the number of scored targets over `windows`.

    Windows of similar length are batched together (sorted by length), right
    padded with IGNORE_INDEX targets; the model's chunked loss keeps B x T x V
    from ever existing for a large vocabulary.
    """
    order = sorted(range(len(windows)), key=lambda i: len(windows[i][0]))
    total, count = 0.0, 0
    for s in range(0, len(order), batch):
        group = [windows[i] for i in order[s : s + batch]]
        T = max(len(inp) for inp, _ in group)
        idx = torch.zeros(len(group), T, dtype=torch.long)  # (B, T); padding id 0 is causally invisible
        tgt = torch.full((len(group), T), IGNORE_INDEX, dtype=torch.long)
        for r, (inp, out) in enumerate(group):
            idx[r, : len(inp)] = torch.as_tensor(inp)
            tgt[r, : len(out)] = torch.as_tensor(out)
        n = int((tgt != IGNORE_INDEX).sum())
        if n == 0:
            continue
        loss = model(idx.to(device), tgt.to(device), logits="none").loss  # mean over the n targets
        total += float(loss) * n
        count += n
    return total, count


def _summary(nll: float, tokens: int, n_bytes: int) -> dict[str, float]:
    loss = nll / tokens
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_byte": nll / math.log(2) / n_bytes if n_bytes else float("nan"),
        "nll_nats": nll,
        "tokens": tokens,
    }


# --- inputs -------------------------------------------------------------------------


def _is_dataset(path: str) -> bool:
    return (Path(path) / "meta.json").is_file()


def _dataset_docs(path: str, split: str, tokenizer: Any, limit: int) -> tuple[list[np.ndarray], int]:
    """Documents (`[eot] + tokens`) of a dataset folder's split, and their text bytes."""
    from tinystories.data.shards import open_dataset

    ds = open_dataset(path)
    if ds.vocab_size != tokenizer.vocab_size or ds.meta.get("tokenizer_sha256") not in (None, tokenizer.sha256):
        raise UserError(
            f"dataset {path} was tokenized with a different tokenizer ({ds.vocab_size} tokens) than the run's "
            f"({tokenizer.vocab_size} tokens)"
        )
    if split not in ds.splits:
        raise UserError(f"dataset {path} has no {split!r} split (has: {', '.join(ds.splits)})")
    sp = ds.splits[split]
    n = sp.n_documents if limit <= 0 else min(limit, sp.n_documents)
    if n == 0:
        raise UserError(f"the {split!r} split of {path} has no documents")
    docs = [sp.document(i).astype(np.int64) for i in range(n)]
    if n == sp.n_documents and "bytes" in ds.meta["splits"][split]:
        n_bytes = int(ds.meta["splits"][split]["bytes"])
    else:  # a subset: the tokenizer decodes stored documents exactly
        n_bytes = sum(len(tokenizer.decode_bytes(d[1:].tolist())) for d in docs)
    return docs, n_bytes


# A .txt file this large without one end-of-text separator is not one story: TinyStories stories are
# about 1 KB (the longest of the 201 validation stories is 3.5 KB).
UNSEPARATED_BYTES = 16 << 10


def _check_separated(path: str) -> None:
    """UserError when a big .txt file has no `<|endoftext|>`: it would be scored as one story."""
    from tinystories.data.stories import SEPARATOR

    size = os.path.getsize(path)
    if size <= UNSEPARATED_BYTES:
        return
    data = Path(path).read_bytes()
    if SEPARATOR.encode() in data:
        return
    text = data.decode("utf-8", errors="replace").replace("\r\n", "\n")
    blocks = len([b for b in re.split(r"\n[ \t]*\n", text) if b.strip()])
    lines = len([line for line in text.split("\n") if line.strip()])
    raise UserError(
        f"{path} has no {SEPARATOR} separators, so its {size:,} bytes would be scored as one story; it has "
        f"{blocks:,} blocks between empty lines and {lines:,} non-empty lines: pass --separator blank (stories "
        "between empty lines), --separator line (one story per line), --separator TEXT, or --separator none "
        "(score the file as one story)"
    )


def _split_txt(path: str, separator: str) -> list[str]:
    """The stories of a .txt file cut at `separator` (blank, line, none or literal text)."""
    try:
        text = Path(path).read_text(encoding="utf-8").replace("\r\n", "\n")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text") from None
    if separator == "blank":
        parts = re.split(r"\n[ \t]*\n", text)
    elif separator == "line":
        parts = text.split("\n")
    elif separator == "none":
        parts = [text]
    else:
        parts = text.split(separator.replace("\\n", "\n").replace("\\t", "\t"))
    stories = [p.strip() for p in parts if p.strip()]
    if not stories:
        raise UserError(f"no stories in {path}")
    return stories


def _read_stories(paths: list[str], separator: str) -> Iterator[str]:
    """Story texts from files; .txt files cut at `separator` (default `<|endoftext|>`)."""
    from tinystories.data.stories import read_source, resolve

    for source in resolve(paths):
        if source.format == "txt" and separator:
            yield from _split_txt(source.path, separator)
            continue
        if source.format == "txt":
            _check_separated(source.path)
        for record in read_source(source):
            yield record["story"]


def _story_docs(paths: list[str], tokenizer: Any, limit: int, separator: str = "") -> tuple[list[np.ndarray], int]:
    """Stories from files, encoded as `[eot] + tokens`, and their text bytes."""
    stories = []
    for story in _read_stories(paths, separator):
        stories.append(story)
        if limit > 0 and len(stories) >= limit:
            break
    eot = np.asarray([tokenizer.eot_id], dtype=np.int64)
    docs = [np.concatenate([eot, a]) for a in tokenizer.encode_arrays(stories)]
    return docs, sum(len(s.encode("utf-8")) for s in stories)


# --- the command ----------------------------------------------------------------------


def evaluate_loss(cfg: LossConfig) -> dict[str, Any]:
    """Per-story and stream loss / perplexity / bits per byte; writes eval/loss.json in the run."""
    from tinystories.io import atomic_write_json
    from tinystories.rundir import load_run, with_device

    if not cfg.run:
        raise UserError("--run is required: the run folder to evaluate")
    cfg = with_device(cfg)
    if cfg.batch < 1:
        raise UserError(f"--batch must be >= 1, got {cfg.batch}")
    loaded = load_run(cfg.run, step=cfg.step, device=cfg.device)
    model, tok = loaded.model, loaded.tokenizer
    context = model.config.max_seq_len
    stride = cfg.stride or max(1, context // 2)
    if not 1 <= stride <= context:
        raise UserError(f"--stride must be between 1 and the context length {context}, got {stride}")

    data = [os.fspath(d) for d in cfg.data]
    if not data:
        default = loaded.config.data.get("path")
        if not default:
            raise UserError(f"no --data given and run {cfg.run} names no dataset")
        data = [str(default)]
    if len(data) == 1 and _is_dataset(data[0]):
        docs, n_bytes = _dataset_docs(data[0], cfg.split, tok, cfg.max_stories)
        source = {"dataset": data[0], "split": cfg.split}
    else:
        if any(_is_dataset(d) for d in data):
            raise UserError("give either one dataset folder or story files, not both")
        docs, n_bytes = _story_docs(data, tok, cfg.max_stories, cfg.separator)
        source = {"files": data}
    too_big = max(int(d.max()) for d in docs)
    if too_big >= model.config.vocab_size:
        raise UserError(f"token id {too_big} is outside the model's vocabulary of {model.config.vocab_size}")

    eot = tok.eot_id
    per_story = [w for d in docs for w in story_windows(d, eot, context, stride)]
    nll_a, n_a = summed_nll(model, per_story, cfg.batch, cfg.device)
    nll_b, n_b = summed_nll(model, list(stream_windows(docs, eot, context)), cfg.batch, cfg.device)

    result = {
        "run": os.fspath(cfg.run),
        "step": loaded.step,
        **source,
        "stories": len(docs),
        "tokens": n_a,
        "bytes": n_bytes,
        "bytes_per_token": n_bytes / n_a,
        "context": context,
        "per_story": {
            **_summary(nll_a, n_a, n_bytes),
            "windows": len(per_story),
            "stride": stride,
            "method": "each story alone as [eot] + tokens, predicting its tokens and a final end-of-text; "
            f"stories longer than {context} tokens: sliding window, stride {stride}",
        },
        "stream": {
            **_summary(nll_b, n_b, n_bytes),
            "windows": math.ceil(n_b / context),
            "method": f"stories joined as stored, non-overlapping windows of {context} tokens (as training's val loss)",
        },
    }
    if cfg.write:
        atomic_write_json(Path(cfg.run) / "eval" / "loss.json", result)
    return result
