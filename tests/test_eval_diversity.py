"""`eval diversity`: Rouge equal to rouge-score's, the corpus index equal to brute force, k-gram rates by hand, the command end to end."""

from __future__ import annotations

import collections
import itertools
import json
import math

import numpy as np
import pytest

from conftest import import_s260k
from conftest import testdata_path as data_file
from tinystories.data.stories import iter_stories
from tinystories.errors import UserError
from tinystories.eval import corpus as diversity
from tinystories.eval.corpus import CorpusIndex, corpus_index, gram_hashes, open_corpus, word_keys
from tinystories.eval.diversity import (
    NEVER,
    DiversityConfig,
    cut_story,
    evaluate_diversity,
    kgram_frequencies,
)
from tinystories.eval.rouge import most_similar, ngram_counts, rouge_n, words

rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")

EDGE_TEXTS = [
    "",
    "   ",
    "!!! ... ???",
    "a",
    "Hello, WORLD! Hello world.",
    "the cat the cat the cat sat",
    "the cat sat on the mat the cat",
    "don't stop-believing: 3rd place, 42 times",
    "Café naïve résumé — über straße",  # non-ASCII letters separate words, as in rouge-score
    "İstanbul and the \u212a sign",  # lowercase to ASCII letters (i + combining dot; Kelvin -> k)
    "tab\tnew\nline\r\nend",
    "x" * 30 + " " + "y" * 9 + " " + "z" * 8 + " " + "w" * 16,  # words across the 8-byte blocks
]


@pytest.fixture(scope="module")
def real() -> list[str]:
    return list(iter_stories(data_file("tinystories/TinyStories-valid.first201.txt")))


pytestmark = pytest.mark.usefixtures("one_thread")


def _reference(n: int):
    return rouge_scorer.RougeScorer([f"rouge{n}"])


# --- Rouge equal to rouge-score ---------------------------------------------------------


def test_words_are_rouge_score_tokens(real):
    from rouge_score import tokenize

    for text in real[:50] + EDGE_TEXTS:
        assert words(text) == tokenize.tokenize(text, None)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_rouge_n_equals_rouge_score_on_real_stories(real, n):
    ref = _reference(n)
    pairs = [(real[i], real[i + 1]) for i in range(0, 120, 2)]
    pairs += [cut_story(s, 0.4)[::-1] for s in real[120:160]]  # continuation vs. beginning of the same story
    for prediction, target in pairs:
        want = ref.score(target, prediction)[f"rouge{n}"]
        got = rouge_n(prediction, target, n)
        assert (got.precision, got.recall, got.fmeasure) == (want.precision, want.recall, want.fmeasure)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_rouge_n_equals_rouge_score_on_edge_cases(n):
    ref = _reference(n)
    for prediction in EDGE_TEXTS:
        for target in EDGE_TEXTS:
            want = ref.score(target, prediction)[f"rouge{n}"]
            got = rouge_n(prediction, target, n)
            assert (got.precision, got.recall, got.fmeasure) == (want.precision, want.recall, want.fmeasure)


def test_clipped_counts_by_hand():
    # Prediction bigrams: the cat x3, cat the x2, cat sat (6); reference: the cat x2, cat sat, sat on, on the,
    # the mat, mat the (7). Overlap: min(3, 2) "the cat" + min(1, 1) "cat sat" = 3 ("cat the" is not in it).
    s = rouge_n("the cat the cat the cat sat", "the cat sat on the mat the cat", 2)
    assert s.precision == pytest.approx(3 / 6) and s.recall == pytest.approx(3 / 7)
    assert s.fmeasure == pytest.approx(2 * (3 / 6) * (3 / 7) / (3 / 6 + 3 / 7))
    assert rouge_n("", "the cat", 2).precision == 0.0 and rouge_n("The CAT!", "the cat", 2).precision == 1.0


def test_most_similar_equals_rouge_score(real):
    texts = [cut_story(s, 0.4)[1] for s in real[:30]] + ["", "the cat sat"]
    best, which = most_similar(texts)
    ref = _reference(2)
    for i, t in enumerate(texts):
        fs = [ref.score(texts[j], t)["rouge2"].fmeasure if j != i else -1.0 for j in range(len(texts))]
        assert best[i] == max(fs)
        assert fs[which[i]] == max(fs)


