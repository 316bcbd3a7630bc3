"""Shared test fixtures: the pinned real test data in `TINYSTORIES_TESTDATA`.

The data (real TinyStories text, llama2.c's stories260K, the GPT-2 vocabulary)
lives outside the repo, by default in `../shared/data`. A test that needs a file
skips with a clear reason when it is absent and fails when its sha256 differs
from the pin below.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tinystories.convert.command import ConvertConfig, convert
from tinystories.data.tokenizer import Tokenizer, train_bpe
from tinystories.io import sha256_file
from tinystories.model import GPT, ModelConfig
from tinystories.rundir import save_checkpoint, write_config
from tinystories.synth.lexicon import load_lexicon
from tinystories.synth.procedural import story_record

ROOT = Path(__file__).resolve().parent.parent
TESTDATA = Path(os.environ.get("TINYSTORIES_TESTDATA", ROOT.parent / "shared" / "data"))

PINS = {
    "tinystories/TinyStories-valid.first201.txt": "3c0638ff1acb16bd911548b6e46790ca516501a9897308d928da79172ab49747",
    "gpt2/encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "gpt2/vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "llama2c/stories260K.bin": "b0a507e7ad0f626624f17112325e66691f9076d622e1d3274d103d00299f2696",
    "llama2c/tok512.bin": "037cb335abb25d1fa9e8ecae30ed2a3a8ace9302862ebcdc05d51a6bbb10c312",
    "llama2c/tok512.model": "fec6aa960a1fb3ebf71d26f9b0e486afcbd76c34cf0fbfb93e21126ca9f778d3",
    "llama2c/tokenizer.bin": "50a52ef822ee9e83de5ce9d0be0a025a773d019437f58b5ff9dcafb063ece361",
    "llama2c/tokenizer.model": "9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347",
    "llama2c/stories260K.expected.greedy-n200.txt": "beeb5cb46785efee81a8545300b31e396b595e5ce6f3b77db201545501981d14",
    "llama2c/stories260K.expected.t1.0-p0.9-s133742.txt": "0d33d0d617b86488c85dd171d128cd7559d789a71bc80efb254577f8dc4750aa",
}


@functools.cache
def _checked(rel: str) -> Path:
    path = TESTDATA / rel
    if not path.is_file():
        pytest.skip(f"test data {rel} not found under {TESTDATA} (set TINYSTORIES_TESTDATA)")
    digest = sha256_file(path)
    if rel in PINS and digest != PINS[rel]:
        pytest.fail(f"test data {path} has sha256 {digest}, expected {PINS[rel]}")
    return path


def testdata_path(rel: str) -> Path:
    """Path of a pinned test-data file; skips the test when it is absent."""
    return _checked(rel)


@pytest.fixture
def valid_stories() -> Path:
    """The first 201 stories of the real TinyStories validation file."""
    return testdata_path("tinystories/TinyStories-valid.first201.txt")


@pytest.fixture
def gpt2_dir() -> Path:
    """Folder with the GPT-2 / GPT-Neo `encoder.json` and `vocab.bpe`."""
    testdata_path("gpt2/vocab.bpe")
    return testdata_path("gpt2/encoder.json").parent
from llm_server import llm_server  # noqa: E402, F401  (the real LLM server fixture)


@contextlib.contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Torch on `n` threads inside the block; module fixtures use it, as they start before `one_thread`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one torch thread, and a busy machine's thread pool only adds waiting.

    A test file asks for it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    with torch_threads(1):
        yield


def write_tiny_run(folder: Path, texts: list[str] | None = None, vocab_size: int = 400, step: int = 0,
                   **model: object) -> tuple[Path, GPT, Tokenizer]:
    """A run folder `folder / "run"` with an untrained model (torch seed 0) saved at `step` and a BPE tokenizer
    fit on `texts` (default: 60 procedural stories); `model` changes the tiny default shape.
    Returns the folder, the model (in eval mode) and the tokenizer."""
    if texts is None:
        lex = load_lexicon()
        texts = [story_record(0, i, lex)["story"] for i in range(60)]
    tok = train_bpe(texts, vocab_size)
    torch.manual_seed(0)
    shape = {"max_seq_len": 128, "d_model": 32, "n_layer": 2, "n_head": 4} | model
    cfg = ModelConfig(vocab_size=tok.vocab_size, **shape)
    net = GPT(cfg).eval()
    run = folder / "run"
    run.mkdir()
    write_config(run, cfg)
    tok.save(run)
    save_checkpoint(run, step, net)
    return run, net, tok


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with an untrained model and a BPE tokenizer fit on procedural stories (one per test file)."""
    return write_tiny_run(tmp_path_factory.mktemp("tiny"))[0]


def import_s260k(out: Path, tokenizer: str = "llama2c/tok512.bin") -> Path:
    """llama2.c's stories260K imported as the run folder `out`, as `tinystories convert` does."""
    convert(ConvertConfig(source=str(testdata_path("llama2c/stories260K.bin")), out=str(out),
                          tokenizer=str(testdata_path(tokenizer))))
    return out
