"""Memory-mapped batches from a dataset folder, as a pure function of (seed, step).

The split's shards are read as one token stream. An epoch cuts it into
non-overlapping windows of `seq_len + 1` tokens at stride `seq_len` (so every
next-token pair is predicted exactly once), starting at a seeded random offset,
and visits them in a seeded random order. Global window `g` is window
`g % n` of epoch `g // n`.

Step `s` uses global windows `[s * G, (s + 1) * G)` with
`G = micro_batch * grad_accum * world_size`; rank `r` at micro-step `m` takes
the `micro_batch` windows starting at `(r * grad_accum + m) * micro_batch`.
Nothing depends on what was read before, so a resumed run and any DDP split of
the same global batch see exactly the same tokens.

With story windows (`story_starts`) an epoch is one window per story that
has `seq_len + 1` tokens left in the split, starting at the story's first
token (its `[eot]`), in seeded random order: the model always reads a story
from its beginning, as it does when it writes one or answers a probe.

With a curriculum (`tinystories.data.curriculum`) the first `span` global
windows are drawn from the easiest stories first; global window `g >= span`
is then window `g - span` of the uniform order above.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tinystories.data.curriculum import Curriculum
from tinystories.data.shards import Dataset, Split
from tinystories.errors import UserError


def split_of(dataset: Dataset, name: str) -> Split:
    """A split of an opened dataset folder; a clear error when it is missing."""
    if name not in dataset.splits:
        raise UserError(f"dataset {dataset.path} has no {name!r} split")
    return dataset.splits[name]


@dataclass(frozen=True)
class Layout:
    """How one step's global batch splits over processes and micro-steps."""

    micro_batch: int
    """Windows per forward pass on one process."""
    grad_accum: int
    """Micro-steps per optimizer step on each process."""
    world_size: int = 1
    """Number of processes."""

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.grad_accum * self.world_size


class TrainBatches:
    """Training windows of a split, a pure function of (seed, step, rank, micro-step)."""

    def __init__(
        self, split: Split, seq_len: int, seed: int, curriculum: Curriculum | None = None,
        story_starts: bool = False,
    ):
        self.split = split
        self.seq_len = seq_len
        self.seed = seed
        self.curriculum = curriculum
        n = split.n_tokens
        if n < seq_len + 1:
            raise UserError(
                f"the {split.name!r} split has {n} tokens, fewer than one window of seq_len + 1 = {seq_len + 1}"
            )
        # Leave one window of slack so any offset in [0, seq_len) fits the same
        # number of windows; tiny splits fall back to fewer offsets.
        full = (n - 1) // seq_len
        self.windows_per_epoch = full - 1 if full >= 2 else full
        self.offsets = min(seq_len, n - self.windows_per_epoch * seq_len)
        self._epoch = -1
        self._offset = 0
        self._order = np.empty(0, dtype=np.int64)
        self.story_starts: np.ndarray | None = None
        if story_starts:
            starts = split.index[:-1].astype(np.int64)
            self.story_starts = starts[starts + seq_len + 1 <= n]  # (windows,)
            self.windows_per_epoch, self.offsets = len(self.story_starts), 1

    def _set_epoch(self, epoch: int) -> None:
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._offset = int(rng.integers(self.offsets))
            self._order = rng.permutation(self.windows_per_epoch)
            self._epoch = epoch

    def window_start(self, g: int) -> int:
        """Stream position of global window `g`."""
        if self.curriculum is not None:
            if g < self.curriculum.span:
                return self.curriculum.window_start(g)
            g -= self.curriculum.span
        epoch, i = divmod(g, self.windows_per_epoch)
        self._set_epoch(epoch)
        if self.story_starts is not None:
            return int(self.story_starts[self._order[i]])
        return self._offset + int(self._order[i]) * self.seq_len

    def windows(self, first: int, count: int) -> np.ndarray:
        """Global windows `[first, first + count)` as a (count, seq_len + 1) int64 array."""
        out = np.empty((count, self.seq_len + 1), dtype=np.int64)
        for j in range(count):
            start = self.window_start(first + j)
            out[j] = self.split.tokens(start, start + self.seq_len + 1)
        return out

    def batch(self, step: int, layout: Layout, rank: int = 0, micro: int = 0) -> np.ndarray:
        """The (micro_batch, seq_len + 1) windows of `rank` at micro-step `micro` of `step`."""
        first = step * layout.global_batch + (rank * layout.grad_accum + micro) * layout.micro_batch
        return self.windows(first, layout.micro_batch)

    def epoch_of(self, step: int, layout: Layout) -> float:
        """How many epochs `step` steps amount to."""
        return step * layout.global_batch / self.windows_per_epoch


def val_windows(split: Split, seq_len: int, max_tokens: int) -> np.ndarray:
    """A fixed set of validation windows, (n, seq_len + 1) int64.

    Non-overlapping windows at stride `seq_len` from the start of the split; when
    more than `max_tokens` (0 = no limit) would be scored, an evenly spaced
    subset so the whole split is represented.
    """
    total = (split.n_tokens - 1) // seq_len
    if total < 1:
        raise UserError(
            f"the {split.name!r} split has {split.n_tokens} tokens, fewer than seq_len + 1 = {seq_len + 1}"
        )
    n = total if max_tokens <= 0 else max(1, min(total, max_tokens // seq_len))
    picks = np.unique(np.linspace(0, total - 1, n).round().astype(np.int64))
    out = np.empty((len(picks), seq_len + 1), dtype=np.int64)
    for j, k in enumerate(picks):
        out[j] = split.tokens(int(k) * seq_len, int(k) * seq_len + seq_len + 1)
    return out


def to_device(windows: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Split windows into (inputs, targets) long tensors on `device`."""
    t = torch.from_numpy(windows)
    if device.type == "cuda":
        t = t.pin_memory().to(device, non_blocking=True)
    return t[:, :-1].contiguous(), t[:, 1:].contiguous()
