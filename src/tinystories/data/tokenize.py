"""`tinystories tokenize`: pretokenize stories into a dataset folder (`shards.py` reads it).

The folder is built beside the target under a temp name and renamed into
place, so it is either complete or absent.

Encoding runs in worker processes, each taking ~1 MB batches of stories and
returning the `[eot] + tokens` stream: threads do not help, because tiktoken
keeps the GIL (two threads ran slower than one).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from tinystories.config import OPERATIONAL, check
from tinystories.data import stories as story_io
from tinystories.data.shards import FORMAT, SPLITS, open_dataset, token_dtype
from tinystories.data.tokenizer import MAX_VOCAB, MIN_VOCAB, Tokenizer, load_tokenizer, top_k_ids, train_bpe
from tinystories.errors import UserError
from tinystories.io import atomic_write_json, sha256_file, umask

_BATCH_BYTES = 1 << 20  # text per encoder call: long calls, bounded memory
_POOL_MIN_BYTES = 16 << 20  # inputs smaller than this are encoded in-process
_REMAP_BLOCK = 1 << 24  # tokens per step when rewriting shards in pruned ids


@dataclass
class TokenizeConfig:
    """`tinystories tokenize`: stories in, a dataset folder of token shards out."""

    data: tuple[str, ...] = field(default=(), metadata={"required": True})
    """Story inputs: .txt / .jsonl / .json / .parquet files, globs, folders, or hf:owner/name[:split]."""
    out: str = field(default="", metadata={"required": True, **OPERATIONAL})
    """Dataset folder to create."""
    val_data: tuple[str, ...] = ()
    """Separate validation inputs; when given, all of --data is training data and --val-fraction is ignored."""
    vocab_size: int = 4096
    """Vocabulary size of the BPE trained when no --tokenizer is given (257..65536)."""
    tokenizer: str | None = None
    """Use this tokenizer instead of training one: gpt2, a tokenizer.json, or a folder holding one."""
    top_k: int | None = field(default=None, metadata={"min": 2})
    """Keep only the K most frequent tokens (end-of-text always kept), erasing the rest, as the paper did with GPT-Neo's 10K."""
    val_fraction: float = 0.05
    """Share of stories held out for validation, chosen by a seeded hash of each story's text."""
    seed: int = 0
    """Seed of the train/validation split."""
    workers: int = field(default=0, metadata={"min": 0, **OPERATIONAL})
    """Encoding processes (0 = all cores); inputs under 16 MB are encoded in-process."""
    shard_tokens: int = field(default=100_000_000, metadata={"min": 1})
    """Largest number of tokens in one shard file (a document is never split)."""
    train_bytes: int = 0
    """Train the BPE on at most this many bytes of training stories, taken in input order (0 = all)."""


class _ShardWriter:
    """Appends whole documents to `{split}_{NNNN}.bin` files of at most `shard_tokens` tokens."""

    def __init__(self, folder: Path, split: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.folder, self.split, self.dtype, self.limit = folder, split, dtype, shard_tokens
        self.names: list[str] = []
        self.lengths: list[np.ndarray] = []
        self._file: BinaryIO | None = None
        self._in_shard = 0

    def add(self, flat: np.ndarray, lengths: np.ndarray) -> None:
        """Write documents laid end to end in `flat` with the given lengths."""
        self.lengths.append(lengths)
        ends = np.cumsum(lengths)
        done_docs, done_tokens = 0, 0
        while done_docs < len(lengths):
            room = self.limit - self._in_shard
            # How many of the remaining documents fit in this shard.
            fit = int(np.searchsorted(ends[done_docs:] - done_tokens, room, side="right"))
            if fit == 0 and self._in_shard > 0:
                self._roll()
                continue
            fit = max(fit, 1)  # a document longer than a whole shard gets a shard to itself
            stop = int(ends[done_docs + fit - 1])
            self._write(flat[done_tokens:stop])
            done_docs += fit
            done_tokens = stop

    def _write(self, tokens: np.ndarray) -> None:
        if self._file is None:
            self._open()
        assert self._file is not None
        self._file.write(tokens.astype(self.dtype, copy=False).tobytes())
        self._in_shard += len(tokens)

    def _open(self) -> None:
        name = f"{self.split}_{len(self.names):04d}.bin"
        self.names.append(name)
        self._file = open(self.folder / name, "wb")  # noqa: SIM115 - closed in _roll/close
        self._in_shard = 0

    def _roll(self) -> None:
        self.close()
        self._open()

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def index(self) -> np.ndarray:
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, dtype=np.int64)
        return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)


def _story_bytes(story: str) -> int:
    return len(story) if story.isascii() else len(story.encode("utf-8"))


