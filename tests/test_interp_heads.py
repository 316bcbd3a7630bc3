"""Attention heads: scores on constructed heads with known answers, and the two controls on stories260K."""

from __future__ import annotations

import json
import random

import pytest
import torch

from conftest import import_s260k
from tinystories.interp.heads import (
    HeadsConfig,
    LayerStats,
    interpret_heads,
    random_copy,
    score_heads,
    semantic_targets,
    shuffled,
)
from tinystories.interp.text import prepare, procedural_records

WORDS = ["the", "dog", "cat", "ball", "Lucy", "Tom", "park", "banana", "ran", "saw", "big", "red", "and", "said", "happy"]


class WordTokenizer:
    """One token per word (with its leading space), id 0 = end-of-text."""

    eot_id = 0
    vocab = ("<eot>", *WORDS, ".")

    def encode(self, text):
        return [self.vocab.index(w) for w in text.replace(".", " .").split()]

    def decode(self, ids):
        return "".join((w if w == "." else " " + w) for w in (self.vocab[i] for i in ids if i)).lstrip()


pytestmark = pytest.mark.usefixtures("one_thread")


def random_stories(n=12, seed=0):
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(80, 160))) + "." for _ in range(n)]
    return prepare([{"story": t} for t in texts], WordTokenizer(), 256)


def offset_head(L, k):
    """Every query i >= k looks exactly k tokens back; earlier queries look at the first token."""
    A = torch.zeros(L, L)
    for i in range(L):
        A[i, i - k if i >= k else 0] = 1.0
    return A


def same_token_head(story):
    """Each query spreads its attention over earlier copies of its own word, else looks at itself."""
    t = semantic_targets(story)["same"].float()
    A = t / t.sum(-1, keepdim=True).clamp(min=1)
    A[t.sum(-1) == 0] = torch.eye(len(story))[t.sum(-1) == 0]
    return A


def heads_on(stories, make):
    """Run LayerStats over stories with H constructed heads (make(story) -> (H, L, L))."""
    H = make(stories[0]).shape[0]
    st = LayerStats(H, max(len(s) for s in stories))
    for s in stories:
        st.update(make(s), semantic_targets(s))
    return st.results()


def test_pure_offset_heads_score_positional_one_and_semantic_zero():
    stories = random_stories()
    res = heads_on(stories, lambda s: torch.stack([offset_head(len(s), k) for k in (1, 3, 7)]))
    cfg = HeadsConfig()
    from tinystories.interp.heads import classify

    for h, k in zip(res, (1, 3, 7)):
        assert h["positional"] > 0.95, h
        assert abs(h["semantic"]) < 0.02, h
        assert h["offsets"][0][0] == k
        assert classify(h, cfg) == "distance"
        # Mean distance is k except for the first k queries, which look back less far.
        assert k * 0.7 < h["mean_distance"] <= k


def test_same_token_head_scores_semantic_not_positional():
    stories = random_stories()
    uniform = lambda s: torch.ones(len(s), len(s)).tril() / torch.arange(1, len(s) + 1)[:, None]  # noqa: E731
    res = heads_on(stories, lambda s: torch.stack([same_token_head(s), uniform(s)]))
    same, unif = res
    assert same["semantic_same_word"] > 0.5, same
    assert same["lift_same_word"] > 3
    assert same["positional"] < 0.3
    assert HeadsConfig().positional_threshold > same["positional"]
    from tinystories.interp.heads import classify

    assert classify(same, HeadsConfig()) == "semantic"
    # Uniform attention: classified other, and well below the semantic threshold (the offset profile
    # of uniform attention favours short offsets a little, hence a small nonzero excess).
    assert abs(unif["semantic"]) < HeadsConfig().semantic_threshold / 2
    assert unif["norm_entropy"] > 0.99
    assert classify(unif, HeadsConfig()) == "other"


def test_semantic_targets_mark_earlier_copies_of_the_same_word_and_entities():
    s = random_stories(1)[0]
    t = semantic_targets(s)
    for i in range(len(s)):
        for j in range(len(s)):
            same = j < i and s.word_of[j] >= 0 and s.word_text(j) == s.word_text(i) and s.word_of[i] >= 0
            assert bool(t["same"][i, j]) == same
            assert bool(t["entity"][i, j]) == (j < i and s.class_of(j) in ("noun", "name"))


@pytest.fixture(scope="module")
def s260k(tmp_path_factory):
    """stories260K imported as a run folder, and 8 procedural stories (first 160 tokens) in its tokenizer."""
    from tinystories.rundir import load_run

    out = import_s260k(tmp_path_factory.mktemp("heads") / "s260k")
    loaded = load_run(out)
    stories = prepare(procedural_records(8, seed=3), loaded.tokenizer, 160)
    return out, loaded.model, stories


def test_control_random_init_copy_has_no_semantic_head(s260k):
    _, model, stories = s260k
    cfg = HeadsConfig()
    trained = score_heads(model, stories, cfg)
    rand = score_heads(random_copy(model, seed=0), stories, cfg)
    assert sum(h["kind"] == "semantic" for h in rand) == 0
    assert max(h["semantic"] for h in rand) < cfg.semantic_threshold / 2
    # The trained model's heads do attend by content more than any random head does.
    assert max(h["semantic"] for h in trained) > 2 * max(h["semantic"] for h in rand)


def test_control_positional_scores_survive_shuffled_tokens(s260k):
    _, model, stories = s260k
    cfg = HeadsConfig()
    real = score_heads(model, stories, cfg)
    shuf = score_heads(model, stories, cfg, ids=shuffled([s.ids for s in stories], seed=0))
    from tinystories.interp.heads import pearson

    assert pearson([h["positional"] for h in real], [h["positional"] for h in shuf]) >= 0.9
    dist = [(a, b) for a, b in zip(real, shuf) if a["kind"] == "distance"]
    assert dist, "stories260K has distance-based heads"
    for a, b in dist:
        assert b["positional"] > 0.8 * a["positional"]


def test_command_writes_scores_and_maps(s260k, tmp_path):
    run, _, _ = s260k
    out = tmp_path / "interp"
    summary = interpret_heads(HeadsConfig(run=str(run), stories=3, controls=False, out=str(out), png=False,
                                          text="One day, Lucy asks Tom for a banana."))
    data = json.loads((out / "heads.json").read_text())
    assert len(data["heads"]) == 5 * 8 and summary["counts"] == data["counts"]
    L, H, T, T2 = data["text"]["shape"]
    assert (L, H, T == T2) == (5, 8, True) and len(data["text"]["tokens"]) == T
    assert data["thresholds"]["semantic"] == HeadsConfig().semantic_threshold


def test_attention_map_png(tmp_path):
    pats = torch.stack([offset_head(6, 1), offset_head(6, 2)])[None]  # (1 layer, 2 heads, 6, 6)
    maps = {"tokens": ["<eot>", "One", " day", ",", " Lucy", " asks"], "_patterns": pats}
    heads = [{"layer": 0, "head": 0, "kind": "distance"}, {"layer": 0, "head": 1, "kind": "distance"}]
    from tinystories.interp.heads import draw_maps

    assert draw_maps(maps, heads, tmp_path) == ["heads_layer0.png"]
    assert (tmp_path / "heads_layer0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
