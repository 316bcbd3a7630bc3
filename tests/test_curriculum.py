"""Curriculum: a deterministic easy-to-hard order that resumes exactly and really starts with short stories."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import conftest
from test_train import MICRO, losses, make_dataset, micro_cfg, open_split, weights
from tinystories.data.curriculum import Curriculum, story_scores, window_scores
from tinystories.data.loader import TrainBatches
from tinystories.errors import UserError
from tinystories.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    stories = conftest.testdata_path("tinystories/TinyStories-valid.first201.txt")
    return make_dataset(tmp_path_factory.mktemp("curriculum") / "data", stories)


def eot_share(batches: TrainBatches, first: int, count: int, eot: int) -> float:
    """Share of story-start tokens in windows [first, first + count): high when the stories are short."""
    return float((batches.windows(first, count) == eot).mean())


def test_order_is_deterministic_and_seeded(dataset: Path) -> None:
    split = open_split(dataset, "train")
    a, b = (Curriculum(split, 64, "length", seed=3, span=200) for _ in range(2))
    assert [a.window(g) for g in range(200)] == [b.window(g) for g in range(199, -1, -1)][::-1]  # any read order
    other = Curriculum(split, 64, "length", seed=4, span=200)
    assert [a.window(g) for g in range(200)] != [other.window(g) for g in range(200)]


def test_length_curriculum_feeds_shorter_stories_first(dataset: Path) -> None:
    split = open_split(dataset, "train")
    eot = int(split.document(0)[0])
    lengths = np.diff(split.index)
    span = 400
    easy = TrainBatches(split, 64, 5, Curriculum(split, 64, "length", 5, span, start=0.1))
    hard = TrainBatches(split, 64, 5, Curriculum(split, 64, "length", 5, span, start=0.1, reverse=True))
    plain = TrainBatches(split, 64, 5)
    # The story each early window starts in is shorter than the typical story.
    starts = np.array([easy.window_start(g) for g in range(40)])
    first_stories = lengths[np.searchsorted(split.index, starts, side="right") - 1]
    assert np.median(first_stories) < np.quantile(lengths, 0.3)
    # Short stories mean more story starts per window: easy > random > reversed at the start...
    assert eot_share(easy, 0, 40, eot) > eot_share(plain, 0, 40, eot) > eot_share(hard, 0, 40, eot)
    # ...and the pool widens: the end of the span is harder than its start.
    assert eot_share(easy, span - 40, 40, eot) < eot_share(easy, 0, 40, eot)
    # After the span the loader's uniform epochs take over.
    assert easy.window_start(span + 7) == plain.window_start(7)


def test_measures_rank_windows_and_a_score_file_works(dataset: Path, tmp_path: Path) -> None:
    split = open_split(dataset, "train")
    n = (split.n_tokens - 1) // 64
    for name in ("rare", "diversity", "compress"):
        scores = window_scores(split, story_scores(split, name), 64, n)
        assert scores.shape == (n,) and np.isfinite(scores).all() and scores.std() > 0, name
    lengths = story_scores(split, "length")
    file = tmp_path / "scores.txt"
    file.write_text("\n".join(str(-x) for x in lengths) + "\n")
    by_file = Curriculum(split, 64, str(file), seed=1, span=100)
    reverse = Curriculum(split, 64, "length", seed=1, span=100, reverse=True)
    assert np.array_equal(by_file.ranked, reverse.ranked)
    file.write_text("1\n2\n")
    with pytest.raises(UserError, match="one finite number per story"):
        Curriculum(split, 64, str(file), seed=1, span=100)
    with pytest.raises(UserError, match="neither a measure"):
        Curriculum(split, 64, "nope", seed=1, span=100)


def test_curriculum_run_resumes_exactly(dataset: Path, tmp_path: Path) -> None:
    """12 steps with a length curriculum over 8, interrupted at 6 and resumed == uninterrupted, bitwise."""
    whole, parts, plain = tmp_path / "whole", tmp_path / "parts", tmp_path / "plain"
    kw = dict(decay_steps=12, curriculum="length", curriculum_steps=8)
    train(micro_cfg(dataset, whole, max_steps=12, **kw), MICRO)
    train(micro_cfg(dataset, parts, max_steps=6, **kw), MICRO)
    train(TrainConfig(run=str(parts), resume=True, max_steps=12, log_interval=1, progress=False))
    assert losses(parts) == losses(whole)  # bitwise: floats compared exactly
    a, b = weights(whole), weights(parts)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The curriculum really changed the run: in random order the same run has other losses.
    train(micro_cfg(dataset, plain, max_steps=12, decay_steps=12), MICRO)
    assert losses(plain) != losses(whole)


def test_curriculum_needs_a_length(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--curriculum needs a length"):
        train(micro_cfg(dataset, tmp_path / "run", time=5, schedule="constant", curriculum="length"), MICRO)
