"""Tokenizer: trained BPE round trips, GPT-2 reference ids, fast encoder == HF tokenizers, pruning."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tokenizers import Tokenizer as HFTokenizer

import conftest
from tinystories.data.stories import iter_stories
from tinystories.data.tokenizer import (
    Tokenizer,
    count_tokens,
    load_tokenizer,
    prune_top_k,
    train_bpe,
)
from tinystories.errors import UserError
from tinystories.io import sha256_file

# Strings that exercise the split regex: whitespace runs, contractions, digits, unicode, emoji.
TRICKY = [
    "",
    " ",
    "   leading and trailing   ",
    "a\n\nb\n \nc\t\td  \n",
    "I'm sure they'll've said 'hello' 42 times; it's 3.14159!",
    "Lily's café — naïve Zoë 🐶🐱 日本語 テスト",
    "x  y   z    \n",
    "\u00a0non-breaking\u2003em space",
    "THE END!!! ...?? ''",
]


@pytest.fixture(scope="module")
def stories():
    return list(iter_stories(conftest.testdata_path("tinystories/TinyStories-valid.first201.txt")))


@pytest.fixture(scope="module")
def bpe(stories):
    return train_bpe(stories, 1024)


@pytest.fixture(scope="module")
def gpt2():
    # Loaded once from the folder; test_gpt2_reference_ids goes through `load_tokenizer("gpt2")`.
    conftest.testdata_path("gpt2/vocab.bpe")
    return load_tokenizer(conftest.testdata_path("gpt2/encoder.json").parent)


def _hf_ids(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    # Straight from the saved tokenizer.json, through HF `tokenizers` only.
    hf = HFTokenizer.from_str(tok._json)
    return [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]


def test_trained_bpe_round_trips_every_story(stories, bpe):
    assert bpe.vocab_size == 1024 and bpe.eot_id == 0 and bpe.fast
    encoded = bpe.encode_batch(stories)
    for story, ids in zip(stories, encoded):
        assert bpe.decode(ids) == story
        assert bpe.eot_id not in ids
        assert max(ids) < bpe.vocab_size
    # Compression sanity: a 1024 BPE on stories is far better than bytes.
    n_bytes = sum(len(s.encode()) for s in stories)
    assert n_bytes / sum(map(len, encoded)) > 3.0


def test_trained_bpe_is_deterministic(stories, bpe):
    again = train_bpe(stories, 1024)
    assert again.sha256 == bpe.sha256


def test_whole_file_with_separators_round_trips(valid_stories, bpe):
    text = valid_stories.read_text(encoding="utf-8")
    ids = bpe.encode(text)
    assert ids.count(bpe.eot_id) == 201  # the separator text is the end-of-text token
    assert bpe.decode(ids) == text


def test_gpt2_reference_ids(gpt2_dir, monkeypatch):
    monkeypatch.setenv("TINYSTORIES_GPT2", str(gpt2_dir))
    gpt2 = load_tokenizer("gpt2")
    assert gpt2.vocab_size == 50257 and gpt2.eot_id == 50256 and gpt2.fast
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.encode(" Once upon a time") == [4874, 2402, 257, 640]
    assert gpt2.decode([15496, 995]) == "Hello world"


def test_gpt2_saved_as_tokenizer_json(gpt2, tmp_path):
    gpt2.save(tmp_path)
    again = load_tokenizer(tmp_path / "tokenizer.json")
    assert again.sha256 == gpt2.sha256 == sha256_file(tmp_path / "tokenizer.json")
    assert again.encode(" Once upon a time") == [4874, 2402, 257, 640]


def test_fast_encoder_equals_hf_tokenizers(stories, bpe, gpt2):
    texts = stories + TRICKY
    for tok in (bpe, gpt2):
        assert tok.fast
        ours = tok.encode_batch(texts)
        assert ours == _hf_ids(tok, texts)
        assert [a.tolist() for a in tok.encode_arrays(texts)] == ours
        # The dataset layout: [eot] + tokens per text, in long multi-story encoder calls.
        flat, lengths = tok.encode_documents(texts)
        assert flat.tolist() == [i for ids in ours for i in (tok.eot_id, *ids)]
        assert lengths.tolist() == [len(ids) + 1 for ids in ours]
        assert [tok.decode(ids) for ids in ours] == texts


def test_encode_documents_reads_special_text_as_text(bpe, gpt2):
    texts = ["One.", "Two <|endoftext|> halves.", "Three."]
    for tok in (bpe, gpt2):
        flat, lengths = tok.encode_documents(texts)
        assert len(lengths) == 3 and int((flat == tok.eot_id).sum()) == 3
        docs = np.split(flat, np.cumsum(lengths)[:-1])
        assert [tok.decode(d[1:]) for d in docs] == texts
        assert docs[0].tolist() == [tok.eot_id, *tok.encode("One.")]


def test_decode_is_byte_exact_for_split_characters(gpt2):
    text = "🐶 dog"
    ids = gpt2.encode(text)
    # The emoji's 4 bytes are spread over several tokens; bytes reassemble exactly.
    assert b"".join(gpt2.token_bytes(i) for i in ids) == text.encode()
    assert gpt2.decode(ids) == text


def test_save_and_load_trained(bpe, stories, tmp_path):
    bpe.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.sha256 == bpe.sha256 == sha256_file(tmp_path / "tokenizer.json")
    assert loaded.encode_batch(stories[:20]) == bpe.encode_batch(stories[:20])


def test_non_fast_tokenizer_falls_back_to_hf(bpe):
    # A non-special added token is something tiktoken cannot express: HF encodes.
    hf = HFTokenizer.from_str(bpe._json)
    hf.add_tokens(["<dragon>"])
    tok = Tokenizer(hf.to_str())
    assert not tok.fast
    ids = tok.encode("A <dragon> flew. Ünï 🐉")
    assert hf.token_to_id("<dragon>") in ids
    assert tok.decode(ids) == "A <dragon> flew. Ünï 🐉"


def test_prune_hand_counted(gpt2):
    # GPT-2 ids: "Hello" 15496, " world" 995, " there" 612.
    texts = ["Hello world", "Hello world", "Hello world", "Hello there"]
    counts = count_tokens(gpt2, texts)
    assert counts[15496] == 4 and counts[995] == 3 and counts[612] == 1 and counts.sum() == 8
    result = prune_top_k(gpt2, counts, 3)
    assert result.kept_ids.tolist() == [995, 15496, 50256]  # end-of-text is always kept
    assert result.erased_tokens == 1 and result.total_tokens == 8
    assert result.erased_share == pytest.approx(1 / 8)
    pruned = result.tokenizer
    assert pruned.vocab_size == 3 and pruned.eot_id == 2
    assert pruned.encode("Hello there world") == [1, 0]
    assert pruned.decode([1, 0]) == "Hello world"  # erased " there" is missing
    assert pruned.encode("<|endoftext|>Hello") == [2, 1]


def test_pruned_save_load_and_round_trip_of_kept_text(gpt2, stories, tmp_path):
    counts = count_tokens(gpt2, stories)
    result = prune_top_k(gpt2, counts, 500)
    pruned = result.tokenizer
    assert 0 < result.erased_share < 0.2
    pruned.save(tmp_path)
    assert json.loads((tmp_path / "vocab_map.json").read_text())["base_ids"] == result.kept_ids.tolist()
    loaded = load_tokenizer(tmp_path)
    assert loaded.vocab_size == 500 and loaded.sha256 == pruned.sha256 != gpt2.sha256
    keep = set(result.kept_ids.tolist())
    erased = 0
    for story in stories[:50]:
        base_ids = gpt2.encode(story)
        kept = [i for i in base_ids if i in keep]
        erased += len(base_ids) - len(kept)
        ids = loaded.encode(story)
        assert len(ids) == len(kept)
        assert loaded.decode(ids) == gpt2.decode(kept)
    assert erased > 0


def test_prune_errors(gpt2):
    counts = np.ones(gpt2.vocab_size, dtype=np.int64)
    with pytest.raises(UserError, match="larger than the vocabulary"):
        prune_top_k(gpt2, counts, 60000)
    pruned = prune_top_k(gpt2, counts, 10).tokenizer
    with pytest.raises(UserError, match="already pruned"):
        pruned.prune([1, 2])


def test_load_errors(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="unknown tokenizer 'nonsense'"):
        load_tokenizer("nonsense")
    with pytest.raises(UserError, match=r"no tokenizer\.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(UserError, match=r"not a valid tokenizer\.json"):
        load_tokenizer(tmp_path / "tokenizer.json")
    with pytest.raises(UserError, match="out of range"):
        train_bpe(["a story"], 100)


def test_gpt2_missing_says_how_to_provide_it(tmp_path, monkeypatch):
    monkeypatch.delenv("TINYSTORIES_GPT2", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))
    with pytest.raises(UserError, match="TINYSTORIES_GPT2"):
        load_tokenizer("gpt2")
    monkeypatch.setenv("TINYSTORIES_GPT2", str(tmp_path / "missing"))
    with pytest.raises(UserError, match=r"is not a folder with encoder\.json"):
        load_tokenizer("gpt2")


def test_bad_vocab_map(bpe, tmp_path):
    bpe.save(tmp_path)
    (tmp_path / "vocab_map.json").write_text('{"base_ids": [5, 6]}', encoding="utf-8")
    with pytest.raises(UserError, match="end-of-text token must be kept"):
        load_tokenizer(tmp_path)
    (tmp_path / "vocab_map.json").write_text('{"base_ids": [0, 99999]}', encoding="utf-8")
    with pytest.raises(UserError, match="base ids must lie in"):
        load_tokenizer(tmp_path)