# --- words as keys, k-grams as hashes ----------------------------------------------------------


def test_word_keys_split_like_words_and_tell_words_apart(real):
    texts = real + EDGE_TEXTS
    keys, per_text = word_keys(texts)
    assert per_text.tolist() == [len(words(t)) for t in texts]
    seen: dict[str, int] = {}
    for w, k in zip((w for t in texts for w in words(t)), keys.tolist()):
        assert seen.setdefault(w, k) == k  # one word, one key
    assert len(set(seen.values())) == len(seen) > 1500  # different words, different keys
    assert word_keys([])[0].shape == (0,) and word_keys([""])[1].tolist() == [0]


def test_gram_hashes_count_like_ngram_counts(real):
    text = real[3]
    for k in (2, 3, 4, 5):
        h = gram_hashes(word_keys([text])[0], k)
        want = sorted(ngram_counts(words(text), k).values())
        assert sorted(collections.Counter(h.tolist()).values()) == want
    assert gram_hashes(word_keys(["one"])[0], 2).shape == (0,)


# --- the index against brute force ----------------------------------------------------------


@pytest.fixture(scope="module")
def small(real):
    """180 real stories indexed with tiny blocks (many blocks and merges), and 21 held-out queries."""
    old = diversity._SMALL_BLOCK, diversity._BIG_BLOCK
    diversity._SMALL_BLOCK, diversity._BIG_BLOCK = 3000, 7000
    try:
        index = CorpusIndex.build(real[:180], batch=17)
    finally:
        diversity._SMALL_BLOCK, diversity._BIG_BLOCK = old
    return index, real[:180], real[180:]


def test_index_closest_story_equals_brute_force(small):
    index, corpus, queries = small
    for k in (2, 3):
        ref = _reference(k)
        for q in [*queries[:10], cut_story(corpus[7], 0.4)[1], "the the the the the"]:
            ps = [ref.score(s, q)[f"rouge{k}"].precision for s in corpus]
            story, p, _ = index.closest(q, k)
            assert (story, p) == ((int(np.argmax(ps)), max(ps)) if max(ps) > 0 else (-1, 0.0))
        # Leaving the source out finds the best other story.
        q = cut_story(corpus[7], 0.4)[1]
        ps = [ref.score(s, q)[f"rouge{k}"].precision if j != 7 else -1 for j, s in enumerate(corpus)]
        story, p, _ = index.closest(q, k, exclude=7)
        assert story != 7 and (story, p) == (int(np.argmax(ps)), max(ps))
    assert index.closest("zzz qqq xxx", 2) == (-1, 0.0, 0)
    assert index.closest("", 3) == (-1, 0.0, 0)


def test_index_counts_every_kgram(small):
    index, corpus, queries = small
    for k in (2, 3, 4, 5):
        counts: collections.Counter = collections.Counter()
        for s in corpus:
            counts.update(ngram_counts(words(s), k))
        assert index.total(k) == sum(counts.values())
        assert len(index.counts[k][0]) == len(counts)
        for q in queries[:5]:
            ws = words(q)
            grams = list(zip(*(ws[i:] for i in range(k))))
            assert index.occurrences(k, gram_hashes(index.encode(q), k)).tolist() == [counts[g] for g in grams]


def test_index_blocks_do_not_change_the_index(small):
    index, corpus, _ = small
    whole = CorpusIndex.build(corpus)
    for k in (2, 3, 4, 5):
        assert np.array_equal(whole.counts[k][0], index.counts[k][0])
        assert np.array_equal(whole.counts[k][1], index.counts[k][1])
    for k in (2, 3):
        for name in ("keys", "offsets", "docs", "tf"):
            assert np.array_equal(getattr(whole.postings[k], name), getattr(index.postings[k], name))
        # Every posting list is sorted by story.
        p = whole.postings[k]
        same = np.repeat(np.arange(len(p.keys)), np.diff(p.offsets))
        assert np.all((np.diff(p.docs) > 0) | (np.diff(same) > 0))


