"""Tokenizers: train a byte-level BPE, load GPT-2 / GPT-Neo or any `tokenizer.json`, prune to top K.

Every tokenizer is held as a Hugging Face `tokenizers` object, which is what
gets saved (`tokenizer.json`, the standard format). Encoding goes through
tiktoken whenever the vocabulary is a plain byte-level BPE (GPT-2 style): the
same ranks and the same split regex give the same tokens several times faster.
Anything else (normalizers, non-special added tokens, inconsistent merges)
falls back to the HF encoder, so results never depend on which path ran.
Encoding is serial within a process: tiktoken keeps the GIL here (two threads
ran slower than one), so `shards.py` spreads datasets over processes.

Top-K pruning follows the paper's use of GPT-Neo's vocabulary cut to the 10K
most frequent tokens: tokens outside the kept set are erased from the stream
and the kept ones renumbered 0..K-1 (`vocab_map.json` records new -> base id).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tiktoken
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from tinystories.data.llama2c_tokenizer import is_sentencepiece_json, llama2c_json
from tinystories.errors import UserError
from tinystories.io import atomic_write_text

EOT = "<|endoftext|>"
MIN_VOCAB = 257  # 256 bytes + end-of-text
MAX_VOCAB = 65536

# The GPT-2 pre-tokenizer regex, written with possessive quantifiers (as tiktoken
# does for r50k) so it runs faster; it splits text exactly like the original
# `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
# that HF's ByteLevel pre-tokenizer uses.
GPT2_SPLIT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

# Names an end-of-text token goes by in other vocabularies, in order of preference.
_EOT_NAMES = (EOT, "</s>", "<eos>", "<|eos|>", "[EOS]", "<|end_of_text|>")


@functools.cache
def byte_to_char() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table used by byte-level BPE files.

    Bytes that are printable Latin-1 stand for themselves; the other 68 are
    shifted to code points 256 and up, in byte order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shift)
            shift += 1
    return table


@functools.cache
def char_to_byte() -> dict[str, int]:
    """Inverse of `byte_to_char`."""
    return {c: b for b, c in byte_to_char().items()}


def _token_bytes(token: str) -> bytes | None:
    table = char_to_byte()
    try:
        return bytes(table[c] for c in token)
    except KeyError:
        return None


class Tokenizer:
    """A tokenizer held as an HF `tokenizer.json`, optionally pruned to a subset of its ids.

    `encode` never adds end-of-text; datasets put it before each story themselves.
    """

    def __init__(self, hf_json: str, *, base_ids: Sequence[int] | None = None, name: str = "") -> None:
        self.name = name
        """Where this tokenizer came from (a path, `gpt2`, `bpe-4096`), for messages only."""
        self._json = hf_json
        try:
            spec = json.loads(hf_json)
        except ValueError:
            raise UserError("not a valid tokenizer.json (not JSON)") from None
        if not isinstance(spec, dict) or not isinstance(spec.get("model"), dict):
            raise UserError("not a valid tokenizer.json (no model)")
        self._fast = _tiktoken_encoding(spec, name)
        if self._fast is None:
            self._hf  # noqa: B018 - parse now so a broken file fails here, not at first use
        self._base_eot = _find_eot(spec)
        self._added: list[dict] = spec.get("added_tokens", [])
        ids = [t["id"] for t in self._added]
        vocab = spec["model"].get("vocab")
        if isinstance(vocab, dict):
            ids += list(vocab.values())
        elif isinstance(vocab, list):  # Unigram: a list of [piece, score]
            ids.append(len(vocab) - 1)
        self._base_vocab = max(ids) + 1
        self._base_ids: np.ndarray | None = None
        self._to_new: np.ndarray | None = None
        if base_ids is not None:
            self._set_base_ids(base_ids)

    @functools.cached_property
    def _hf(self) -> Any:
        """The HF `tokenizers` object; built only when needed (tiktoken does the encoding when it can)."""
        return HFTokenizer.from_str(self._json)

    def _set_base_ids(self, base_ids: Sequence[int]) -> None:
        ids = np.asarray(base_ids, dtype=np.int64)
        if ids.ndim != 1 or len(ids) == 0 or len(np.unique(ids)) != len(ids):
            raise UserError("vocab_map.json: base_ids must be a non-empty list of distinct ids")
        if ids.min() < 0 or ids.max() >= self._base_vocab:
            raise UserError(f"vocab_map.json: base ids must lie in 0..{self._base_vocab - 1}")
        if self._base_eot not in set(ids.tolist()):
            raise UserError("vocab_map.json: the end-of-text token must be kept")
        self._base_ids = ids
        self._to_new = np.full(self._base_vocab, -1, dtype=np.int64)
        self._to_new[ids] = np.arange(len(ids))

    def _with_base_ids(self, base_ids: Sequence[int] | None) -> Tokenizer:
        # Shares the (read-only) HF and tiktoken objects instead of parsing the JSON again.
        other = copy.copy(self)
        other.__dict__.pop("sha256", None)
        other._base_ids = other._to_new = None
        if base_ids is not None:
            other._set_base_ids(base_ids)
        return other

    # --- the contract -------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids: 0..vocab_size-1 (after pruning, K)."""
        return self._base_vocab if self._base_ids is None else len(self._base_ids)

    @property
    def eot_id(self) -> int:
        """Id of `<|endoftext|>` (or the vocabulary's own end-of-sequence token)."""
        if self._to_new is None:
            return self._base_eot
        return int(self._to_new[self._base_eot])

    @property
    def pruned(self) -> bool:
        return self._base_ids is not None

    @property
    def base_ids(self) -> list[int] | None:
        """For a pruned tokenizer, the base id of each new id; None otherwise."""
        return None if self._base_ids is None else self._base_ids.tolist()

    @property
    def base(self) -> Tokenizer:
        """The unpruned tokenizer underneath (itself when not pruned)."""
        if self._base_ids is None:
            return self
        return self._with_base_ids(None)

    @property
    def fast(self) -> bool:
        """True when encoding runs on tiktoken rather than HF `tokenizers`."""
        return self._fast is not None

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (special-token text such as `<|endoftext|>` becomes that token)."""
        return self._prune(self._encode_base(text))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` of each text."""
        return [self._prune(ids) for ids in self._encode_base_batch(list(texts))]

    def encode_arrays(self, texts: Sequence[str]) -> list[np.ndarray]:
        """`encode_batch` with each result as an integer numpy array (no Python int lists)."""
        texts = list(texts)
        if self._fast is not None:
            arrays = [self._fast.encode_to_numpy(t, allowed_special="all") for t in texts]
        else:
            arrays = [np.asarray(ids, dtype=np.int64) for ids in self._encode_base_batch(texts)]
        if self._to_new is None:
            return arrays
        return [m[m >= 0] for m in (self._to_new[a] for a in arrays)]

    def encode_documents(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The dataset layout: one uint32 stream of `[eot] + tokens(text)` per text, and each one's length.

        Unlike `encode`, special-token text inside a text is encoded as ordinary
        text, so end-of-text only ever starts a document. Pruned: erased tokens
        dropped. One encoder call covers all texts, which is cheaper than one per text.
        """
        texts = list(texts)
        eot_text = self._eot_text
        if self._fast is not None:
            joined = "".join(eot_text + t for t in texts)
            # The end-of-text text is the document separator; if a story itself
            # contains it, encode story by story with that text as plain text.
            if joined.count(eot_text) == len(texts):
                flat = self._fast.encode_to_numpy(joined, allowed_special={eot_text}, disallowed_special=())
            else:
                docs = [[self._base_eot, *self._fast.encode_ordinary(t)] for t in texts]
                flat = np.fromiter((i for doc in docs for i in doc), dtype=np.uint32)
        else:
            encodings = self._hf_plain.encode_batch(texts, add_special_tokens=False)
            flat = np.fromiter((i for e in encodings for i in (self._base_eot, *e.ids)), dtype=np.uint32)
        if self._to_new is not None:
            mapped = self._to_new[flat]
            flat = mapped[mapped >= 0].astype(np.uint32)
        starts = np.flatnonzero(flat == self.eot_id)
        assert len(starts) == len(texts), "end-of-text inside a document"
        return flat, np.diff(np.append(starts, len(flat)))

    @functools.cached_property
    def _hf_plain(self) -> Any:
        """An HF tokenizer that reads special-token text as ordinary text."""
        hf = HFTokenizer.from_str(self._json)
        hf.encode_special_tokens = True
        return hf

    @functools.cached_property
    def _eot_text(self) -> str:
        for t in self._added:
            if t["id"] == self._base_eot:
                return t["content"]
        return self.base.decode_bytes([self._base_eot]).decode("utf-8")

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; exact for any sequence `encode` produced (pruned: erased tokens missing)."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The raw bytes of `ids` (a token may hold part of a multi-byte character)."""
        base = self._unprune(ids)
        if self._fast is not None:
            try:
                return self._fast.decode_bytes(base)
            except (KeyError, ValueError, OverflowError) as e:
                raise ValueError(f"token id out of range for {self.name or 'this tokenizer'}") from e
        if self._byte_level:
            return b"".join(self._base_token_bytes(i) for i in base)
        # Other vocabularies (e.g. SentencePiece-style) decode whole sequences only. SentencePiece-style
        # control tokens (<s>, </s>) are left out as SentencePiece and llama2.c's run do, so that
        # decode([BOS] + ids) starts without the dummy-prefix space.
        return self._hf.decode(base, skip_special_tokens=self._sentencepiece).encode("utf-8")

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for (special tokens: their text)."""
        return self.decode_bytes([token_id])

    def to_str(self) -> str:
        """The `tokenizer.json` text (of the base vocabulary; pruning lives in `vocab_map.json`)."""
        return self._json

    def save(self, folder: str | os.PathLike) -> None:
        """Write `tokenizer.json` (and `vocab_map.json` when pruned) into `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "tokenizer.json", self._json)
        if self._base_ids is not None:
            atomic_write_text(folder / "vocab_map.json", self._vocab_map_text())
        elif (folder / "vocab_map.json").exists():
            (folder / "vocab_map.json").unlink()

    @functools.cached_property
    def sha256(self) -> str:
        """sha256 of the saved `tokenizer.json` bytes, followed by `vocab_map.json`'s when pruned."""
        h = hashlib.sha256(self._json.encode("utf-8"))
        if self._base_ids is not None:
            h.update(self._vocab_map_text().encode("utf-8"))
        return h.hexdigest()

    def __repr__(self) -> str:
        pruned = f", pruned from {self._base_vocab}" if self.pruned else ""
        return f"Tokenizer({self.name!r}, vocab_size={self.vocab_size}{pruned}, eot_id={self.eot_id})"

    # --- pruning ------------------------------------------------------------------

    def prune(self, keep: Iterable[int]) -> Tokenizer:
        """A tokenizer that keeps only base ids `keep` (end-of-text added), renumbered in base order."""
        if self._base_ids is not None:
            raise UserError("this tokenizer is already pruned; prune its base instead")
        ids = sorted(set(int(i) for i in keep) | {self._base_eot})
        return self._with_base_ids(ids)

    # --- internals ----------------------------------------------------------------

    def _vocab_map_text(self) -> str:
        assert self._base_ids is not None
        return json.dumps({"base_ids": self._base_ids.tolist()}, separators=(",", ":")) + "\n"

    def _encode_base(self, text: str) -> list[int]:
        if self._fast is not None:
            return self._fast.encode(text, allowed_special="all")
        return self._hf.encode(text, add_special_tokens=False).ids

    def _encode_base_batch(self, texts: list[str]) -> list[list[int]]:
        if self._fast is not None:
            return [self._fast.encode(t, allowed_special="all") for t in texts]
        return [e.ids for e in self._hf.encode_batch(texts, add_special_tokens=False)]

    def _prune(self, ids: list[int]) -> list[int]:
        if self._to_new is None:
            return ids
        mapped = self._to_new[np.asarray(ids, dtype=np.int64)]
        return mapped[mapped >= 0].tolist()

    def _unprune(self, ids: Iterable[int]) -> list[int]:
        ids = [int(i) for i in ids]
        if self._base_ids is None:
            return ids
        if ids and (min(ids) < 0 or max(ids) >= len(self._base_ids)):
            raise ValueError(f"token id out of range 0..{len(self._base_ids) - 1}")
        return self._base_ids[np.asarray(ids, dtype=np.int64)].tolist() if ids else []

    def _base_token_bytes(self, i: int) -> bytes:
        token = self._hf.id_to_token(i)
        if token is None:
            raise ValueError(f"token id {i} out of range")
        if i in self._added_ids:
            return token.encode("utf-8")  # added tokens hold literal text, not byte-level symbols
        raw = _token_bytes(token)
        if raw is None:
            raise ValueError(f"token {token!r} is not a byte-level token")
        return raw

    @functools.cached_property
    def _added_ids(self) -> set[int]:
        return {t["id"] for t in self._added}

    @functools.cached_property
    def _sentencepiece(self) -> bool:
        return is_sentencepiece_json(json.loads(self._json))

    @functools.cached_property
    def _byte_level(self) -> bool:
        decoder = json.loads(self._json).get("decoder") or {}
        steps = decoder.get("decoders", []) if decoder.get("type") == "Sequence" else [decoder]
        return any(d.get("type") == "ByteLevel" for d in steps)


def _find_eot(spec: dict) -> int:
    if is_sentencepiece_json(spec):
        # llama2.c-style models learn [BOS] + story and stop at BOS: BOS plays end-of-text.
        return int(spec["model"]["vocab"]["<s>"])
    vocab = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
    model_vocab = spec.get("model", {}).get("vocab")
    if isinstance(model_vocab, dict):
        vocab = {**model_vocab, **vocab}
    for name in _EOT_NAMES:
        if name in vocab:
            return int(vocab[name])
    raise UserError(f"tokenizer has no end-of-text token (looked for {', '.join(_EOT_NAMES)})")


def is_gpt2_pretokenizer(pre: dict | None) -> bool:
    """Whether a tokenizer.json pre-tokenizer splits text as GPT-2's byte-level BPE does."""
    if not pre:
        return False
    if pre.get("type") == "Sequence":
        steps = pre.get("pretokenizers", [])
        return len(steps) == 1 and is_gpt2_pretokenizer(steps[0])
    return pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space")


def _tiktoken_encoding(spec: dict, name: str) -> Any:
    """A tiktoken `Encoding` that encodes exactly like the HF tokenizer `spec`, or None.

    tiktoken merges the adjacent pair whose joined bytes have the lowest rank;
    HF BPE applies the lowest-numbered merge. They agree when every multi-byte
    token is the result of exactly one merge and ids grow with merge order,
    which holds for GPT-2 and for vocabularies HF's BPE trainer writes. We
    check that here and otherwise return None (HF encodes then).
    """
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or spec.get("normalizer") is not None:
        return None
    if not is_gpt2_pretokenizer(spec.get("pre_tokenizer")):
        return None
    if model.get("dropout") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        return None
    if model.get("byte_fallback") or model.get("ignore_merges"):
        return None
    added = spec.get("added_tokens", [])
    if any(not t.get("special") for t in added):
        return None
    vocab: dict[str, int] = model.get("vocab", {})
    special_names = {t["content"] for t in added}
    ranks: dict[bytes, int] = {}
    for token, i in vocab.items():
        if token in special_names:
            continue
        raw = _token_bytes(token)
        if raw is None or raw in ranks:
            return None
        ranks[raw] = i
    if sum(len(b) == 1 for b in ranks) != 256:
        return None
    last = -1
    merged = 0
    for m in model.get("merges", []):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        joined = vocab.get(a + b)
        if joined is None or joined <= last:
            return None
        last = joined
        merged += 1
    if merged != len(ranks) - 256:
        return None
    specials = {t["content"]: t["id"] for t in added}
    return tiktoken.Encoding(
        f"tinystories-{name or 'bpe'}", pat_str=GPT2_SPLIT, mergeable_ranks=ranks, special_tokens=specials
    )


# --- constructors -----------------------------------------------------------------


def _byte_level_json(model: Any) -> str:
    hf = HFTokenizer(model)
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([EOT])
    return hf.to_str()


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE (GPT-2 style, `<|endoftext|>` = id 0) on `texts`.

    The vocabulary may come out smaller than `vocab_size` when the text runs
    out of pairs to merge.
    """
    if not MIN_VOCAB <= vocab_size <= MAX_VOCAB:
        raise UserError(
            f"vocab size {vocab_size} out of range {MIN_VOCAB}..{MAX_VOCAB} (256 bytes + end-of-text at least)"
        )
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(texts, trainer)
    if hf.get_vocab_size() <= MIN_VOCAB - 1:
        raise UserError("no text to train the tokenizer on")
    return Tokenizer(hf.to_str(), name=f"bpe-{vocab_size}")


def from_gpt2_files(encoder_json: str | os.PathLike, vocab_bpe: str | os.PathLike) -> Tokenizer:
    """GPT-2 / GPT-Neo tokenizer from OpenAI's `encoder.json` + `vocab.bpe` (or HF `vocab.json` + `merges.txt`)."""
    for p in (encoder_json, vocab_bpe):
        if not Path(p).is_file():
            raise UserError(f"tokenizer file not found: {p}")
    try:
        model = models.BPE.from_file(str(encoder_json), str(vocab_bpe))
    except Exception as e:
        raise UserError(f"cannot read GPT-2 vocabulary {encoder_json} + {vocab_bpe}: {e}") from None
    return Tokenizer(_byte_level_json(model), name=str(Path(encoder_json).parent))


def from_tokenizer_json(path: str | os.PathLike) -> Tokenizer:
    """Any HF `tokenizer.json`; a `vocab_map.json` beside it makes it pruned."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"tokenizer file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read tokenizer {path}: {e}") from None
    base_ids = None
    vmap = path.parent / "vocab_map.json"
    if vmap.is_file():
        try:
            base_ids = json.loads(vmap.read_text(encoding="utf-8"))["base_ids"]
        except (ValueError, KeyError, TypeError):
            raise UserError(f'{vmap}: expected {{"base_ids": [...]}}') from None
    try:
        return Tokenizer(text, base_ids=base_ids, name=str(path))
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    except Exception as e:
        raise UserError(f"{path} is not a valid tokenizer.json: {_first_line(e)}") from None


# --- finding tokenizers -------------------------------------------------------------

_GPT2_URLS = (
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
)
_HF_GPT2_REPOS = (
    "models--gpt2",
    "models--openai-community--gpt2",
    "models--EleutherAI--gpt-neo-125M",
    "models--roneneldan--TinyStories-33M",
)


def tokenizer_in_folder(folder: Path) -> Tokenizer | None:
    """Tokenizer from a folder holding `tokenizer.json`, or GPT-2 style vocabulary files."""
    if (folder / "tokenizer.json").is_file():
        return from_tokenizer_json(folder / "tokenizer.json")
    for vocab, merges in (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt")):
        if (folder / vocab).is_file() and (folder / merges).is_file():
            return from_gpt2_files(folder / vocab, folder / merges)
    return None


def _gpt2_candidates() -> list[Path]:
    home = Path.home()
    hub = Path(
        os.environ.get("HF_HUB_CACHE")
        or Path(os.environ.get("HF_HOME", home / ".cache" / "huggingface")) / "hub"
    )
    folders = [home / ".cache" / "tinystories" / "gpt2"]
    for repo in _HF_GPT2_REPOS:
        folders += sorted((hub / repo / "snapshots").glob("*"))
    return folders


def _tiktoken_cache_gpt2() -> Tokenizer | None:
    # tiktoken caches downloads under the sha1 of their URL.
    cache = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    folder = Path(cache) if cache else Path(tempfile.gettempdir()) / "data-gym-cache"
    enc, bpe = (folder / hashlib.sha1(u.encode()).hexdigest() for u in _GPT2_URLS)
    if enc.is_file() and bpe.is_file():
        return from_gpt2_files(enc, bpe)
    return None


def load_gpt2() -> Tokenizer:
    """The GPT-2 / GPT-Neo vocabulary from local files only (never the network).

    Looks in `$TINYSTORIES_GPT2`, `~/.cache/tinystories/gpt2`, the Hugging Face
    hub cache (gpt2, GPT-Neo, TinyStories models) and tiktoken's cache.
    """
    env = os.environ.get("TINYSTORIES_GPT2")
    if env:
        tok = tokenizer_in_folder(Path(env)) if Path(env).is_dir() else None
        if tok is None:
            raise UserError(
                f"TINYSTORIES_GPT2={env} is not a folder with encoder.json + vocab.bpe or tokenizer.json"
            )
        tok.name = "gpt2"
        return tok
    for folder in _gpt2_candidates():
        tok = tokenizer_in_folder(folder)
        if tok is not None:
            tok.name = "gpt2"
            return tok
    tok = _tiktoken_cache_gpt2()
    if tok is not None:
        tok.name = "gpt2"
        return tok
    raise UserError(
        "GPT-2 vocabulary not found locally: set TINYSTORIES_GPT2 to a folder with encoder.json + vocab.bpe "
        "(or tokenizer.json), or pass --tokenizer PATH"
    )


def load_tokenizer(spec: str | os.PathLike) -> Tokenizer:
    """`gpt2` (or `gpt-neo`), a `tokenizer.json` file, a folder (dataset, run, or vocabulary files),
    a llama2.c `tokenizer.bin` or a SentencePiece `.model`."""
    text = str(spec)
    if text.lower() in ("gpt2", "gpt-2", "gpt-neo", "gptneo"):
        return load_gpt2()
    path = Path(text).expanduser()
    if path.is_dir():
        tok = tokenizer_in_folder(path)
        if tok is None:
            raise UserError(f"no tokenizer.json (or encoder.json + vocab.bpe) in {path}")
        return tok
    if path.is_file() and path.suffix in (".bin", ".model"):
        return Tokenizer(llama2c_json(path), name=str(path))
    if path.is_file():
        return from_tokenizer_json(path)
    raise UserError(
        f"unknown tokenizer {text!r}: use gpt2, a tokenizer.json file or a folder holding one, "
        "a llama2.c tokenizer.bin or a SentencePiece .model"
    )


# --- top-K pruning --------------------------------------------------------------


@dataclass(frozen=True)
class PruneResult:
    tokenizer: Tokenizer
    """The pruned tokenizer (ids 0..K-1)."""
    kept_ids: np.ndarray
    """Base id of each new id."""
    erased_tokens: int
    """Tokens of the counted text whose id was not kept."""
    total_tokens: int
    """All tokens of the counted text (end-of-text not counted)."""

    @property
    def erased_share(self) -> float:
        return self.erased_tokens / self.total_tokens if self.total_tokens else 0.0


def top_k_ids(counts: np.ndarray, k: int, eot_id: int) -> np.ndarray:
    """The `k` most frequent ids (end-of-text always among them), ties to the lower id, sorted."""
    if k < 2:
        raise UserError(f"--top-k must be at least 2 (got {k})")
    if k > len(counts):
        raise UserError(f"--top-k {k} is larger than the vocabulary ({len(counts)} tokens)")
    scores = counts.astype(np.float64).copy()
    scores[eot_id] = np.inf
    # Stable sort on -count: equal counts keep ascending id order.
    order = np.argsort(-scores, kind="stable")
    return np.sort(order[:k])


def prune_top_k(tokenizer: Tokenizer, counts: np.ndarray, k: int) -> PruneResult:
    """Prune `tokenizer` to its `k` most frequent tokens given base-id `counts` (end-of-text excluded)."""
    counts = np.asarray(counts, dtype=np.int64)
    if len(counts) < tokenizer.vocab_size:
        counts = np.pad(counts, (0, tokenizer.vocab_size - len(counts)))
    counts = counts.copy()
    counts[tokenizer.eot_id] = 0
    keep = top_k_ids(counts, k, tokenizer.eot_id)
    total = int(counts.sum())
    erased = total - int(counts[keep].sum())
    return PruneResult(tokenizer.prune(keep.tolist()), keep, erased, total)


def count_tokens(tokenizer: Tokenizer, texts: Iterable[str], *, batch: int = 4096) -> np.ndarray:
    """How often each id occurs when encoding `texts` as documents (the separators not counted)."""
    counts = np.zeros(tokenizer.vocab_size, dtype=np.int64)
    buf: list[str] = []

    def add(texts: list[str]) -> None:
        if texts:
            flat, _ = tokenizer.encode_documents(texts)
            counts[:] += np.bincount(flat, minlength=len(counts))
            counts[tokenizer.eot_id] -= len(texts)

    for text in texts:
        buf.append(text)
        if len(buf) >= batch:
            add(buf)
            buf = []
    add(buf)
    return counts


def _first_line(e: BaseException) -> str:
    """An exception's message cut to one line, for one-line errors."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
