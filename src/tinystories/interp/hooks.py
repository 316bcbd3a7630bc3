"""Named activation capture over many stories, with no padding in the results and no logits.

Sites use the model's TransformerLens-style names (`blocks.{l}.attn.hook_pattern`
(H, T, T) per story, `blocks.{l}.mlp.hook_post` (T, F), `blocks.{l}.hook_resid_post`
(T, C), ...; `GPT.hook_sites()` lists them).

Stories of different lengths are batched without changing any result: they
are sorted by length, grouped up to `batch_tokens` padded positions, padded on
the right, and each row's activations are cut back to its own length. In a
causal model a position never sees the positions after it, so the padding is
invisible to every kept value. The forward asks for no logits (a 50,257-token
vocabulary would otherwise cost B x T x V floats), and only the requested
sites are kept, one batch at a time, so memory is bounded by the batch and
what the caller keeps.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import torch

from tinystories.errors import UserError
from tinystories.model import GPT


def resolve_layer(model: GPT, layer: int) -> int:
    """A layer index, negative counting from the end (-1 = last, -2 = penultimate)."""
    n = model.config.n_layer
    if not -n <= layer < n:
        raise UserError(f"layer {layer} does not exist: the model has {n} layers (0..{n - 1}, or -1..-{n})")
    return layer % n


def batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Story indices grouped by similar length, each group at most batch_tokens padded positions (or one story)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    for i in order:
        # Sorted ascending, so the newest story is the longest of its group.
        if groups and (len(groups[-1]) + 1) * lengths[i] <= batch_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _store(kept: dict[str, torch.Tensor], site: str, x: torch.Tensor) -> None:
    kept[site] = x.detach()  # returning None: observe, do not replace


def _cut(site: str, act: torch.Tensor, row: int, length: int) -> torch.Tensor:
    if site.endswith("hook_pattern"):
        return act[row, :, :length, :length]  # (H, T, T)
    return act[row, :length]  # (T, ...)


@torch.no_grad()
def iter_activations(
    model: GPT,
    stories: Sequence[Sequence[int]],
    sites: Sequence[str],
    *,
    batch_tokens: int = 8192,
    device: str | torch.device | None = None,
) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """Yield (story index, {site: activation of that story alone}) for every story, batch by batch.

    Activations are float32 views into the batch's tensors, on the model's
    device; copy (`.clone()`, `.cpu()`) what you keep. Stories come in order of
    length, not in the given order.
    """
    known = set(model.hook_sites())
    unknown = [s for s in sites if s not in known]
    if unknown:
        raise UserError(f"unknown hook site(s): {', '.join(unknown)} (see GPT.hook_sites())")
    if any(len(s) == 0 for s in stories):
        raise UserError("cannot capture activations of an empty story")
    device = device if device not in (None, "auto") else next(model.parameters()).device
    limit = model.config.max_seq_len if model.config.pos == "learned" else None
    lengths = [len(s) for s in stories]
    if limit is not None and max(lengths, default=0) > limit:
        raise UserError(f"a story of {max(lengths)} tokens exceeds the model's context of {limit}")
    kept: dict[str, torch.Tensor] = {}
    hooks = {s: functools.partial(_store, kept, s) for s in sites}
    for group in batches(lengths, batch_tokens):
        T = max(lengths[i] for i in group)
        idx = torch.zeros(len(group), T, dtype=torch.long)
        for row, i in enumerate(group):
            idx[row, : lengths[i]] = torch.as_tensor(stories[i], dtype=torch.long)
        model(idx.to(device), logits="none", hooks=hooks)
        for row, i in enumerate(group):
            yield i, {s: _cut(s, kept[s], row, lengths[i]).float() for s in sites}
        kept.clear()  # the batch's tensors go before the next forward allocates its own


def capture(
    model: GPT,
    stories: Sequence[Sequence[int]],
    sites: Sequence[str],
    *,
    batch_tokens: int = 8192,
    device: str | torch.device | None = None,
) -> dict[str, list[torch.Tensor]]:
    """{site: [activation of story 0, story 1, ...]} on the CPU, each story unpadded, in the given order."""
    out: dict[str, list[torch.Tensor | None]] = {s: [None] * len(stories) for s in sites}
    for i, acts in iter_activations(model, stories, sites, batch_tokens=batch_tokens, device=device):
        for s, a in acts.items():
            out[s][i] = a.to("cpu", copy=True)
    return out  # type: ignore[return-value]
