"""MLP neurons: scores and labels on constructed activations, random-direction percentiles, protagonist detection."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import testdata_path as data_file
from tinystories.interp.neurons import (
    NeuronsConfig,
    Table,
    average_precision,
    concentration,
    interpret_neurons,
    label,
    percentile,
    protagonist_scores,
    protagonist_targets,
    random_directions,
)
from tinystories.interp.text import prepare, procedural_records

pytestmark = pytest.mark.usefixtures("one_thread")


def corpus(n=600, seed=0):
    """Rows of a fake activation table: a word and its class per row."""
    g = torch.Generator().manual_seed(seed)
    vocab = [("dog", "noun"), ("ball", "noun"), ("big", "adjective"), ("red", "adjective"), ("soft", "adjective"),
             ("ran", "verb"), ("saw", "verb"), ("she", "pronoun"), ("the", "determiner"), (".", "punctuation")]
    picks = torch.randint(0, len(vocab), (n,), generator=g).tolist()
    return [vocab[i][0] for i in picks], [vocab[i][1] for i in picks]


def test_concentration_finds_one_word_and_one_class_neurons():
    words, classes = corpus()
    n = len(words)
    g = torch.Generator().manual_seed(1)
    # Neurons 2..31 fire on random rows: features unrelated to words, as most directions of a real space.
    acts = torch.randn(n, 32, generator=g) * 0.1 + (torch.rand(n, 32, generator=g) < 0.1).float()
    acts[:, :2] = torch.randn(n, 2, generator=g) * 0.1
    acts[:, 0] += torch.tensor([w == "dog" for w in words]).float()  # fires on one word
    acts[:, 1] += torch.tensor([c == "adjective" for c in classes]).float()  # fires on a class of words
    sc = concentration(acts, words, classes, top_k=20)
    assert sc["word_share"][0] == 1.0 and sc["score"][0] == 1.0
    assert sc["class_share"][1] == 1.0 and sc["word_share"][1] < 0.7
    assert sc["score"][2] < 0.6  # noise
    assert label(1.0, 1.0, "dog", "noun") == "the word 'dog'"
    assert label(0.4, 0.9, "big", "adjective") == "adjectives"
    assert label(0.2, 0.3, "x", "noun") == "mixed"
    assert label(0.7, 0.9, "was", "auxiliary") == "auxiliaries, mostly 'was'"
    # Against random directions in the same 32-d space, the two clear neurons rank at the top.
    rand = concentration(acts @ random_directions(32, 400, seed=0), words, classes, top_k=20)
    pct = percentile(sc["score"], rand["score"])
    assert pct[0] > 95 and pct[1] > 95 and pct[2] < 90


def test_percentile_counts_ties_half():
    ref = torch.tensor([0.1, 0.2, 0.2, 0.3])
    assert percentile(torch.tensor([0.0, 0.2, 1.0]), ref).tolist() == [0.0, 50.0, 100.0]


def test_random_directions_are_unit_and_seeded():
    u = random_directions(16, 50, seed=3)
    torch.testing.assert_close(u.norm(dim=0), torch.ones(50))
    assert torch.equal(u, random_directions(16, 50, seed=3))


def test_average_precision_by_hand():
    positive = torch.tensor([True, False, True, False, False])
    acts = torch.tensor([[5.0, 0.0], [4.0, 1.0], [3.0, 2.0], [0.0, 3.0], [-1.0, 4.0]])
    ap = average_precision(acts, positive)
    # Column 0 ranks the positives 1st and 3rd: (1/1 + 2/3) / 2. Column 1: 3rd and 5th: (1/3 + 2/5) / 2.
    torch.testing.assert_close(ap, torch.tensor([(1 + 2 / 3) / 2, (1 / 3 + 2 / 5) / 2]))


@pytest.fixture(scope="module")
def tok():
    from tinystories.data.tokenizer import load_tokenizer

    return load_tokenizer(data_file("llama2c/tok512.bin"))


def test_protagonist_first_mention_detector_scores_perfectly(tok):
    stories = prepare(procedural_records(6, seed=1), tok, 512)
    positive = protagonist_targets(stories)
    assert positive is not None and positive.sum() >= 6
    for s in stories:  # the marked tokens spell the protagonist's name, at its first appearance
        ann = s.annotations
        marked = [p for p in range(1, len(s)) if positive[sum(len(x) - 1 for x in stories[: stories.index(s)]) + p - 1]]
        assert "".join(s.token_text(p) for p in marked).strip() == ann["protagonist"]
        assert s.text.find(ann["protagonist"]) == s.spans[marked[0]][0] + (s.token_text(marked[0]) != s.token_text(marked[0]).lstrip())
    n = len(positive)
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(n, 32, generator=g) * 0.1 + (torch.rand(n, 32, generator=g) < 0.1).float()
    acts[:, 2] = torch.randn(n, generator=g) * 0.1
    acts[:, 2] += positive.float()  # neuron 2 fires exactly on first mentions
    table = Table(acts, [(0, 0)] * n, [""] * n, [""] * n)
    res = protagonist_scores(table, stories, n_random=200, seed=0)
    best = res["best"][0]
    assert best["neuron"] == 2 and best["average_precision"] == pytest.approx(1.0)
    assert best["precision"] == 1.0 and best["recall"] == 1.0 and best["percentile"] == 100.0
    assert res["random_ap"]["p99"] < 0.5


def test_command_on_stories260k(tmp_path):
    from tinystories.convert.command import ConvertConfig, convert

    run = tmp_path / "s260k"
    convert(ConvertConfig(source=str(data_file("llama2c/stories260K.bin")), out=str(run),
                          tokenizer=str(data_file("llama2c/tok512.bin"))))
    brief = interpret_neurons(NeuronsConfig(run=str(run), stories=3, random_directions=200, protagonist_stories=3))
    data = json.loads((run / "interp" / "neurons_layer3.json").read_text())
    assert brief["layer"] == data["layer"] == 3  # -2 of 5 layers
    assert len(data["neurons"]) == 172 and len(data["random"]["scores"]) == 200
    assert all(0 <= n["percentile"] <= 100 and 0 < n["score"] <= 1 for n in data["neurons"])
    assert data["shown"][:2] == [0, 1]
    ex = data["neurons"][0]["examples"][0]
    a, b = ex["span"]
    assert ex["sentence"][a:b].strip() == ex["token"].strip()
    assert data["protagonist"]["positives"] >= 3


def test_layer_option_takes_a_negative_index():
    import argparse

    from tinystories.config import add_options, options_from

    parser = argparse.ArgumentParser()
    add_options(parser, NeuronsConfig)
    for given, expected in (("-2", -2), ("-1", -1), ("3", 3)):
        ns = parser.parse_args(["--run", "r", "--layer", given])
        assert options_from(ns, NeuronsConfig)["layer"] == expected


def test_words_classes_and_sentences_of_a_story(tok):
    text = 'Lily saw a big red ball. She ran to the park with Tom. "Hello, Tom!" said Lily.'
    s = prepare([{"story": text}], tok, 100)[0]
    assert s.text == text and s.ids[0] == tok.eot_id
    classes = {s.text[a:b]: c for (a, b), c in zip(s.words, s.classes)}
    assert classes["Lily"] == classes["Tom"] == "name"  # "Lily" starts a sentence but is a name elsewhere too
    assert (classes["saw"], classes["big"], classes["ball"], classes["She"], classes["the"]) == (
        "verb", "adjective", "noun", "pronoun", "determiner")
    # Every token of a word maps to that word; the token's span sits inside its sentence.
    pos = next(p for p in range(1, len(s)) if s.word_text(p) == "park")
    assert s.class_of(pos) == "noun"
    sent, a, b = s.sentence(pos)
    assert sent == "She ran to the park with Tom." and sent[a:b] in " park"
