"""Attention heads: scores on constructed heads with known answers, the two controls on stories260K, and the
induction test (constructed patterns, a micro model trained to copy, stories260K as a reference)."""

from __future__ import annotations

import json
import random

import pytest
import torch

from conftest import import_s260k, torch_threads, write_tiny_run
from tinystories.interp.heads import (
    HeadsConfig,
    LayerStats,
    classify,
    induction_length,
    induction_scores,
    induction_test,
    interpret_heads,
    random_copy,
    repeated_sequences,
    score_heads,
    semantic_targets,
    shuffled,
)
from tinystories.interp.summary import read_interp
from tinystories.interp.text import prepare, procedural_records
from tinystories.rundir import save_checkpoint

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
    assert data["thresholds"]["induction"] == HeadsConfig().induction_threshold
    assert data["induction_test"] == {"sequences": 20, "length": 100}  # stories260K's context is 256
    assert all(0 <= h["induction"] <= 1 and 0 <= h["duplicate"] <= 1 for h in data["heads"])
    assert set(data["copy_loss"]) == {"first", "second"} and summary["induction_heads"] == []


def test_attention_map_png(tmp_path):
    pats = torch.stack([offset_head(6, 1), offset_head(6, 2)])[None]  # (1 layer, 2 heads, 6, 6)
    maps = {"tokens": ["<eot>", "One", " day", ",", " Lucy", " asks"], "_patterns": pats}
    heads = [{"layer": 0, "head": 0, "kind": "distance"}, {"layer": 0, "head": 1, "kind": "distance"}]
    from tinystories.interp.heads import draw_maps

    assert draw_maps(maps, heads, tmp_path) == ["heads_layer0.png"]
    assert (tmp_path / "heads_layer0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- induction heads ---------------------------------------------------------------------


def test_induction_scores_of_constructed_heads():
    L = 5
    T = 2 * L + 1  # [eot] + R + R
    induction, duplicate = torch.zeros(T, T), torch.zeros(T, T)
    induction[:, 0] = duplicate[:, 0] = 1.0  # queries outside the second copy park on the end-of-text
    for q in range(L + 1, 2 * L):
        k = q - L - 1  # the query is the second copy of R[k]
        induction[q] = 0.0
        induction[q, k + 2] = 1.0
        duplicate[q] = 0.0
        duplicate[q, k + 1] = 1.0
    uniform = torch.ones(T, T).tril() / torch.arange(1, T + 1)[:, None]
    ind, dup = induction_scores(torch.stack([induction, duplicate, uniform]), L)  # (3,) each
    expected_uniform = sum(1 / (q + 1) for q in range(L + 1, 2 * L)) / (L - 1)
    assert ind.tolist() == pytest.approx([1.0, 0.0, expected_uniform])
    assert dup.tolist() == pytest.approx([0.0, 1.0, expected_uniform])
    # Leading dimensions (sequences) are averaged over too.
    twice = torch.stack([torch.stack([induction, duplicate, uniform])] * 2)  # (2, 3, T, T)
    assert induction_scores(twice, L)[0].tolist() == pytest.approx(ind.tolist())
    assert classify({"norm_entropy": 0.1, "induction": 1.0, "positional": 0.9, "semantic": 0.0},
                    HeadsConfig()) == "induction"


def test_repeated_sequences_never_hold_the_end_of_text_inside():
    seqs = repeated_sequences(50, 30, vocab_size=8, eot_id=3, seed=0)
    assert seqs.shape == (50, 61) and (seqs[:, 0] == 3).all()
    assert (seqs[:, 1:31] == seqs[:, 31:]).all()
    assert set(seqs[:, 1:].unique().tolist()) == {0, 1, 2, 4, 5, 6, 7}
    assert torch.equal(seqs, repeated_sequences(50, 30, vocab_size=8, eot_id=3, seed=0))
    assert induction_length(256) == 100 and induction_length(64) == 31


@pytest.fixture(scope="module")
def copier(tmp_path_factory):
    """A 2-layer micro model (vocabulary 400, context 64) trained for 150 steps on [eot] + R + R.

    On these sequences copying from context is the only way to predict anything. Within a test's time
    the model learns to copy with a head that looks L - 1 tokens back (R always repeats at the same
    distance), which the induction test counts as it should: a head attending from R[k]'s second copy
    to the token after its first. Content-based induction at any distance took it over 2,000 steps.
    """
    run, net, tok = write_tiny_run(tmp_path_factory.mktemp("copier"), max_seq_len=64, d_model=32, n_head=2)
    L = induction_length(64)
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.0)
    with torch_threads(1):
        for step in range(150):
            x = repeated_sequences(32, L, tok.vocab_size, tok.eot_id, seed=1000 + step)  # (32, 2L + 1)
            loss = net(x[:, :-1], x[:, 1:], logits="none").loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    save_checkpoint(run, 150, net.eval())
    return run


