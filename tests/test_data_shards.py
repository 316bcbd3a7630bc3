"""Dataset folders: layout and index, meta numbers, deterministic split, pruning, uint32, CLI errors."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer as HFTokenizer

from tinystories.cli import main
from tinystories.data.shards import open_dataset, token_dtype
from tinystories.data.stories import iter_stories
from tinystories.data.tokenize import TokenizeConfig, split_of, tokenize
from tinystories.data.tokenizer import load_tokenizer, train_bpe
from tinystories.errors import UserError
from tinystories.io import sha256_file


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir())}


def _split_stories(stories: list[str], val_fraction: float, seed: int) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"train": [], "val": []}
    for s in stories:
        out[split_of(s, val_fraction, seed)].append(s)
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    import conftest

    path = conftest.testdata_path("tinystories/TinyStories-valid.first201.txt")
    out = tmp_path_factory.mktemp("ds") / "bpe512"
    summary = tokenize(
        TokenizeConfig(data=(str(path),), out=str(out), vocab_size=512, val_fraction=0.2, seed=7)
    )
    return path, out, summary


def test_dataset_folder_layout_and_index(built):
    path, out, summary = built
    stories = list(iter_stories(path))
    ds = open_dataset(out)
    tok = ds.tokenizer()
    assert tok.vocab_size == ds.vocab_size == 512 and ds.eot_id == tok.eot_id
    assert sorted(os.listdir(out)) == [
        "meta.json",
        "tokenizer.json",
        "train_0000.bin",
        "train_index.npy",
        "val_0000.bin",
        "val_index.npy",
    ]
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # not the temp folder's private 0700
    assert (out / "meta.json").stat().st_mode & 0o777 == 0o666 & ~umask
    expected = _split_stories(stories, 0.2, 7)
    for name, split in ds.splits.items():
        assert split.shards[0].dtype == np.uint16
        assert split.index.dtype == np.int64 and split.index[0] == 0
        assert split.n_documents == len(expected[name])
        # Offsets match the per-story token counts, each document is [eot] + tokens.
        lengths = np.diff(split.index)
        assert lengths.tolist() == [len(tok.encode(s)) + 1 for s in expected[name]]
        for i, story in enumerate(expected[name]):
            doc = split.document(i)
            assert doc[0] == tok.eot_id and tok.eot_id not in doc[1:]
            assert tok.decode(doc[1:]) == story
        assert summary[name]["documents"] == len(expected[name])


def test_meta_numbers(built):
    path, out, _ = built
    stories = list(iter_stories(path))
    meta = json.loads((out / "meta.json").read_text())
    expected = _split_stories(stories, 0.2, 7)
    assert meta["format"] == "tinystories-dataset/1"
    assert meta["dtype"] == "uint16" and meta["eot_id"] == 0 and meta["vocab_size"] == 512
    assert meta["tokenizer_sha256"] == sha256_file(out / "tokenizer.json")
    assert meta["val_fraction"] == 0.2 and meta["seed"] == 7 and meta["prune"] is None
    total_tokens = total_bytes = 0
    for name in ("train", "val"):
        info = meta["splits"][name]
        index = np.load(out / f"{name}_index.npy")
        tokens = sum((out / s).stat().st_size // 2 for s in info["shards"])
        assert info["tokens"] == tokens == index[-1]
        assert info["documents"] == len(expected[name]) == len(index) - 1
        assert info["bytes"] == sum(len(s.encode()) for s in expected[name])
        total_tokens += tokens
        total_bytes += info["bytes"]
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 201
    assert meta["bytes_per_token"] == pytest.approx(total_bytes / total_tokens)
    [source] = meta["sources"]
    assert source["sha256"] == sha256_file(path) and source["bytes"] == path.stat().st_size
    h = hashlib.sha256()
    for p in sorted(out.iterdir()):
        if p.name != "meta.json":
            h.update(f"{p.name}\0{sha256_file(p)}\n".encode())
    assert meta["content_hash"] == h.hexdigest()


def test_rerun_is_up_to_date_and_different_settings_are_refused(built):
    path, out, _ = built
    before = _hashes(out)
    again = tokenize(
        TokenizeConfig(data=(str(path),), out=str(out), vocab_size=512, val_fraction=0.2, seed=7)
    )
    assert again["status"] == "already up to date"
    with pytest.raises(UserError, match="already holds a different dataset"):
        tokenize(TokenizeConfig(data=(str(path),), out=str(out), vocab_size=512, val_fraction=0.2, seed=8))
    assert _hashes(out) == before
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_worker_processes_write_the_same_dataset(built, tmp_path, monkeypatch):
    from tinystories.data import tokenize as shards

    path, out, _ = built
    monkeypatch.setattr(shards, "_POOL_MIN_BYTES", 0)
    monkeypatch.setattr(shards, "_BATCH_BYTES", 20_000)  # many batches, results kept in order
    pooled = tokenize(
        TokenizeConfig(
            data=(str(path),),
            out=str(tmp_path / "pooled"),
            vocab_size=512,
            val_fraction=0.2,
            seed=7,
            workers=2,
        )
    )
    assert _hashes(tmp_path / "pooled") == _hashes(out)
    assert pooled["content_hash"] == json.loads((out / "meta.json").read_text())["content_hash"]


def test_split_is_deterministic_and_seeded(valid_stories):
    stories = list(iter_stories(valid_stories))
    a = _split_stories(stories, 0.3, 1)
    assert a == _split_stories(stories, 0.3, 1)
    assert a != _split_stories(stories, 0.3, 2)
    assert 30 <= len(a["val"]) <= 90
    assert _split_stories(stories, 0.0, 1)["val"] == []


def test_separate_val_data_and_shard_rollover(tmp_path, valid_stories):
    stories = list(iter_stories(valid_stories))
    (tmp_path / "train.txt").write_text("<|endoftext|>".join(stories[:150]), encoding="utf-8")
    (tmp_path / "val.txt").write_text("<|endoftext|>".join(stories[150:]), encoding="utf-8")
    out = tmp_path / "ds"
    tokenize(
        TokenizeConfig(
            data=(str(tmp_path / "train.txt"),),
            val_data=(str(tmp_path / "val.txt"),),
            out=str(out),
            vocab_size=300,
            shard_tokens=2000,
        )
    )
    ds = open_dataset(out)
    tok = ds.tokenizer()
    train, val = ds.splits["train"], ds.splits["val"]
    assert train.n_documents == 150 and val.n_documents == 51
    assert len(train.shards) > 5
    for shard in train.shards:
        assert shard[0] == tok.eot_id  # shards never split a document
        assert len(shard) <= 2000 or np.count_nonzero(shard == tok.eot_id) == 1
    assert [tok.decode(train.document(i)[1:]) for i in range(150)] == stories[:150]
    assert [tok.decode(val.document(i)[1:]) for i in range(51)] == stories[150:]
    # A range across shard boundaries equals the concatenated stream.
    stream = np.concatenate(train.shards)
    assert np.array_equal(train.tokens(1500, 7000), stream[1500:7000])
    assert ds.meta["val_fraction"] == 0.0
    assert [s["role"] for s in ds.meta["sources"]] == ["data", "val_data"]


def test_gpt2_top_k_dataset(tmp_path, valid_stories, gpt2_dir, monkeypatch):
    monkeypatch.setenv("TINYSTORIES_GPT2", str(gpt2_dir))
    out = tmp_path / "neo"
    summary = tokenize(
        TokenizeConfig(
            data=(str(valid_stories),), out=str(out), tokenizer="gpt2", top_k=1000, shard_tokens=9000
        )
    )
    ds = open_dataset(out)
    assert ds.vocab_size == 1000 and (out / "vocab_map.json").is_file()
    base = load_tokenizer("gpt2")
    keep = json.loads((out / "vocab_map.json").read_text())["base_ids"]
    assert len(keep) == 1000 and base.eot_id in keep
    to_new = {b: i for i, b in enumerate(keep)}
    stories = _split_stories(list(iter_stories(valid_stories)), 0.05, 0)
    erased = total = 0
    for name, split in ds.splits.items():
        for i, story in enumerate(stories[name]):
            base_ids = base.encode(story)
            expected = [to_new[t] for t in base_ids if t in to_new]
            total += len(base_ids)
            erased += len(base_ids) - len(expected)
            assert split.document(i).tolist() == [ds.eot_id, *expected]
    assert summary["prune"]["erased_tokens"] == erased
    assert ds.meta["prune"]["erased_share"] == pytest.approx(erased / total)
    assert ds.meta["tokenizer_sha256"] == ds.tokenizer().sha256


def test_uint32_above_65536_ids(tmp_path):
    # A vocabulary past 65,536 ids: a small BPE plus added tokens up to id 70,000.
    base = train_bpe(["The big dog ran home."] * 3, 300)
    hf = HFTokenizer.from_str(base._json)
    n = 70_001 - hf.get_vocab_size()
    hf.add_tokens([f"<w{i}>" for i in range(n)])
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text(hf.to_str(), encoding="utf-8")
    top = f"<w{n - 1}>"
    (tmp_path / "s.txt").write_text(f"A {top} dog.<|endoftext|>The <w0> ran.", encoding="utf-8")
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32
    out = tmp_path / "ds"
    tokenize(
        TokenizeConfig(
            data=(str(tmp_path / "s.txt"),), out=str(out), tokenizer=str(tmp_path / "tok"), val_fraction=0
        )
    )
    ds = open_dataset(out)
    assert ds.meta["dtype"] == "uint32" and ds.vocab_size == 70_001
    doc = ds.splits["train"].document(0)
    assert doc.dtype == np.uint32 and 70_000 in doc.tolist()
    assert ds.tokenizer().decode(doc[1:]) == f"A {top} dog."


# --- the command line ---------------------------------------------------------------------


def _cli_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("tinystories: error: ") and err.count("\n") == 1, err
    return err


def test_cli_success_and_bad_input(tmp_path, valid_stories, gpt2_dir, monkeypatch, capsys):
    monkeypatch.setenv("TINYSTORIES_GPT2", str(gpt2_dir))
    out = tmp_path / "ds"
    main(["tokenize", "--data", str(valid_stories), "--vocab-size", "1k", "--out", str(out)])
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "written" and summary["vocab_size"] == 1000
    before = _hashes(out)

    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "latin1.txt").write_bytes(b"Once upon a time, caf\xe9.")
    fresh = ["--out", str(tmp_path / "fresh")]
    assert "file not found" in _cli_error(capsys, ["tokenize", "--data", str(tmp_path / "nope.txt"), *fresh])
    assert "is empty" in _cli_error(capsys, ["tokenize", "--data", str(tmp_path / "empty.txt"), *fresh])
    err = _cli_error(capsys, ["tokenize", "--data", str(tmp_path / "latin1.txt"), *fresh])
    assert "not UTF-8" in err and "byte offset 21" in err
    v = ["tokenize", "--data", str(valid_stories)]
    err = _cli_error(capsys, [*v, "--top-k", "2000", "--vocab-size", "1000", *fresh])
    assert "--top-k 2000 is larger than the vocabulary" in err
    err = _cli_error(capsys, [*v, "--tokenizer", "gpt2", "--top-k", "60000", *fresh])
    assert "larger than the vocabulary (50257 tokens)" in err
    assert "unknown tokenizer" in _cli_error(capsys, [*v, "--tokenizer", "gpt5", *fresh])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ds",
        "empty.txt",
        "latin1.txt",
    ]  # nothing half-written

    # The same mistakes aimed at an existing dataset leave it untouched.
    ds = ["--out", str(out)]
    _cli_error(capsys, ["tokenize", "--data", str(tmp_path / "latin1.txt"), *ds])
    _cli_error(capsys, [*v, "--tokenizer", "gpt5", *ds])
    err = _cli_error(capsys, ["tokenize", "--data", str(valid_stories), "--vocab-size", "999", *ds])
    assert "already holds a different dataset" in err
    assert _hashes(out) == before

    # An unknown model preset stops training before anything is written.
    err = _cli_error(capsys, ["train", "--data", str(out), "--run", str(tmp_path / "run"), "--preset", "neo-2m"])
    assert "unknown model preset 'neo-2m'" in err
    assert not (tmp_path / "run").exists() and _hashes(out) == before

    main(["tokenize", "--data", str(valid_stories), "--vocab-size", "1000", *ds])
    assert json.loads(capsys.readouterr().out)["status"] == "already up to date"
    assert _hashes(out) == before


def test_cli_subprocess_exit_code(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tinystories",
            "tokenize",
            "--data",
            str(tmp_path / "missing.txt"),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"tinystories: error: file not found: {tmp_path / 'missing.txt'}"
    ]
    assert not (tmp_path / "o").exists()
