"""The Hugging Face Hub, without the network: imports from a cache laid out as huggingface_hub lays it
out, the model card of an export, and `--push-to-hub` against a fake upload."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import testdata_path as data_file
from conftest import torch_threads
from test_convert_hf import released_neo_folder
from tinystories.cli import main
from tinystories.rundir import load_run

transformers = pytest.importorskip("transformers")
huggingface_hub = pytest.importorskip("huggingface_hub")

REPO = "roneneldan/TinyStories-test"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def hub_env(monkeypatch, tmp_path):
    """Offline, one thread, no token, and a cache of our own (never ~/.cache/huggingface)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with torch_threads(1):
        yield


def cache_model(cache: Path, repo: str, folder: Path, commit: str = COMMIT) -> Path:
    """Put `folder`'s files into an HF cache as huggingface_hub does: blobs by hash, a snapshot of
    relative symlinks named by commit, and refs/main holding the commit."""
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for path in folder.iterdir():
        data = path.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / path.name)
    (root / "refs" / "main").write_text(commit)
    return snapshot


def fail_line(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as e:
        main(["convert", *args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("tinystories: error:"), err
    return err


def test_hub_id_imports_from_the_cache_offline_with_transformers_logits(tmp_path, gpt2_dir):
    theirs = released_neo_folder(tmp_path / "made", gpt2_dir)
    snapshot = cache_model(tmp_path / "hf-cache", REPO, tmp_path / "made")
    main(["convert", "--from", REPO, "--out", str(tmp_path / "run")])
    loaded = load_run(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "convert.json").read_text())["kind"] == "hf"
    x = torch.randint(0, 50257, (1, 512), generator=torch.Generator().manual_seed(0))
    from_cache = transformers.AutoModelForCausalLM.from_pretrained(
        REPO, cache_dir=str(tmp_path / "hf-cache"), local_files_only=True, attn_implementation="eager").eval()
    with torch.no_grad():
        ref = theirs(x).logits
        assert torch.equal(from_cache(x).logits, ref)  # transformers reads the cache we built
        diff = (loaded.model(x).logits - ref).abs().max().item()
    assert diff < 1e-4, diff
    assert loaded.tokenizer.vocab_size == 50257 and loaded.tokenizer.eot_id == 50256
    # A revision: the commit itself, or the branch that points at it, is the same snapshot.
    from tinystories.convert.hub import download

    assert download(f"{REPO}@{COMMIT}") == download(f"{REPO}@main") == download(REPO) == snapshot
    assert (snapshot / "config.json").is_symlink()


def test_missing_models_and_no_network_are_one_line(tmp_path, capsys, monkeypatch):
    from huggingface_hub import errors

    err = fail_line(capsys, "--from", "nobody/not-cached", "--out", str(tmp_path / "run"))
    assert "nobody/not-cached is no path and not in" in err and "offline" in err
    monkeypatch.delenv("HF_HUB_OFFLINE")
    err = fail_line(capsys, "--from", "nobody/not-cached", "--offline", "--out", str(tmp_path / "run"))
    assert "not in" in err and "offline" in err

    def not_found(*args, **kwargs):
        response = SimpleNamespace(status_code=404, headers={}, url="https://huggingface.co/api/models/x", request=None)
        raise errors.RepositoryNotFoundError("Repository Not Found", response=response)

    def no_network(*args, **kwargs):
        assert kwargs["local_files_only"] is False
        raise errors.LocalEntryNotFoundError("Cannot find the requested files in the disk cache")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", not_found)
    err = fail_line(capsys, "--from", "nobody/does-not-exist", "--out", str(tmp_path / "run"))
    assert "no such path, and no model nobody/does-not-exist on the Hugging Face Hub" in err
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    err = fail_line(capsys, "--from", "nobody/anything@v1", "--out", str(tmp_path / "run"))
    assert "cannot reach the Hugging Face Hub" in err
    assert not (tmp_path / "run").exists()
    # A path that does not exist and is no Hub id is still "nothing to convert".
    assert "nothing to convert" in fail_line(capsys, "--from", str(tmp_path / "nope.bin"), "--out", str(tmp_path / "r"))


# --- export: the model card and the push -----------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A micro Llama run trained on the real stories, with eval/loss.json and eval/probes.json."""
    from tinystories.data.tokenize import TokenizeConfig, tokenize
    from tinystories.eval.loss import LossConfig, evaluate_loss
    from tinystories.eval.probes import ProbesConfig, evaluate_probes
    from tinystories.train import TrainConfig, train

    root = tmp_path_factory.mktemp("card")
    with torch_threads(1):
        stories = str(data_file("tinystories/TinyStories-valid.first201.txt"))
        tokenize(TokenizeConfig(data=(stories,), out=str(root / "ds"), vocab_size=400, val_fraction=0.1, workers=1))
        run = root / "run"
        train(TrainConfig(data=str(root / "ds"), run=str(run), seq_len=64, batch_size=4, lr=1e-2, max_steps=40,
                          log_interval=10, eval_interval=40, eval_tokens=2048, ckpt_interval=0, progress=False),
              {"d_model": 32, "n_layer": 2, "n_head": 4, "n_kv_head": 2, "max_seq_len": 64})
        evaluate_loss(LossConfig(run=str(run), data=(stories,), max_stories=20))
        evaluate_probes(ProbesConfig(run=str(run), sets="fact"))
    return run


def test_export_writes_a_model_card_with_the_run_figures(trained, tmp_path):
    main(["convert", "--from", str(trained), "--out", str(tmp_path / "hf"), "--format", "hf"])
    card = (tmp_path / "hf" / "README.md").read_text(encoding="utf-8")
    metrics = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    last = metrics[-1]
    loss = json.loads((trained / "eval" / "loss.json").read_text())
    probes = json.loads((trained / "eval" / "probes.json").read_text())
    assert card.startswith("---\nlibrary_name: transformers\n")
    assert f"| steps | {last['step']} |" in card
    assert f"| training tokens | {last['tokens']:,} |" in card
    assert f"| final training loss (nats/token) | {last['loss']:.4g} |" in card
    val = [r for r in metrics if "val_loss" in r][-1]
    assert f"{val['val_loss']:.4g}" in card and f"{val['val_bpb']:.4g}" in card
    assert f"{loss['per_story']['loss']:.4g} nats/token" in card and "loss on 20 stories" in card
    assert f"accuracy {probes['accuracy']:.4g}" in card
    meta = json.loads((Path(load_run(trained).config.data["path"]) / "meta.json").read_text())
    assert f"| train split | {meta['splits']['train']['documents']:,} stories" in card
    assert "TinyStories-valid.first201.txt" in card
    assert 'AutoModelForCausalLM.from_pretrained("path/to/this/folder")' in card

    # The loading code in the card works as written, on the folder.
    code = card.split("```python\n")[1].split("```")[0].replace("path/to/this/folder", str(tmp_path / "hf"))
    code = code.replace("do_sample=True", "do_sample=False").replace(", temperature=0.8, top_p=0.9", "")
    namespace: dict = {}
    exec(compile(code, "card", "exec"), namespace)  # the card's own snippet, as a reader would run it
    assert namespace["out"].shape[1] > namespace["inputs"]["input_ids"].shape[1]
    assert namespace["inputs"]["input_ids"][0, 0].item() == load_run(trained).tokenizer.eot_id


def test_push_to_hub_uploads_the_export_with_the_token(trained, tmp_path, monkeypatch, capsys):
    calls: list[tuple] = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs["token"], kwargs.get("exist_ok")))

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        files = sorted(p.name for p in folder.iterdir())
        card = (folder / "README.md").read_text(encoding="utf-8")
        calls.append(("upload_folder", kwargs["repo_id"], kwargs["token"], files, card))

    def upload_file(self, **kwargs):
        calls.append(("upload_file", kwargs["repo_id"], kwargs["token"], kwargs["path_in_repo"]))

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_file", upload_file)

    # No token: refused before anything is converted or written.
    err = fail_line(capsys, "--from", str(trained), "--out", str(tmp_path / "hf"), "--format", "hf",
                    "--push-to-hub", "me/tiny")
    assert "HF_TOKEN" in err and not (tmp_path / "hf").exists() and calls == []
    assert "--format hf" in fail_line(capsys, "--from", str(trained), "--out", str(tmp_path / "r"),
                                      "--push-to-hub", "me/tiny")

    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    main(["convert", "--from", str(trained), "--out", str(tmp_path / "hf"), "--format", "hf",
          "--push-to-hub", "me/tiny"])
    assert json.loads(capsys.readouterr().out)["pushed_to"] == "https://huggingface.co/me/tiny"
    assert calls[0] == ("create_repo", "me/tiny", "hf_test_token", True)
    kind, repo, token, files, card = calls[1]
    assert (kind, repo, token) == ("upload_folder", "me/tiny", "hf_test_token")
    assert files == sorted(p.name for p in (tmp_path / "hf").iterdir())
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json"} <= set(files)
    assert 'from_pretrained("me/tiny")' in card and "# tiny" in card

    calls.clear()
    main(["convert", "--from", str(trained), "--out", str(tmp_path / "m.gguf"), "--format", "gguf",
          "--push-to-hub", "me/tiny-gguf"])
    assert calls[1] == ("upload_file", "me/tiny-gguf", "hf_test_token", "m.gguf")

    def refused(self, repo_id, **kwargs):
        raise RuntimeError("401 Client Error: Unauthorized\nmore detail")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", refused)
    err = fail_line(capsys, "--from", str(trained), "--out", str(tmp_path / "hf2"), "--format", "hf",
                    "--push-to-hub", "me/tiny")
    assert "pushing to me/tiny on the Hugging Face Hub failed: 401 Client Error: Unauthorized" in err