def split_of(story: str, val_fraction: float, seed: int) -> str:
    """'val' for about `val_fraction` of stories, by a seeded hash of the text (same story, same split)."""
    if val_fraction <= 0:
        return "train"
    digest = hashlib.blake2b(
        story.encode("utf-8"), digest_size=8, key=seed.to_bytes(8, "little", signed=True)
    )
    return "val" if int.from_bytes(digest.digest(), "little") / 2.0**64 < val_fraction else "train"


def _labelled_stories(cfg: TokenizeConfig, sources: list, val_sources: list) -> Iterator[tuple[str, str]]:
    """(split, story) for every story of every input, in input order."""
    for source in sources:
        for record in story_io.read_source(source):
            story = record["story"]
            yield ("train" if val_sources else split_of(story, cfg.val_fraction, cfg.seed)), story
    for source in val_sources:
        for record in story_io.read_source(source):
            yield "val", record["story"]


def _training_text(cfg: TokenizeConfig, sources: list, val_sources: list) -> Iterator[str]:
    used = 0
    for split, story in _labelled_stories(cfg, sources, val_sources):
        if split != "train":
            continue
        if cfg.train_bytes and used >= cfg.train_bytes:
            return
        used += _story_bytes(story)
        yield story


_worker_tokenizer: Tokenizer | None = None


def _start_worker(tokenizer_json: str) -> None:
    global _worker_tokenizer
    _worker_tokenizer = Tokenizer(tokenizer_json)


def _encode_in_worker(batch: list[tuple[str, str]]) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    assert _worker_tokenizer is not None
    return _encode_labelled(_worker_tokenizer, batch)


def _encode_labelled(
    tokenizer: Tokenizer, batch: list[tuple[str, str]]
) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """{split: (token stream, document lengths, text bytes)} for a batch of (split, story)."""
    out = {}
    for split in SPLITS:
        texts = [story for s, story in batch if s == split]
        if texts:
            flat, lengths = tokenizer.encode_documents(texts)
            out[split] = flat, lengths, sum(_story_bytes(t) for t in texts)
    return out


def _batches(items: Iterator[tuple[str, str]], max_bytes: int) -> Iterator[list[tuple[str, str]]]:
    batch: list[tuple[str, str]] = []
    size = 0
    for item in items:
        batch.append(item)
        size += len(item[1])
        if size >= max_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _source_info(sources: list, role: str) -> list[dict[str, Any]]:
    info = []
    for s in sources:
        if s.format == "hf":
            info.append({"path": s.path, "sha256": None, "bytes": None, "role": role})
        else:
            info.append(
                {
                    "path": str(Path(s.path).resolve()),
                    "sha256": sha256_file(s.path),
                    "bytes": os.path.getsize(s.path),
                    "role": role,
                }
            )
    return info


def _check_config(cfg: TokenizeConfig) -> None:
    check(cfg)
    if not 0 <= cfg.val_fraction < 1:
        raise UserError(f"--val-fraction must be in [0, 1), got {cfg.val_fraction}")
    if cfg.tokenizer is None and not MIN_VOCAB <= cfg.vocab_size <= MAX_VOCAB:
        raise UserError(f"--vocab-size must be in {MIN_VOCAB}..{MAX_VOCAB}, got {cfg.vocab_size}")


def _request_hash(cfg: TokenizeConfig, sources: list[dict], tokenizer: Tokenizer | None) -> str:
    """Identity of what was asked for, to tell "already up to date" from "a different dataset"."""
    request = {
        "format": FORMAT,
        # By content, so a moved or renamed input file is still the same request.
        "sources": [(s["sha256"] or s["path"], s["role"]) for s in sources],
        "tokenizer": tokenizer.sha256 if tokenizer is not None else f"bpe-{cfg.vocab_size}-{cfg.train_bytes}",
        "top_k": cfg.top_k,
        "val_fraction": None if cfg.val_data else cfg.val_fraction,
        "seed": cfg.seed,
        "shard_tokens": cfg.shard_tokens,
    }
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()


