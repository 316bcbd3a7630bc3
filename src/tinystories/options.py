"""Options shared by every command that loads a run's model, and by those that sample from it.

A command's config inherits them and redeclares a field only to change its
default (the docstring, and so the `--help` text, is inherited).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RunOptions:
    """Which run, which of its checkpoints, on which device."""

    run: str = ""
    """Run folder (made by `tinystories train` or `tinystories convert`)."""
    step: int | None = None
    """Checkpoint step to load; default = the latest."""
    device: str = "auto"
    """Torch device: auto (cuda when available, else cpu), cpu, cuda, cuda:1, mps."""


@dataclass
class SamplingOptions:
    """How new tokens are drawn from the model."""

    max_new_tokens: int = 256
    """New tokens per completion at most."""
    temperature: float = 1.0
    """Softmax temperature; 0 = greedy."""
    top_k: int = 0
    """Sample from the k most likely tokens only; 0 = off."""
    top_p: float = 1.0
    """Nucleus sampling threshold; 1 = off."""
    seed: int = 1337
    """Seed of the sampling."""
