"""Hugging Face folders in and out: released-style GPT-Neo import, round trips, transformers parity."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from conftest import testdata_path as data_file
from conftest import torch_threads
from tinystories.cli import main
from tinystories.convert.command import Source, write_run
from tinystories.data.stories import iter_stories
from tinystories.data.tokenizer import load_tokenizer, train_bpe
from tinystories.model import GPT
from tinystories.presets import preset
from tinystories.rundir import load_run
from tinystories.sample import SampleParams, complete, prompt_ids

transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def offline_one_thread(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    # Token-by-token decoding of tiny models is ten times slower with threads fighting over 2 cores.
    with torch_threads(1):
        yield


def randomize(model: torch.nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.3 if "emb" in name or "wte" in name or "wpe" in name else 0.15)


def hf_load(folder) -> torch.nn.Module:
    return transformers.AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation="eager").eval()


def max_diff(ours: GPT, theirs: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return (ours(x).logits - theirs(x).logits).abs().max().item()


def run_cli(*args: str) -> None:
    main(["convert", *args])


# --- the released GPT-Neo checkpoints, as they are --------------------------------------


def released_neo_folder(folder, gpt2_dir, seed: int = 0) -> torch.nn.Module:
    """A folder shaped like roneneldan/TinyStories-*: old buffers, pytorch_model.bin, no lm_head, 2,048 positions."""
    config = {
        "activation_function": "gelu_new", "architectures": ["GPTNeoForCausalLM"], "attention_dropout": 0,
        "attention_layers": ["global", "local", "global", "local"],
        "attention_types": [[["global", "local"], 2]], "bos_token_id": 50256, "embed_dropout": 0,
        "eos_token_id": 50256, "gradient_checkpointing": False, "hidden_size": 64, "initializer_range": 0.02,
        "intermediate_size": None, "layer_norm_epsilon": 1e-05, "max_position_embeddings": 2048,
        "model_type": "gpt_neo", "num_heads": 16, "num_layers": 4, "resid_dropout": 0,
        "summary_activation": None, "summary_first_dropout": 0.1, "summary_proj_to_labels": True,
        "summary_type": "cls_index", "summary_use_proj": True, "torch_dtype": "float32",
        "transformers_version": "4.28.0.dev0", "use_cache": True, "vocab_size": 50257, "window_size": 256,
    }
    hf_config = transformers.GPTNeoConfig(**config)
    model = transformers.GPTNeoForCausalLM(hf_config).eval()
    randomize(model, seed)
    sd = {k: v.clone() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    causal = torch.tril(torch.ones(2048, 2048, dtype=torch.bool)).view(1, 1, 2048, 2048)
    for layer in range(4):
        sd[f"transformer.h.{layer}.attn.attention.bias"] = causal
        sd[f"transformer.h.{layer}.attn.attention.masked_bias"] = torch.tensor(-1e9)
    folder.mkdir()
    torch.save(sd, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    shutil.copy(gpt2_dir / "encoder.json", folder / "vocab.json")
    shutil.copy(gpt2_dir / "vocab.bpe", folder / "merges.txt")
    return model


def test_released_style_gpt_neo_imports_with_identical_logits(tmp_path, gpt2_dir):
    theirs = released_neo_folder(tmp_path / "neo", gpt2_dir)
    run_cli("--from", str(tmp_path / "neo"), "--out", str(tmp_path / "run"))
    loaded = load_run(tmp_path / "run")
    cfg = loaded.model.config
    assert (cfg.max_seq_len, cfg.windows, cfg.tie_embeddings) == (2048, (None, 256, None, 256), True)
    assert loaded.tokenizer.vocab_size == 50257 and loaded.tokenizer.eot_id == 50256
    x = torch.randint(0, 50257, (1, 512), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = theirs(x).logits
        from_folder = hf_load(tmp_path / "neo")(x).logits
        ours = loaded.model(x).logits
    assert torch.equal(ref, from_folder)  # transformers reads the fixture as we built it
    assert (ours - ref).abs().max().item() < 1e-4
    text = "Once upon a time, there was a little dog."
    assert loaded.tokenizer.encode(text) == transformers.AutoTokenizer.from_pretrained(str(tmp_path / "neo"))(text).input_ids


# --- ours -> HF -> ours ---------------------------------------------------------------


@pytest.fixture(scope="module")
def stories() -> list[str]:
    return list(iter_stories([data_file("tinystories/TinyStories-valid.first201.txt")]))


def make_run(folder, family: str, stories: list[str]) -> GPT:
    if family == "neo":
        tok = train_bpe(stories[:100], 400)
        cfg = preset("neo-1m", d_model=32, n_layer=2, n_head=4, vocab_size=tok.vocab_size, max_seq_len=128,
                     windows=(None, 16))
    else:
        tok = load_tokenizer(data_file("llama2c/tok512.bin"))
        cfg = preset("llama-260k", d_model=64, n_layer=2, n_head=8, n_kv_head=2, vocab_size=512, max_seq_len=128,
                     tie_embeddings=False, rope_theta=500.0)
    model = GPT(cfg).eval()
    randomize(model, seed=3)
    write_run(folder, Source(cfg, model.state_dict(), tok, "test"), {"from": "test"})
    return model


@pytest.mark.parametrize("family", ["neo", "llama"])
def test_ours_to_hf_to_ours(tmp_path, family, stories):
    from safetensors.torch import load_file

    ours = make_run(tmp_path / "run", family, stories)
    run_cli("--from", str(tmp_path / "run"), "--out", str(tmp_path / "hf"), "--format", "hf")
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json"} <= {p.name for p in (tmp_path / "hf").iterdir()}
    theirs = hf_load(tmp_path / "hf")
    assert type(theirs).__name__ == ("GPTNeoForCausalLM" if family == "neo" else "LlamaForCausalLM")
    x = torch.randint(0, ours.config.vocab_size, (2, 100), generator=torch.Generator().manual_seed(1))
    assert max_diff(ours, theirs, x) < 1e-4

    # back: identical weights
    run_cli("--from", str(tmp_path / "hf"), "--out", str(tmp_path / "back"))
    a = load_file(str(tmp_path / "run/ckpt/step_000000/model.safetensors"))
    b = load_file(str(tmp_path / "back/ckpt/step_000000/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    before, after = load_run(tmp_path / "run").config.model, load_run(tmp_path / "back").config.model
    # HF Llama configs always state the MLP width; ours may leave it to the family rule.
    def plain(c):
        return dataclasses.replace(c, d_ff=c.ff_dim, ff_multiple_of=1)

    assert plain(after) == plain(before)

    # the same tokenizer, as AutoTokenizer loads it
    tok = load_run(tmp_path / "run").tokenizer
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    text = stories[3]
    bos = [1] if family == "llama" else []
    assert hf_tok(text).input_ids == bos + tok.encode(text)

    # greedy generation: transformers on the export = our sampler on the run
    prompt = prompt_ids(tok, "Once upon a time")
    mine = complete(ours, [prompt], SampleParams(temperature=0.0, max_new_tokens=40), eot_id=tok.eot_id)[0].tokens
    with torch.no_grad():
        out = theirs.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False)[0, len(prompt):].tolist()
    if out and out[-1] == tok.eot_id:
        out = out[:-1]
    assert out == mine


def test_exported_stories260k_generates_the_golden_text_with_transformers(tmp_path):
    """transformers on the exported folder prints llama2.c's golden text, which `tinystories sample`
    on the imported run also prints (test_golden_260k.py)."""
    src, tok = data_file("llama2c/stories260K.bin"), data_file("llama2c/tok512.bin")
    run_cli("--from", str(src), "--tokenizer", str(tok), "--out", str(tmp_path / "run"))
    run_cli("--from", str(tmp_path / "run"), "--out", str(tmp_path / "hf"), "--format", "hf")
    model = hf_load(tmp_path / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    with torch.no_grad():
        out = model.generate(torch.tensor([[1]]), max_new_tokens=200, do_sample=False)[0]
    text = hf_tok.decode(out, skip_special_tokens=True)
    expected = data_file("llama2c/stories260K.expected.greedy-n200.txt").read_text(encoding="utf-8").rstrip("\n")
    assert text == expected


def test_unsupported_architecture_is_one_line_and_writes_nothing(tmp_path, capsys):
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    with pytest.raises(SystemExit) as e:
        main(["convert", "--from", str(folder), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert e.value.code != 0 and err.count("\n") == 1 and "GPT2LMHeadModel is not supported" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt2"]


def test_sharded_llama_folder_with_only_a_sentencepiece_model(tmp_path):
    """An HF Llama folder with sharded weights and `tokenizer.model` instead of `tokenizer.json`."""
    from safetensors.torch import load_file, save_file

    src, tok = data_file("llama2c/stories260K.bin"), data_file("llama2c/tok512.bin")
    run_cli("--from", str(src), "--tokenizer", str(tok), "--out", str(tmp_path / "run"))
    run_cli("--from", str(tmp_path / "run"), "--out", str(tmp_path / "hf"), "--format", "hf")
    hf = tmp_path / "hf"
    tensors = load_file(str(hf / "model.safetensors"))
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in halves.items():
        save_file({k: tensors[k] for k in keys}, str(hf / file))
    index = {"metadata": {}, "weight_map": {k: f for f, keys in halves.items() for k in keys}}
    (hf / "model.safetensors.index.json").write_text(json.dumps(index))
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (hf / name).unlink()
    shutil.copy(data_file("llama2c/tok512.model"), hf / "tokenizer.model")
    run_cli("--from", str(hf), "--out", str(tmp_path / "back"))
    a = load_file(str(tmp_path / "run/ckpt/step_000000/model.safetensors"))
    b = load_file(str(tmp_path / "back/ckpt/step_000000/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "back/tokenizer.json").read_text() == (tmp_path / "run/tokenizer.json").read_text()


class NotATensor:
    """Anything a plain weights file should not hold (unpickling it would run code)."""


def test_bad_hf_folders_are_one_line_errors(tmp_path, capsys, gpt2_dir):
    released_neo_folder(tmp_path / "neo", gpt2_dir)
    weights = tmp_path / "neo" / "pytorch_model.bin"
    data = weights.read_bytes()
    cases = {
        "truncated": lambda: weights.write_bytes(data[: len(data) // 2]),
        "pickled object": lambda: torch.save({"x": NotATensor()}, weights),
        "no weights": lambda: weights.unlink(),
    }
    for what, damage in cases.items():
        damage()
        with pytest.raises(SystemExit) as e:
            main(["convert", "--from", str(tmp_path / "neo"), "--out", str(tmp_path / "run")])
        err = capsys.readouterr().err
        assert e.value.code != 0 and err.count("\n") == 1 and err.startswith("tinystories: error:"), (what, err)
        assert not (tmp_path / "run").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        main(["convert", "--from", str(tmp_path / "empty"), "--out", str(tmp_path / "run")])
    assert "neither a run folder" in capsys.readouterr().err


def test_pruned_gpt_neo_vocabulary_exports_with_its_own_tokenizer(tmp_path, gpt2_dir, stories):
    """The paper's GPT-Neo vocabulary cut to its most frequent tokens: the HF folder's tokenizer.json numbers
    the kept tokens 0..K-1, so transformers' logits and AutoTokenizer's ids are ours; the folder imports back."""
    from collections import Counter

    from tinystories.convert.command import read_source
    from tinystories.convert.hf import write_hf_folder
    from tinystories.data.tokenizer import from_gpt2_files

    base = from_gpt2_files(gpt2_dir / "encoder.json", gpt2_dir / "vocab.bpe")
    counts = Counter(i for s in stories for i in base.encode(s))
    tok = base.prune(i for i, _ in counts.most_common(1000))
    cfg = preset("neo-1m", d_model=32, n_layer=2, n_head=4, vocab_size=tok.vocab_size, max_seq_len=256,
                 windows=(None, 16))
    ours = GPT(cfg).eval()
    randomize(ours, seed=5)
    (tmp_path / "hf").mkdir()
    write_hf_folder(tmp_path / "hf", cfg, ours.state_dict(), tok)  # what `convert --format hf` writes

    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    theirs = hf_load(tmp_path / "hf")
    assert theirs.config.vocab_size == tok.vocab_size == 1001
    assert hf_tok.convert_tokens_to_ids("<|endoftext|>") == tok.eot_id < tok.vocab_size
    complete_texts, erasing = 0, 0
    for text in (sentence for story in stories[150:170] for sentence in story.split(". ")):
        mine, hf_ids = tok.encode(text), hf_tok(text).input_ids
        # Text the pruned vocabulary erases a token of gets that token as an id >= K; the rest is ours.
        assert [i for i in hf_ids if i < tok.vocab_size] == mine
        complete_texts += hf_ids == mine
        erasing += hf_ids != mine
        assert hf_tok.decode(mine) == tok.decode(mine)
    assert complete_texts > 0 and erasing > 0  # both cases occur in these stories
    ids = torch.tensor([[tok.eot_id, *tok.encode(stories[160])][:256]])
    assert max_diff(ours, theirs, ids) < 1e-4

    # back: the same weights and the same pruned vocabulary (vocab_map.json beside tokenizer.json)
    back = read_source(tmp_path / "hf")
    assert back.tokenizer.pruned and back.tokenizer.vocab_size == tok.vocab_size
    assert all(back.tokenizer.encode(s) == tok.encode(s) for s in stories[150:170])
    a = ours.state_dict()
    assert back.state.keys() == a.keys() and all(torch.equal(back.state[k], a[k]) for k in a)
