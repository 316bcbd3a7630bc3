"""Golden test: llama2.c's stories260K, imported, decodes greedily exactly as llama2.c's `run` does."""

from __future__ import annotations

import pytest

from conftest import testdata_path as data_file
from tinystories.convert.llama2c import BOS_ID, decode_llama2c, load_llama2c, load_llama2c_vocab
from tinystories.sample import SampleParams, complete

pytestmark = pytest.mark.usefixtures("one_thread")


def test_stories260k_greedy_200_steps_matches_llama2c():
    model = load_llama2c(data_file("llama2c/stories260K.bin"))
    pieces = load_llama2c_vocab(data_file("llama2c/tok512.bin"))
    expected = data_file("llama2c/stories260K.expected.greedy-n200.txt").read_text(encoding="utf-8")
    cfg = model.config
    assert (cfg.d_model, cfg.n_layer, cfg.n_head, cfg.kv_heads, cfg.vocab_size, cfg.ff_dim) == (64, 5, 8, 4, 512, 172)
    # `run -n 200` runs 200 positions from BOS, each printing one new token; BOS again would end the text.
    done = complete(model, [[BOS_ID]], SampleParams(temperature=0.0, max_new_tokens=200), eot_id=BOS_ID)[0]
    assert decode_llama2c(pieces, done.tokens) == expected.rstrip("\n")


def _greedy_200(model):
    return complete(model, [[BOS_ID]], SampleParams(temperature=0.0, max_new_tokens=200), eot_id=BOS_ID)[0].tokens


def test_stories260k_with_tok512_model_matches_llama2c(tmp_path):
    """The SentencePiece .model, turned into tokenizer.json and written back as tokenizer.bin, decodes the same."""
    from tinystories.data.llama2c_tokenizer import tokenizer_to_llama2c
    from tinystories.data.tokenizer import load_tokenizer

    tok = load_tokenizer(data_file("llama2c/tok512.model"))
    (tmp_path / "tok.bin").write_bytes(tokenizer_to_llama2c(tok))
    pieces = load_llama2c_vocab(tmp_path / "tok.bin")
    expected = data_file("llama2c/stories260K.expected.greedy-n200.txt").read_text(encoding="utf-8").rstrip("\n")
    tokens = _greedy_200(load_llama2c(data_file("llama2c/stories260K.bin")))
    assert decode_llama2c(pieces, tokens) == expected
    assert tok.decode([BOS_ID, *tokens]) == expected  # our decoder, as `tinystories sample` prints it


@pytest.mark.parametrize("tokenizer", ["tok512.bin", "tok512.model"])
def test_converted_run_folder_samples_the_golden_text(tmp_path, capsys, tokenizer):
    from tinystories.cli import run

    run(["convert", "--from", str(data_file("llama2c/stories260K.bin")),
         "--tokenizer", str(data_file(f"llama2c/{tokenizer}")), "--out", str(tmp_path / "s260k")])
    capsys.readouterr()
    run(["sample", "--run", str(tmp_path / "s260k"), "--prompt", "", "--temperature", "0",
         "--max-new-tokens", "200", "--no-stream"])
    expected = data_file("llama2c/stories260K.expected.greedy-n200.txt").read_text(encoding="utf-8")
    assert capsys.readouterr().out.strip("\n") == expected.rstrip("\n")
