"""llama2.c and SentencePiece vocabularies as standard `tokenizer.json`, and back to `tokenizer.bin`.

Inputs:

- llama2.c `tokenizer.bin` / `tok512.bin`: int32 max_token_length, then per
  token an f32 score, an int32 byte length and the bytes. Spaces are stored as
  " " (SentencePiece's "▁" replaced), BOS and EOS as "\\n<s>\\n" / "\\n</s>\\n",
  bytes as `<0xXX>` pieces. The file has no token count: it holds as many
  tokens as the model's vocabulary, so callers check the size against it.
- SentencePiece `.model` files: a protobuf `ModelProto`, read here by a small
  reader of the few fields needed (pieces, scores, types, model type).

Both become the same list of pieces, then the same `tokenizer.json`: an HF BPE
with byte fallback whose encoding equals llama2.c's `encode` token for token.
llama2.c starts from one token per Unicode character (bytes as `<0xXX>` when the
character is not a piece), puts a " " token in front of non-empty text, then
repeatedly merges the adjacent pair whose joined string is a piece with the
highest score, leftmost first. HF BPE merges the adjacent pair with the lowest
merge rank, leftmost first; so every split of every piece into two pieces
becomes a merge, ranked by the joined piece's score (higher first). The " "
prefix is a `Prepend("▁")` normalizer, which leaves empty text empty as
llama2.c does. One known difference: text that itself contains "▁" (U+2581)
reads as a space here; llama2.c would byte-encode it.

llama2.c models are trained on `[BOS] + story` and stop when they emit BOS, so
BOS (`<s>`, id 1) is what the rest of the toolkit calls end-of-text for them.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinystories.errors import UserError

SPACE = "▁"  # SentencePiece's visible space, U+2581
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")

# SentencePiece piece types (sentencepiece_model.proto).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_SPECIAL_TEXT = {"<unk>": "<unk>", "\n<s>\n": "<s>", "\n</s>\n": "</s>"}


@dataclass(frozen=True)
class Piece:
    """One vocabulary entry as SentencePiece writes it (spaces as "▁")."""

    text: str
    score: float
    kind: int


# --- readers ------------------------------------------------------------------------


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None


def read_llama2c_vocab(path: str | os.PathLike) -> list[Piece]:
    """The pieces of a llama2.c `tokenizer.bin`; a clear error for a truncated or foreign file."""
    path = Path(path)
    data = _read(path, "llama2.c tokenizer")
    if len(data) < 4:
        raise UserError(f"{path} is too short to be a llama2.c tokenizer")
    (max_len,) = struct.unpack_from("<i", data, 0)
    if not 0 < max_len < 1 << 16:
        raise UserError(f"{path}: not a llama2.c tokenizer (max token length {max_len})")
    pieces: list[Piece] = []
    at = 4
    while at < len(data):
        if at + 8 > len(data):
            raise UserError(f"{path} is truncated (token {len(pieces)} cut short)")
        score, length = struct.unpack_from("<fi", data, at)
        if not 0 <= length <= max_len or at + 8 + length > len(data):
            raise UserError(f"{path} is truncated or corrupt at token {len(pieces)} (length {length})")
        raw = data[at + 8 : at + 8 + length]
        at += 8 + length
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{path}: token {len(pieces)} is not UTF-8; not a SentencePiece-style vocabulary") from None
        pieces.append(_piece_from_llama2c(text, score))
    return pieces


def _piece_from_llama2c(text: str, score: float) -> Piece:
    if text in _SPECIAL_TEXT:
        name = _SPECIAL_TEXT[text]
        return Piece(name, score, UNKNOWN if name == "<unk>" else CONTROL)
    if _BYTE_PIECE.fullmatch(text):
        return Piece(text, score, BYTE)
    return Piece(text.replace(" ", SPACE), score, NORMAL)


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if at >= len(data):
            raise ValueError("varint runs past the end")
        b = data[at]
        at += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, at
        shift += 7


def _fields(data: bytes) -> list[tuple[int, int, Any]]:
    """(field number, wire type, value) of one protobuf message; bytes fields stay bytes."""
    out: list[tuple[int, int, Any]] = []
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, at = _varint(data, at)
        elif wire == 1:
            value, at = data[at : at + 8], at + 8
        elif wire == 2:
            n, at = _varint(data, at)
            value, at = data[at : at + n], at + n
        elif wire == 5:
            value, at = data[at : at + 4], at + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if at > len(data):
            raise ValueError("field runs past the end")
        out.append((number, wire, value))
    return out


def read_sentencepiece_model(path: str | os.PathLike) -> list[Piece]:
    """The pieces of a SentencePiece BPE `.model` file (ModelProto field 1; trainer_spec.model_type checked)."""
    path = Path(path)
    data = _read(path, "SentencePiece model")
    pieces: list[Piece] = []
    model_type = 1  # UNIGRAM is the proto default
    try:
        for number, wire, value in _fields(data):
            if number == 1 and wire == 2:  # repeated SentencePiece {1: piece, 2: score, 3: type}
                text, score, kind = "", 0.0, NORMAL
                for n, w, v in _fields(value):
                    if n == 1 and w == 2:
                        text = v.decode("utf-8")
                    elif n == 2 and w == 5:
                        (score,) = struct.unpack("<f", v)
                    elif n == 3 and w == 0:
                        kind = v
                pieces.append(Piece(text, score, kind))
            elif number == 2 and wire == 2:  # TrainerSpec; model_type is field 3
                model_type = next((v for n, w, v in _fields(value) if n == 3 and w == 0), model_type)
    except (ValueError, UnicodeDecodeError, struct.error) as e:
        raise UserError(f"{path} is not a SentencePiece model ({e})") from None
    if not pieces:
        raise UserError(f"{path} is not a SentencePiece model (no pieces)")
    if model_type != 2:
        names = {1: "unigram", 3: "word", 4: "char"}
        raise UserError(f"{path}: only SentencePiece BPE models are supported, this one is {names.get(model_type)}")
    return pieces


# --- tokenizer.json -----------------------------------------------------------------


def _merges(pieces: list[Piece]) -> list[tuple[str, str]]:
    """Every split of a mergeable piece into two pieces, ranked as llama2.c would pick them."""
    ids = {p.text: i for i, p in enumerate(pieces) if p.kind not in (UNKNOWN, CONTROL, BYTE)}
    found = []
    for text, i in ids.items():
        for cut in range(1, len(text)):
            if text[:cut] in ids and text[cut:] in ids:
                found.append((-pieces[i].score, i, cut, text[:cut], text[cut:]))
    found.sort()
    return [(a, b) for *_, a, b in found]


def pieces_to_json(pieces: list[Piece]) -> str:
    """A standard HF `tokenizer.json` (BPE, byte fallback) that encodes as llama2.c's `encode` does."""
    names = [p.text for p in pieces]
    for name in ("<unk>", "<s>", "</s>"):
        if name not in names:
            raise UserError(f"not a SentencePiece-style vocabulary: it has no {name} token")
    if len(set(names)) != len(names):
        raise UserError("not a SentencePiece-style vocabulary: some pieces occur twice")
    added = [
        {"id": i, "content": p.text, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, p in enumerate(pieces) if p.kind in (UNKNOWN, CONTROL)
    ]
    bos = names.index("<s>")
    spec = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": SPACE},
            {"type": "Replace", "pattern": {"String": " "}, "content": SPACE},
        ]},
        "pre_tokenizer": None,
        # What AutoTokenizer adds by default: BOS in front, as the model saw stories in training.
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [bos], "tokens": ["<s>"]}},
        },
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ]},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": "<unk>",
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "ignore_merges": False,
            "vocab": {p.text: i for i, p in enumerate(pieces)},
            "merges": [list(m) for m in _merges(pieces)],
        },
    }
    return json.dumps(spec, ensure_ascii=False)


