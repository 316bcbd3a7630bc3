"""llama2.c checkpoints: v0 and v1 import, v0 export, round trips, and bad input through `tinystories convert`."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from conftest import testdata_path as data_file
from tinystories.cli import main
from tinystories.convert.llama2c import MAGIC_V1, llama2c_v0_bytes, load_llama2c, read_llama2c
from tinystories.errors import UserError
from tinystories.model import GPT
from tinystories.presets import preset


def randomize(model: torch.nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1 + (1.0 if p.ndim == 1 else 0.0))


def cli(args: list[str], capsys) -> tuple[int, str]:
    """Exit code and stderr of `tinystories ...`."""
    with pytest.raises(SystemExit) as e:
        main(args)
        raise SystemExit(0)
    return e.value.code, capsys.readouterr().err


def test_export_of_imported_stories260k_is_byte_identical(tmp_path):
    src = data_file("llama2c/stories260K.bin")
    model = load_llama2c(src)
    assert llama2c_v0_bytes(model.config, model.state_dict()) == src.read_bytes()


@pytest.mark.parametrize("tied", [True, False])
def test_ours_to_v0_to_ours_gives_identical_weights(tmp_path, tied):
    cfg = preset("llama-260k", d_model=64, n_layer=2, n_head=8, n_kv_head=2, vocab_size=97, max_seq_len=64,
                 tie_embeddings=tied)
    ours = GPT(cfg).eval()
    randomize(ours, seed=1)
    (tmp_path / "m.bin").write_bytes(llama2c_v0_bytes(cfg, ours.state_dict()))
    cfg2, sd = read_llama2c(tmp_path / "m.bin")
    assert cfg2.tie_embeddings == tied and cfg2.ff_dim == cfg.ff_dim and cfg2.kv_heads == 2
    want = ours.state_dict()
    assert sd.keys() == {k for k in want if not (tied and k == "lm_head.weight")}
    assert all(torch.equal(sd[k], want[k]) for k in sd)


def write_v1_from_v0(v0: bytes) -> bytes:
    """A version 1 file for the same model, written from the format's specification (not our exporter)."""
    dim, hidden, L, H, KV, vocab, seq = struct.unpack_from("<7i", v0, 0)
    shared = vocab > 0
    vocab, kv_dim, D = abs(vocab), KV * (dim // H), dim // H
    w = np.frombuffer(v0, dtype="<f4", offset=28)
    sizes = [("emb", vocab * dim), ("rms_att", L * dim), ("wq", L * dim * dim), ("wk", L * kv_dim * dim),
             ("wv", L * kv_dim * dim), ("wo", L * dim * dim), ("rms_ffn", L * dim), ("w1", L * hidden * dim),
             ("w2", L * dim * hidden), ("w3", L * hidden * dim), ("rms_final", dim), ("cos", seq * D // 2),
             ("sin", seq * D // 2), ("wcls", 0 if shared else vocab * dim)]
    parts, at = {}, 0
    for name, n in sizes:
        parts[name], at = w[at : at + n], at + n
    header = struct.pack("<Ii7iB", MAGIC_V1, 1, dim, hidden, L, H, KV, vocab, seq, int(shared))
    header += b"\0" * (256 - len(header))
    order = ["rms_att", "rms_ffn", "rms_final", "emb", "wq", "wk", "wv", "wo", "w1", "w2", "w3", "wcls"]
    return header + b"".join(parts[k].tobytes() for k in order)


def test_version1_file_imports_like_version0(tmp_path):
    v0 = data_file("llama2c/stories260K.bin").read_bytes()
    (tmp_path / "v1.bin").write_bytes(write_v1_from_v0(v0))
    a, b = load_llama2c(data_file("llama2c/stories260K.bin")), load_llama2c(tmp_path / "v1.bin")
    assert a.config == b.config
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    # and an untied one, from a random model
    cfg = preset("llama-260k", d_model=32, n_layer=1, n_head=4, n_kv_head=2, vocab_size=50, max_seq_len=16,
                 tie_embeddings=False)
    ours = GPT(cfg).eval()
    randomize(ours, seed=2)
    (tmp_path / "u1.bin").write_bytes(write_v1_from_v0(llama2c_v0_bytes(cfg, ours.state_dict())))
    x = torch.randint(0, 50, (1, 16))
    with torch.no_grad():
        assert torch.equal(load_llama2c(tmp_path / "u1.bin")(x).logits, ours(x).logits)


def test_run_to_llama2c_via_cli_round_trips(tmp_path, capsys):
    src, tok = data_file("llama2c/stories260K.bin"), data_file("llama2c/tok512.bin")
    main(["convert", "--from", str(src), "--tokenizer", str(tok), "--out", str(tmp_path / "run")])
    main(["convert", "--from", str(tmp_path / "run"), "--out", str(tmp_path / "c" / "model.bin"),
          "--format", "llama2c"])
    capsys.readouterr()
    assert (tmp_path / "c" / "model.bin").read_bytes() == src.read_bytes()
    assert (tmp_path / "c" / "tokenizer.bin").read_bytes() == tok.read_bytes()
    # the output exists now: a second export refuses to replace it
    code, err = cli(["convert", "--from", str(tmp_path / "run"), "--out", str(tmp_path / "c" / "model.bin"),
                     "--format", "llama2c"], capsys)
    assert code != 0 and "already exists" in err


def _assert_one_line_error(code: int, err: str, *words: str) -> None:
    assert code != 0
    assert err.startswith("tinystories: error: ") and err.count("\n") == 1, err
    for w in words:
        assert w in err, err


def test_bad_llama2c_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    good = data_file("llama2c/stories260K.bin").read_bytes()
    tok = str(data_file("llama2c/tok512.bin"))
    out = tmp_path / "out"
    cases = {
        "truncated.bin": (good[:-100], ["truncated"]),
        "impossible.bin": (struct.pack("<7i", 64, 172, 5, 7, 4, 512, 512) + good[28:], ["impossible"]),
        "negative.bin": (struct.pack("<7i", 64, -1, 5, 8, 4, 512, 512) + good[28:], ["impossible", "hidden_dim=-1"]),
        "huge.bin": (struct.pack("<7i", 1 << 30, 172, 5, 8, 4, 512, 512) + good[28:], ["impossible"]),
        "tiny.bin": (good[:10], ["too short"]),
        "v2.bin": (struct.pack("<Ii", MAGIC_V1, 2) + b"\0" * 300, ["version 2"]),
    }
    for name, (data, words) in cases.items():
        (tmp_path / name).write_bytes(data)
        code, err = cli(["convert", "--from", str(tmp_path / name), "--tokenizer", tok, "--out", str(out)], capsys)
        _assert_one_line_error(code, err, *words)
        assert not out.exists()
    # a tokenizer whose size differs from the model's vocabulary
    code, err = cli(["convert", "--from", str(data_file("llama2c/stories260K.bin")), "--tokenizer",
                     str(data_file("llama2c/tokenizer.bin")), "--out", str(out)], capsys)
    _assert_one_line_error(code, err, "32000", "512")
    assert not out.exists()
    code, err = cli(["convert", "--from", str(data_file("llama2c/stories260K.bin")), "--out", str(out)], capsys)
    _assert_one_line_error(code, err, "--tokenizer")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(cases)  # no temp files left either


def test_models_run_c_cannot_run_are_refused():
    for cfg, why in [(preset("neo-1m", vocab_size=50, n_layer=2), "Llama-family"),
                     (preset("llama-260k", rope_theta=500.0), "theta"),
                     (preset("llama-260k", qkv_bias=True, attn_out_bias=True), "biases")]:
        with pytest.raises(UserError, match=why):
            llama2c_v0_bytes(cfg, GPT(cfg).state_dict())


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_stories260k_loss_on_201_valid_stories(tmp_path, valid_stories):
    """The imported model's per-story loss with its own tokenizer (BOS before each story)."""
    from tinystories.convert.command import ConvertConfig, convert
    from tinystories.eval.loss import LossConfig, evaluate_loss

    convert(ConvertConfig(source=str(data_file("llama2c/stories260K.bin")),
                          tokenizer=str(data_file("llama2c/tok512.bin")), out=str(tmp_path / "run")))
    result = evaluate_loss(LossConfig(run=str(tmp_path / "run"), data=(str(valid_stories),), write=False))
    assert result["stories"] == 201
    assert 1.23 <= result["per_story"]["loss"] <= 1.25
    assert 0.85 <= result["per_story"]["bits_per_byte"] <= 0.87