def _existing(out: Path, request_hash: str) -> dict[str, Any] | None:
    """The meta of an up-to-date dataset at `out`, None if `out` is free; refuses anything else."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if not any(out.iterdir()):
        return None
    try:
        meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        meta = None
    if meta and meta.get("request_hash") == request_hash:
        try:
            open_dataset(out)
            return meta
        except UserError:
            pass
    raise UserError(
        f"--out {out} already holds a different dataset or other files; remove it or choose another folder"
    )


def tokenize(cfg: TokenizeConfig) -> dict[str, Any]:
    """Train or load a tokenizer and write the dataset folder `cfg.out`; returns a summary."""
    t0 = time.perf_counter()
    _check_config(cfg)
    sources = story_io.resolve(cfg.data)
    val_sources = story_io.resolve(cfg.val_data) if cfg.val_data else []
    tokenizer = load_tokenizer(cfg.tokenizer) if cfg.tokenizer else None
    if tokenizer is not None and cfg.top_k is not None:
        if tokenizer.pruned:
            raise UserError(
                f"{cfg.tokenizer} is already pruned to {tokenizer.vocab_size} tokens; drop --top-k"
            )
        if cfg.top_k > tokenizer.vocab_size:
            raise UserError(
                f"--top-k {cfg.top_k} is larger than the vocabulary ({tokenizer.vocab_size} tokens)"
            )
    if tokenizer is None and cfg.top_k is not None and cfg.top_k > cfg.vocab_size:
        raise UserError(f"--top-k {cfg.top_k} is larger than the vocabulary (--vocab-size {cfg.vocab_size})")
    source_info = _source_info(sources, "data") + _source_info(val_sources, "val_data")
    request_hash = _request_hash(cfg, source_info, tokenizer)
    out = Path(cfg.out)
    existing = _existing(out, request_hash)
    if existing is not None:
        return _summary(out, existing, "already up to date", time.perf_counter() - t0)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        meta = _build(cfg, tmp, sources, val_sources, tokenizer, source_info, request_hash)
        _share_like_umask(tmp)
        if out.exists():
            out.rmdir()  # empty, checked above
        try:
            os.replace(tmp, out)
        except OSError:
            raise UserError(
                f"--out {out} was filled by someone else while tokenizing; left it alone"
            ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _summary(out, meta, "written", time.perf_counter() - t0)


def _share_like_umask(folder: Path) -> None:
    # Temp folders and files are created private (0700 / 0600); give the finished
    # dataset the permissions an ordinary mkdir / open would have.
    mask = umask()
    folder.chmod(0o777 & ~mask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~mask)


def _build(
    cfg: TokenizeConfig,
    folder: Path,
    sources: list,
    val_sources: list,
    tokenizer: Tokenizer | None,
    source_info: list[dict],
    request_hash: str,
) -> dict[str, Any]:
    if tokenizer is None:
        tokenizer = train_bpe(_training_text(cfg, sources, val_sources), cfg.vocab_size)
        if cfg.top_k is not None and cfg.top_k > tokenizer.vocab_size:
            raise UserError(
                f"--top-k {cfg.top_k} is larger than the trained vocabulary ({tokenizer.vocab_size} tokens)"
            )
    base = tokenizer.base
    keep = tokenizer.base_ids
    prune = cfg.top_k is not None or keep is not None
    workers = cfg.workers or os.cpu_count() or 1
    input_bytes = sum(x["bytes"] if x["bytes"] is not None else _POOL_MIN_BYTES for x in source_info)
    # A pool's start-up (fresh interpreters) costs more than it saves on small inputs.
    use_pool = workers > 1 and input_bytes >= _POOL_MIN_BYTES

    dtype = token_dtype(base.vocab_size)
    writers = {s: _ShardWriter(folder, s, dtype, cfg.shard_tokens) for s in SPLITS}
    text_bytes = dict.fromkeys(SPLITS, 0)
    counts = np.zeros(base.vocab_size, dtype=np.int64)

    def store(encoded: dict[str, tuple[np.ndarray, np.ndarray, int]]) -> None:
        for split, (flat, lengths, n_bytes) in encoded.items():
            writers[split].add(flat, lengths)
            text_bytes[split] += n_bytes
            if prune:
                counts[:] += np.bincount(flat, minlength=len(counts))

    batches = _batches(_labelled_stories(cfg, sources, val_sources), _BATCH_BYTES)
    if not use_pool:
        for batch in batches:
            store(_encode_labelled(base, batch))
    else:
        # Spawned (not forked) workers: nothing of this process's threads or
        # HF state is inherited. Results are stored in input order, with a
        # bounded number of batches in flight to cap memory.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            workers, context, initializer=_start_worker, initargs=(base.to_str(),)
        ) as pool:
            in_flight: deque[Future] = deque()
            for batch in batches:
                in_flight.append(pool.submit(_encode_in_worker, batch))
                if len(in_flight) >= 2 * workers:
                    store(in_flight.popleft().result())
            while in_flight:
                store(in_flight.popleft().result())
    for w in writers.values():
        w.close()
    if sum(len(w.lengths) for w in writers.values()) == 0:
        raise UserError("no stories in the inputs")

    indexes = {s: w.index() for s, w in writers.items()}
    shard_names = {s: w.names for s, w in writers.items()}
    prune_info = None
    final = base
    if prune:
        counts[base.eot_id] = 0
        if keep is None:
            assert cfg.top_k is not None
            keep = top_k_ids(counts, cfg.top_k, base.eot_id).tolist()
        final = base.prune(keep)
        total = int(counts.sum())
        erased = total - int(counts[np.asarray(keep)].sum())
        prune_info = {
            "top_k": final.vocab_size,
            "erased_share": erased / total if total else 0.0,
            "erased_tokens": erased,
            "base_vocab_size": base.vocab_size,
        }
        for split in SPLITS:
            indexes[split] = _remap_split(folder, shard_names[split], indexes[split], base, final)

    final.save(folder)
    splits: dict[str, dict[str, Any]] = {}
    for split in SPLITS:
        np.save(folder / f"{split}_index.npy", indexes[split])
        splits[split] = {
            "shards": shard_names[split],
            "tokens": int(indexes[split][-1]),
            "documents": len(indexes[split]) - 1,
            "bytes": text_bytes[split],
        }
    total_tokens = sum(s["tokens"] for s in splits.values())
    meta = {
        "format": FORMAT,
        "vocab_size": final.vocab_size,
        "eot_id": final.eot_id,
        "dtype": token_dtype(final.vocab_size).name,
        "tokenizer": cfg.tokenizer or f"bpe-{cfg.vocab_size}",
        "tokenizer_sha256": final.sha256,
        "content_hash": _content_hash(folder),
        "request_hash": request_hash,
        "splits": splits,
        "bytes_per_token": sum(s["bytes"] for s in splits.values()) / total_tokens if total_tokens else 0.0,
        "sources": source_info,
        "val_fraction": 0.0 if cfg.val_data else cfg.val_fraction,
        "seed": cfg.seed,
        "prune": prune_info,
    }
    atomic_write_json(folder / "meta.json", meta)
    return meta


def _remap_split(
    folder: Path, names: list[str], index: np.ndarray, base: Tokenizer, final: Tokenizer
) -> np.ndarray:
    """Rewrite a split's shards in pruned ids, erasing dropped tokens; returns the new index."""
    assert final.base_ids is not None
    to_new = np.full(base.vocab_size, -1, dtype=np.int64)
    to_new[np.asarray(final.base_ids)] = np.arange(final.vocab_size)
    in_dtype, out_dtype = token_dtype(base.vocab_size), token_dtype(final.vocab_size)
    new_index = np.empty_like(index)
    pos = kept = done = 0  # stream position, kept tokens so far, index entries filled
    for name in names:
        path = folder / name
        old = (
            np.fromfile(path, dtype=in_dtype, count=0)
            if path.stat().st_size == 0
            else np.memmap(path, dtype=in_dtype, mode="r")
        )
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            for lo in range(0, len(old), _REMAP_BLOCK):
                block = to_new[old[lo : lo + _REMAP_BLOCK]]
                keep = block >= 0
                before = np.concatenate([[0], np.cumsum(keep, dtype=np.int64)])  # kept before each position
                end = pos + len(block)
                upto = int(np.searchsorted(index, end, side="left"))
                new_index[done:upto] = kept + before[index[done:upto] - pos]
                done, kept, pos = upto, kept + int(before[-1]), end
                f.write(block[keep].astype(out_dtype).tobytes())
            f.flush()
            os.fsync(f.fileno())
        del old
        os.replace(tmp, path)
    new_index[done:] = kept
    return new_index


def _content_hash(folder: Path) -> str:
    """sha256 over every file's name and sha256 (meta.json excluded), in name order."""
    h = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.name != "meta.json" and path.is_file():
            h.update(f"{path.name}\0{sha256_file(path)}\n".encode())
    return h.hexdigest()


def _summary(out: Path, meta: dict[str, Any], status: str, seconds: float) -> dict[str, Any]:
    splits = meta["splits"]
    text = sum(s["bytes"] for s in splits.values())
    summary = {
        "out": str(out),
        "status": status,
        "vocab_size": meta["vocab_size"],
        "eot_id": meta["eot_id"],
        "dtype": meta["dtype"],
        **{name: {k: s[k] for k in ("tokens", "documents", "bytes")} for name, s in splits.items()},
        "bytes_per_token": round(meta["bytes_per_token"], 4),
        "prune": meta["prune"],
        "content_hash": meta["content_hash"],
        "seconds": round(seconds, 3),
    }
    if status == "written" and seconds > 0:
        summary["mb_per_s"] = round(text / seconds / 1e6, 2)
    return summary
