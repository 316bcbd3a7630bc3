"""llama2.c / SentencePiece vocabularies as tokenizer.json: encoding equals llama2.c's encoder, token for token."""

from __future__ import annotations

import json
import struct

import pytest

from conftest import testdata_path as data_file
from tinystories.data.llama2c_tokenizer import (
    read_llama2c_vocab,
    read_sentencepiece_model,
    tokenizer_to_llama2c,
)
from tinystories.data.stories import iter_stories
from tinystories.data.tokenizer import load_tokenizer, train_bpe
from tinystories.errors import UserError

EDGE_CASES = [
    "",
    " ",
    "   ",
    "a",
    "  two  spaces  between  ",
    "\n",
    "line one\nline two\n\n\nthree",
    "\ttabs\tand\r\nwindows",
    "café naïve résumé",
    "日本語のテキスト",
    "emoji 🙂🎉 and more",
    "Ω≈ç√∫ µ",
    "hair space\u200aand zero width\u200bjoiner",
    " leading space",
    "trailing space ",
    "<s> and </s> and <unk> as text",
    "<0x0A> looks like a byte piece",
    "Once upon a time, there was a little girl named Lily.",
]


def read_bin(path) -> tuple[list[bytes], list[float]]:
    data = path.read_bytes()
    vocab, scores, at = [], [], 4
    while at < len(data):
        score, n = struct.unpack_from("<fi", data, at)
        vocab.append(data[at + 8 : at + 8 + n])
        scores.append(score)
        at += 8 + n
    return vocab, scores


def llama2c_encode(vocab: list[bytes], scores: list[float], text: str) -> list[int]:
    """llama2.c's `encode` (run.c), written from its description: a " " token in front of
    non-empty text, one token per UTF-8 character (its bytes + 3 when it is not a piece),
    then merge the adjacent pair whose joined bytes form the highest-scoring piece,
    leftmost on ties, until no pair forms a piece."""
    lookup: dict[bytes, int] = {}
    for i, piece in enumerate(vocab):
        lookup.setdefault(piece, i)
    tokens = [lookup[b" "]] if text else []
    for ch in text:
        raw = ch.encode("utf-8")
        tokens.extend([lookup[raw]] if raw in lookup else [b + 3 for b in raw])

    def pair(i: int) -> int:
        return lookup.get(vocab[tokens[i]] + vocab[tokens[i + 1]], -1)

    pairs = [pair(i) for i in range(len(tokens) - 1)]
    while True:
        best, at = -1e10, -1
        for i, j in enumerate(pairs):
            if j != -1 and scores[j] > best:
                best, at = scores[j], i
        if at < 0:
            return tokens
        tokens[at : at + 2] = [pairs[at]]
        del pairs[at]
        # Only the pairs touching the new token change.
        if at > 0:
            pairs[at - 1] = pair(at - 1)
        if at < len(pairs):
            pairs[at] = pair(at)


@pytest.fixture(scope="module")
def stories() -> list[str]:
    return list(iter_stories([data_file("tinystories/TinyStories-valid.first201.txt")]))


@pytest.mark.parametrize("source", ["tok512.bin", "tok512.model"])
def test_tok512_encodes_like_llama2c(source, stories):
    tok = load_tokenizer(data_file(f"llama2c/{source}"))
    vocab, scores = read_bin(data_file("llama2c/tok512.bin"))
    assert tok.vocab_size == 512 and tok.eot_id == 1  # llama2.c models end a story with BOS
    texts = EDGE_CASES + stories
    assert len(stories) == 201
    ours = [e.ids for e in tok._hf_plain.encode_batch(texts, add_special_tokens=False)]
    for text, ids in zip(texts, ours):
        assert ids == llama2c_encode(vocab, scores, text), text[:80]
    # The encoder the rest of the toolkit uses agrees (special-token text aside).
    assert tok.encode_batch(stories[:20]) == ours[len(EDGE_CASES) : len(EDGE_CASES) + 20]
    assert tok.encode("") == []
    assert tok.decode(tok.encode(stories[0])) == stories[0]


def test_bin_and_model_give_the_same_tokenizer_json():
    a = load_tokenizer(data_file("llama2c/tok512.bin"))
    b = load_tokenizer(data_file("llama2c/tok512.model"))
    assert a.to_str() == b.to_str()


