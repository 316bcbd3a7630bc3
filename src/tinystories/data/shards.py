"""Dataset folders: token shards with an index and `meta.json`, opened for reading.

Layout (docs/internals.md, "Dataset folder"): `tokenizer.json` (+ `vocab_map.json`
when pruned), `{split}_{NNNN}.bin` flat token ids where every document is
`[eot] + tokens`, `{split}_index.npy` document offsets into the split's
stream, and `meta.json`. `tokenize.py` writes them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinystories.data.tokenizer import MAX_VOCAB, Tokenizer, load_tokenizer
from tinystories.errors import UserError

FORMAT = "tinystories-dataset/1"
SPLITS = ("train", "val")


# --- reading a dataset folder ---------------------------------------------------------


@dataclass
class Split:
    """One split of a dataset folder: memmapped shards and the document index."""

    name: str
    shards: list[np.ndarray]
    """Each shard's tokens, memmapped read-only."""
    index: np.ndarray
    """int64 (documents + 1,): document i is tokens [index[i], index[i+1]) of the split's stream."""
    starts: np.ndarray = field(init=False)
    """Stream offset of each shard's first token (plus the total at the end)."""

    def __post_init__(self) -> None:
        self.starts = np.concatenate([[0], np.cumsum([len(s) for s in self.shards], dtype=np.int64)])

    @property
    def n_tokens(self) -> int:
        return int(self.starts[-1])

    @property
    def n_documents(self) -> int:
        return len(self.index) - 1

    def tokens(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of the split's stream, across shard boundaries if needed."""
        start, stop = max(0, start), min(stop, self.n_tokens)
        if stop <= start:
            return np.zeros(0, dtype=self.shards[0].dtype if self.shards else np.uint16)
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        parts = []
        i = first
        while start < stop:
            lo = start - int(self.starts[i])
            hi = min(stop, int(self.starts[i + 1])) - int(self.starts[i])
            parts.append(self.shards[i][lo:hi])
            start = int(self.starts[i + 1])
            i += 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def document(self, i: int) -> np.ndarray:
        """Document i as stored: `[eot] + tokens`."""
        return self.tokens(int(self.index[i]), int(self.index[i + 1]))


@dataclass
class Dataset:
    """A dataset folder opened for reading."""

    path: Path
    meta: dict[str, Any]
    splits: dict[str, Split]

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def eot_id(self) -> int:
        return int(self.meta["eot_id"])

    @property
    def content_hash(self) -> str:
        return str(self.meta["content_hash"])

    def tokenizer(self) -> Tokenizer:
        return load_tokenizer(self.path)

    def split(self, name: str, *, nonempty: bool = False) -> Split:
        """The split called `name`; a UserError when it is missing (or, with `nonempty`, has no documents)."""
        if name not in self.splits:
            raise UserError(f"dataset {self.path} has no {name!r} split (has: {', '.join(self.splits)})")
        split = self.splits[name]
        if nonempty and split.n_documents == 0:
            raise UserError(f"the {name!r} split of {self.path} has no documents")
        return split

    def stories(self, name: str) -> Iterator[str]:
        """The documents of split `name` decoded back to text, in stored order."""
        split = self.split(name)
        tok = self.tokenizer()
        for i in range(split.n_documents):
            yield tok.decode(split.document(i)[1:].tolist())  # stored as [eot] + tokens


def is_dataset(path: str | os.PathLike) -> bool:
    """Whether `path` is a dataset folder (it holds a meta.json) rather than story files."""
    return (Path(path) / "meta.json").is_file()


def open_dataset(folder: str | os.PathLike) -> Dataset:
    """Open a dataset folder written by `tokenize`: meta, memmapped shards, index per split."""
    path = Path(folder)
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise UserError(
            f"{path} is not a dataset folder (no meta.json); create one with `tinystories tokenize`"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise UserError(f"{meta_path}: unreadable ({e})") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{path}: unknown dataset format {meta.get('format')!r} (expected {FORMAT})")
    dtype = np.dtype(meta["dtype"])
    splits = {}
    for name, info in meta["splits"].items():
        shards = []
        for shard in info["shards"]:
            file = path / shard
            if not file.is_file():
                raise UserError(f"{path}: shard {shard} is missing")
            if file.stat().st_size == 0:
                shards.append(np.zeros(0, dtype=dtype))
            else:
                shards.append(np.memmap(file, dtype=dtype, mode="r"))
        index = np.load(path / f"{name}_index.npy")
        split = Split(name, shards, index)
        if split.n_tokens != info["tokens"] or int(index[-1]) != split.n_tokens:
            raise UserError(f"{path}: split {name} is damaged (token counts disagree with meta.json)")
        splits[name] = split
    return Dataset(path, meta, splits)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (vocabularies up to 65,536), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= MAX_VOCAB else np.uint32)