def test_a_model_trained_to_copy_has_an_induction_head(copier):
    out = copier / "interp"
    summary = interpret_heads(HeadsConfig(run=str(copier), stories=4, png=False, out=str(out)))
    data = json.loads((out / "heads.json").read_text())
    assert summary["counts"]["induction"] >= 1 and summary["induction_heads"]
    assert max(h["induction"] for h in data["heads"]) > 0.8
    loss = data["copy_loss"]
    assert loss["first"] > 5 and loss["second"] < loss["first"] / 3  # ln 400 = 5.99 without copying
    rand = data["controls"]["random_init"]
    assert rand["counts"]["induction"] == 0 and rand["max_induction"] < 0.1
    assert rand["copy_loss"]["second"] == pytest.approx(rand["copy_loss"]["first"], abs=0.05)
    interp = read_interp(copier)
    assert interp.missing == [] and interp.heads is not None and interp.heads.counts is not None
    assert interp.heads.counts.induction == summary["counts"]["induction"]


def test_stories260k_has_no_induction_head(s260k):
    """A regression reference: stories260K copies nothing from context on random tokens.

    Measured: largest induction score 0.037 (head 0.5; the rest <= 0.02), loss 18.2 nats/token on the first
    copy and 17.8 on the second."""
    _, model, stories = s260k
    ind = induction_test(model, HeadsConfig(), eot_id=stories[0].ids[0])
    assert ind.length == 100 and ind.induction.shape == (5 * 8,)
    assert ind.induction.max() < 0.05 and ind.duplicate.max() < 0.05
    assert ind.second > 0.9 * ind.first > 15
    heads = score_heads(model, stories, HeadsConfig(), induction=ind)
    assert not [h for h in heads if h["kind"] == "induction"]


def test_summary_reads_heads_json_written_before_the_induction_test(tmp_path):
    old_head = {"layer": 0, "head": 0, "kind": "distance", "positional": 0.7, "semantic": 0.0,
                "semantic_same_word": 0.0, "semantic_entity": 0.0, "mean_distance": 1.0, "norm_entropy": 0.2,
                "first_token": 0.1, "offsets": [[1, 0.9]]}
    counts = {"distance": 1, "semantic": 0, "other": 0}
    old = {"source": "procedural", "stories": 3, "tokens": 300,
           "thresholds": {"positional": 0.5, "semantic": 0.05, "max_entropy": 0.9}, "counts": counts,
           "heads": [old_head],
           "controls": {"random_init": {"counts": counts, "max_semantic": 0.01},
                        "shuffled": {"correlation_all": 0.9, "correlation_distance": None, "counts": counts}},
           "text": {"tokens": [], "shape": [], "patterns_u8": ""}}
    (tmp_path / "interp").mkdir()
    (tmp_path / "interp" / "heads.json").write_text(json.dumps(old))
    interp = read_interp(tmp_path)
    assert interp.missing == [] and interp.heads is not None
    heads = interp.heads
    assert heads.heads[0].kind == "distance" and heads.heads[0].induction is None and heads.copy_loss is None
    assert heads.counts is not None and heads.counts.induction is None and heads.counts.distance == 1
    assert heads.controls is not None and heads.controls.random_init is not None
    assert heads.controls.random_init.max_induction is None
    from tinystories.report.sections import findings, section_heads

    page = section_heads(interp, tmp_path)
    assert "1</b> distance-based" in page and "</b> induction" not in page
    assert "induction heads" not in findings(interp)