def test_index_saved_and_loaded_answers_the_same(small, tmp_path):
    index, _, queries = small
    index.fingerprint = "abc"
    index.save(tmp_path / "ix")
    loaded = CorpusIndex.load(tmp_path / "ix")
    assert loaded.fingerprint == "abc" and loaded.n_stories == index.n_stories
    for k in (2, 3):
        assert loaded.closest(queries[0], k) == index.closest(queries[0], k)
    for k in (2, 5):
        h = gram_hashes(index.encode(queries[1]), k)
        assert np.array_equal(loaded.occurrences(k, h), index.occurrences(k, h))


# --- k-gram rates by hand -------------------------------------------------------------------


def test_kgram_frequencies_by_hand():
    corpus = ["The cat sat.", "The cat ran, the cat sat!", "A dog."]
    index = CorpusIndex.build(corpus)
    # Corpus bigrams: the cat (3), cat sat (2), cat ran (1), ran the (1), a dog (1): 8 in all.
    assert index.total(2) == 8 and index.total(3) == 5 and index.total(5) == 2
    got = sorted(kgram_frequencies(index, ["the cat sat on the mat", "THE CAT"], 2).tolist())
    # Distinct generated bigrams: the cat, cat sat, sat on, on the, the mat.
    want = sorted([math.log10(3 / 8), math.log10(2 / 8), NEVER, NEVER, NEVER])
    assert got == pytest.approx(want)
    # Trigrams: "the cat sat" occurs twice among the corpus's 5 trigrams; "cat sat on" etc. never.
    got3 = sorted(kgram_frequencies(index, ["the cat sat on the mat"], 3).tolist())
    assert got3 == pytest.approx(sorted([math.log10(2 / 5), NEVER, NEVER, NEVER]))
    # Leaving the second story out: 3 bigrams remain (the cat, cat sat, a dog); the cat 1/3, cat sat 1/3.
    loo = sorted(kgram_frequencies(index, ["the cat sat"], 2, leave_out=[corpus[1]]).tolist())
    assert loo == pytest.approx(sorted([math.log10(1 / 3), math.log10(1 / 3)]))
    assert kgram_frequencies(index, ["one"], 2).shape == (0,)


def test_cut_story_keeps_about_forty_percent_of_the_words():
    story = "One two three four five six seven eight nine ten."
    assert cut_story(story, 0.4) == ("One two three four", "five six seven eight nine ten.")
    assert cut_story("  Once upon\na time  ", 0.5) == ("  Once upon", "a time")
    assert cut_story("word", 0.4) == ("word", "")


# --- corpus sources and the saved index ---------------------------------------------------------