@pytest.mark.parametrize("source", ["tokenizer.bin", "tokenizer.model"])
def test_llama_32k_vocabulary_encodes_like_llama2c(source, stories):
    tok = load_tokenizer(data_file(f"llama2c/{source}"))
    vocab, scores = read_bin(data_file("llama2c/tokenizer.bin"))
    assert tok.vocab_size == 32000
    for text in EDGE_CASES + stories[:15]:
        assert tok._hf_plain.encode(text, add_special_tokens=False).ids == llama2c_encode(vocab, scores, text), text


def test_tokenizer_bin_written_back(tmp_path, stories):
    """tok512 comes back byte for byte; the 32K vocabulary with its pieces and an encoder that agrees."""
    path = data_file("llama2c/tok512.bin")
    assert tokenizer_to_llama2c(load_tokenizer(path)) == path.read_bytes()
    path = data_file("llama2c/tokenizer.bin")
    (tmp_path / "tokenizer.bin").write_bytes(tokenizer_to_llama2c(load_tokenizer(path)))
    vocab, scores = read_bin(path)
    vocab2, scores2 = read_bin(tmp_path / "tokenizer.bin")
    assert vocab2 == vocab
    for text in EDGE_CASES + stories[:5]:
        assert llama2c_encode(vocab2, scores2, text) == llama2c_encode(vocab, scores, text)


def test_sentencepiece_reader_matches_the_sentencepiece_package():
    spm = pytest.importorskip("sentencepiece", reason="optional: sentencepiece package not installed")
    path = data_file("llama2c/tok512.model")
    sp = spm.SentencePieceProcessor(model_file=str(path))
    pieces = read_sentencepiece_model(path)
    assert [(p.text, p.score) for p in pieces] == [(sp.id_to_piece(i), sp.get_score(i)) for i in range(len(pieces))]


def test_byte_level_bpe_exports_to_tokenizer_bin(tmp_path, stories):
    tok = train_bpe(stories[:50], 300)
    data = tokenizer_to_llama2c(tok)
    (tmp_path / "t.bin").write_bytes(data)
    vocab, _ = read_bin(tmp_path / "t.bin")
    assert len(vocab) == tok.vocab_size
    ids = tok.encode(stories[0])
    assert b"".join(vocab[i] for i in ids).decode("utf-8") == stories[0]  # llama2.c decodes it
    assert vocab[tok.eot_id] == b"<|endoftext|>"


def test_bad_tokenizer_files(tmp_path):
    data = data_file("llama2c/tok512.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[:-3])
    with pytest.raises(UserError, match="truncated"):
        load_tokenizer(tmp_path / "cut.bin")
    (tmp_path / "junk.bin").write_bytes(b"\xff" * 64)
    with pytest.raises(UserError, match=r"not a llama2\.c tokenizer"):
        read_llama2c_vocab(tmp_path / "junk.bin")
    (tmp_path / "junk.model").write_bytes(b"\x0a\xff\xff\xff\xff\x0f")
    with pytest.raises(UserError, match="not a SentencePiece model"):
        load_tokenizer(tmp_path / "junk.model")
    # A unigram model: one piece {1: "a", 2: 0.0}, trainer_spec {3: UNIGRAM}.
    piece = b"\x0a\x01a\x15" + struct.pack("<f", 0.0)
    (tmp_path / "uni.model").write_bytes(b"\x0a" + bytes([len(piece)]) + piece + b"\x12\x02\x18\x01")
    with pytest.raises(UserError, match="only SentencePiece BPE"):
        load_tokenizer(tmp_path / "uni.model")


def test_tokenizer_json_is_standard(tmp_path):
    """The file loads in plain HF `tokenizers` and decodes as SentencePiece does."""
    from tokenizers import Tokenizer as HFTokenizer

    tok = load_tokenizer(data_file("llama2c/tok512.bin"))
    tok.save(tmp_path)
    hf = HFTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    enc = hf.encode("Once upon a time")
    assert enc.ids[0] == 1 and enc.ids[1:] == tok.encode("Once upon a time")  # <s> added by default
    assert hf.decode(enc.ids) == "Once upon a time"
    assert json.loads(hf.to_str())["model"]["byte_fallback"] is True
    assert tok.decode(tok.encode("naïve 🙂")) == "naïve 🙂"  # through <0xXX> pieces