def is_sentencepiece_json(spec: dict) -> bool:
    """True for a tokenizer.json in the SentencePiece style this module writes (BPE, byte fallback, `<s>`)."""
    model = spec.get("model") or {}
    vocab = model.get("vocab")
    return model.get("type") == "BPE" and bool(model.get("byte_fallback")) and isinstance(vocab, dict) and "<s>" in vocab


def llama2c_json(path: str | os.PathLike) -> str:
    """The `tokenizer.json` text of a llama2.c `.bin` or a SentencePiece `.model` file."""
    path = Path(path)
    pieces = read_sentencepiece_model(path) if path.suffix == ".model" else read_llama2c_vocab(path)
    return pieces_to_json(pieces)


# --- back to tokenizer.bin ------------------------------------------------------------


def tokenizer_to_llama2c(tokenizer: Any) -> bytes:
    """llama2.c `tokenizer.bin` bytes for one of our tokenizers (unpruned).

    SentencePiece-style vocabularies get back their pieces with scores that
    order merges as the tokenizer.json does, so llama2.c encodes as we do.
    Byte-level BPE vocabularies (GPT-2 style) get each token's raw bytes, so
    llama2.c decodes them; its encoder (SentencePiece-style) does not
    reproduce byte-level BPE for prompts.
    """
    if tokenizer.pruned:
        raise UserError("a pruned tokenizer (vocab_map.json) cannot be written as a llama2.c tokenizer.bin")
    spec = json.loads(tokenizer.to_str())
    model = spec.get("model") or {}
    vocab = model.get("vocab")
    if model.get("type") != "BPE" or not isinstance(vocab, dict):
        raise UserError("only BPE tokenizers can be written as a llama2.c tokenizer.bin")
    merges = [m.split(" ", 1) if isinstance(m, str) else m for m in model.get("merges", [])]
    # A merged token scores by the rank of its first merge; others below all merges, in id order.
    rank: dict[int, int] = {}
    for a, b in merges:
        rank.setdefault(vocab[a + b], len(rank))
    n = tokenizer.vocab_size
    sentencepiece = is_sentencepiece_json(spec)
    by_id = {i: t for t, i in vocab.items()} | {t["id"]: t["content"] for t in spec.get("added_tokens", [])}
    specials = {t["id"] for t in spec.get("added_tokens", [])}
    entries = []
    unmerged = 0
    for i in range(n):
        text = by_id.get(i)
        if text is None:
            raise UserError(f"token id {i} is missing from the tokenizer")
        if sentencepiece:
            special = {"<s>": "\n<s>\n", "</s>": "\n</s>\n"}.get(text)
            raw = (special or text.replace(SPACE, " ")).encode("utf-8")
        else:
            raw = text.encode("utf-8") if i in specials else tokenizer.token_bytes(i)
        if i in rank:
            score = -float(rank[i])
        elif i in specials or _BYTE_PIECE.fullmatch(text):
            score = 0.0
        else:
            score = -float(len(rank) + unmerged)
            unmerged += 1
        entries.append((score, raw))
    out = bytearray(struct.pack("<i", max(len(raw) for _, raw in entries)))
    for score, raw in entries:
        out += struct.pack("<fi", score, len(raw)) + raw
    return bytes(out)