def test_corpus_fingerprint_follows_bytes_not_paths(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("One story.<|endoftext|>Two stories.", encoding="utf-8")
    b.write_text("One story.<|endoftext|>Two stories.", encoding="utf-8")
    assert open_corpus([str(a)]).fingerprint == open_corpus([str(b)]).fingerprint
    assert open_corpus([str(a)]).fingerprint != open_corpus([str(a)], max_stories=1).fingerprint
    assert list(open_corpus([str(a)], max_stories=1).stories()) == ["One story."]
    index, info = corpus_index(open_corpus([str(a)]), tmp_path / "ix")
    assert not info["reused"] and index.n_stories == 2
    again, info = corpus_index(open_corpus([str(b)]), tmp_path / "ix")
    assert info["reused"] and again.n_stories == 2
    b.write_text("Another story.", encoding="utf-8")
    with pytest.raises(UserError, match="another corpus"):
        corpus_index(open_corpus([str(b)]), tmp_path / "ix")
    with pytest.raises(UserError):
        open_corpus([])


# --- the command end to end ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def s260k(tmp_path_factory):
    return import_s260k(tmp_path_factory.mktemp("div") / "s260k")


def test_cli_end_to_end_on_stories260k(s260k, real, tmp_path, capsys):
    from tinystories.cli import main

    data = str(data_file("tinystories/TinyStories-valid.first201.txt"))
    args = ["eval", "diversity", "--run", str(s260k), "--data", data, "--n", "6", "--max-new-tokens", "48",
            "--index", str(tmp_path / "ix"), "--seed", "3"]
    main(args)
    printed = json.loads(capsys.readouterr().out)
    assert printed["stories"] == 6 and printed["corpus_stories"] == len(real)
    result = json.loads((s260k / "eval" / "diversity.json").read_text())
    assert result["index"]["reused"] is False
    assert result["corpus"]["files"][0]["sha256"].startswith("3c0638ff")
    assert result["sampling"]["temperature"] == 1.0 and result["sampling"]["pick_seed"] == 3
    items = result["items"]
    assert len(items) == 6 and len({it["story"] for it in items}) == 6
    ref2, ref3 = _reference(2), _reference(3)
    for it in items:
        story = real[it["story"]]
        assert story.startswith(it["prompt"]) and it["original"] in story and it["completion"]
        assert it["completion_vs_original"] == ref2.score(it["original"], it["completion"])["rouge2"].precision
        for k, ref in ((2, ref2), (3, ref3)):
            best = max(ref.score(s, it["completion"])[f"rouge{k}"].precision for s in real)
            assert it[f"closest_rouge{k}"]["precision"] == best
    between = [it["most_similar_generation"]["rouge2_f"] for it in items]
    assert result["between_generations"]["max"] == max(between)
    for k in ("2", "3", "4", "5"):
        block = result["kgrams_in_corpus"][k]
        assert sum(block["histogram"]["counts"]) == block["distinct"] > 0
        assert 0 <= block["never"] <= block["distinct"]
    # A 5-gram is rarer than a bigram: more of them never occur.
    assert result["kgrams_in_corpus"]["5"]["never_share"] >= result["kgrams_in_corpus"]["2"]["never_share"]
    assert (s260k / "eval" / "diversity.png").stat().st_size > 10_000 or result["plot"] is None

    # Same seed, reused index: the same completions and figures.
    main([*args, "--no-plot"])
    capsys.readouterr()
    again = json.loads((s260k / "eval" / "diversity.json").read_text())
    assert again["index"]["reused"] is True
    assert [it["completion"] for it in again["items"]] == [it["completion"] for it in items]
    assert again["closest_training_story"] == result["closest_training_story"]


def test_bad_options_are_one_line_errors(s260k, tmp_path):
    data = (str(data_file("tinystories/TinyStories-valid.first201.txt")),)
    for bad, match in (({"cut": 1.5}, "--cut"), ({"n": 1}, "--n"), ({"run": ""}, "--run")):
        cfg = DiversityConfig(**{"run": str(s260k), "data": data, **bad})
        with pytest.raises(UserError, match=match):
            evaluate_diversity(cfg)
    with pytest.raises(UserError, match="not found"):
        evaluate_diversity(DiversityConfig(run=str(s260k), data=(str(tmp_path / "missing.txt"),)))


def test_blocks_cover_every_story_once_within_their_limits():
    lengths = np.array([0] * 70_000 + [5, 300, 0, 7] + [1] * 1000)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    blocks = list(diversity._blocks(starts, 100, stories=65536))
    assert blocks[0][0] == 0 and blocks[-1][1] == len(lengths)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(blocks))
    assert all(0 < s1 - s0 <= 65536 for s0, s1 in blocks)
    # A block holds more than `words` words only when one story alone is longer.
    assert all(starts[s1] - starts[s0] <= 100 or s1 - s0 == 1 for s0, s1 in blocks)


def test_dataset_folder_corpus_is_its_split_decoded(real, tmp_path):
    from tinystories.cli import run
    from tinystories.data.tokenize import split_of

    data = data_file("tinystories/TinyStories-valid.first201.txt")
    run(["tokenize", "--data", str(data), "--out", str(tmp_path / "ds"), "--vocab-size", "400",
         "--val-fraction", "0.2", "--workers", "1"])
    corpus = open_corpus([str(tmp_path / "ds")], "train")
    assert "content_hash" in corpus.info
    got = list(corpus.stories())
    want = [s for s in real if split_of(s, 0.2, 0) == "train"]
    assert got == want and 0 < len(got) < len(real)
    with pytest.raises(UserError, match="no 'test' split"):
        open_corpus([str(tmp_path / "ds")], "test")
