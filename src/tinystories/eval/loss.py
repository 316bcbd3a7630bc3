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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinystories.config import check
from tinystories.data.shards import is_dataset, open_dataset
from tinystories.data.stories import SEPARATOR, read_source, resolve
from tinystories.errors import UserError
from tinystories.io import atomic_write_json
from tinystories.loss import IGNORE_INDEX
from tinystories.model import GPT
from tinystories.options import RunOptions
from tinystories.rundir import load_run, with_device


@dataclass
class LossConfig(RunOptions):
    """`tinystories eval loss`: how well a run's model predicts a set of stories."""

    run: str = field(default="", metadata={"required": True})
    data: tuple[str, ...] = ()
    """Story files (.txt, .jsonl, .json, .parquet, globs, folders) or one dataset folder; default: the run's dataset."""
    split: str = "val"
    """Split of a dataset folder to score."""
    max_stories: int = 0
    """Score only the first this many stories (0 = all)."""
    stride: int = 0
    """Sliding-window stride for stories longer than the context; 0 = half the context."""
    batch: int = field(default=16, metadata={"min": 1})
    """Windows per forward."""
    separator: str = ""
    """How .txt files separate stories: default <|endoftext|> (as the released files); blank (empty lines between stories), line (one story per line), none (each file is one story), or any other text (\\n for a newline)."""
    write: bool = True
    """Write eval/loss.json in the run folder."""


# --- scoring ---------------------------------------------------------------------


def story_windows(doc: Sequence[int] | np.ndarray, eot_id: int, context: int, stride: int) -> Iterator[tuple[list[int], list[int]]]:
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


def stream_windows(docs: Sequence[Sequence[int] | np.ndarray], eot_id: int, context: int) -> Iterator[tuple[list[int], list[int]]]:
    """(inputs, targets) non-overlapping windows of `context` tokens over the joined stories + a final eot."""
    stream = np.concatenate([np.asarray(d, dtype=np.int64) for d in docs] + [np.asarray([eot_id])])
    for begin in range(0, len(stream) - 1, context):
        chunk = stream[begin : begin + context + 1].tolist()
        yield chunk[:-1], chunk[1:]


Window = tuple[list[int], list[int]]
"""(inputs, targets) of one forward row: targets[t] is the token after inputs[..t], or IGNORE_INDEX."""


def _padded_groups(
    windows: Sequence[Window], batch: int, vocab: int = 0, max_logits: int = 0
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """Windows in groups of similar length (sorted by length): (their indices, inputs (B, T), targets (B, T)).

    Rows are right padded, inputs with id 0 (causally invisible to the real
    tokens), targets with IGNORE_INDEX. With `max_logits`, a group has fewer
    than `batch` rows when B x T x `vocab` logits would exceed it.
    """
    order = sorted(range(len(windows)), key=lambda i: len(windows[i][0]))
    s = 0
    while s < len(order):
        b = batch
        if max_logits:
            longest = len(windows[order[min(s + batch, len(order)) - 1]][0])
            b = max(1, min(batch, max_logits // max(1, longest * vocab)))
        group = order[s : s + b]
        T = max(len(windows[i][0]) for i in group)
        idx = torch.zeros(len(group), T, dtype=torch.long)  # (B, T)
        tgt = torch.full((len(group), T), IGNORE_INDEX, dtype=torch.long)  # (B, T)
        for r, i in enumerate(group):
            inp, out = windows[i]
            idx[r, : len(inp)] = torch.as_tensor(inp)
            tgt[r, : len(out)] = torch.as_tensor(out)
        yield group, idx, tgt
        s += len(group)


@torch.inference_mode()
def summed_nll(model: GPT, windows: Sequence[Window], batch: int, device: torch.device | str) -> tuple[float, int]:
    """Total NLL in nats and the number of scored targets over `windows`.

    The model's chunked loss keeps B x T x V from ever existing for a large
    vocabulary.
    """
    total, count = 0.0, 0
    for _, idx, tgt in _padded_groups(windows, batch):
        n = int((tgt != IGNORE_INDEX).sum())
        if n == 0:
            continue
        loss = model(idx.to(device), tgt.to(device), logits="none").loss  # mean over the n targets
        total += float(loss) * n
        count += n
    return total, count


LOGITS_PER_FORWARD = 1 << 26
"""B x T x V logits at most in one forward of `target_logprobs` (256 MB in fp32)."""


@torch.inference_mode()
def target_logprobs(model: GPT, windows: Sequence[Window], batch: int, device: torch.device | str) -> list[float]:
    """Summed log-probability of each window's targets (IGNORE_INDEX ones skipped), in order.

    Groups hold fewer than `batch` windows when their logits would pass
    LOGITS_PER_FORWARD.
    """
    scores = [0.0] * len(windows)
    groups = _padded_groups(windows, batch, model.config.vocab_size, LOGITS_PER_FORWARD)
    for group, idx, tgt in groups:
        logp = torch.log_softmax(model(idx.to(device), logits="all").logits.float(), dim=-1)  # (B, T, V)
        for r, i in enumerate(group):
            pos = torch.nonzero(tgt[r] != IGNORE_INDEX)[:, 0].to(logp.device)  # positions with a target
            scores[i] = float(logp[r, pos, tgt[r].to(logp.device)[pos]].sum())
    return scores


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


def _dataset_docs(path: str, split: str, tokenizer: Any, limit: int) -> tuple[list[np.ndarray], int]:
    """Documents (`[eot] + tokens`) of a dataset folder's split, and their text bytes."""
    ds = open_dataset(path)
    if ds.vocab_size != tokenizer.vocab_size or ds.meta.get("tokenizer_sha256") not in (None, tokenizer.sha256):
        raise UserError(
            f"dataset {path} was tokenized with a different tokenizer ({ds.vocab_size} tokens) than the run's "
            f"({tokenizer.vocab_size} tokens)"
        )
    sp = ds.split(split, nonempty=True)
    n = sp.n_documents if limit <= 0 else min(limit, sp.n_documents)
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
    check(cfg)
    cfg = with_device(cfg)
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
    if len(data) == 1 and is_dataset(data[0]):
        docs, n_bytes = _dataset_docs(data[0], cfg.split, tok, cfg.max_stories)
        source: dict[str, Any] = {"dataset": data[0], "split": cfg.split}
    else:
        if any(is_dataset(d) for d in data):
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
