"""`train --init RUN[:step]`: another run's weights, a fresh optimizer, step 0, and clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import conftest
from test_train import MICRO, cli, make_dataset, micro_cfg, tree_hash, weights
from tinystories import rundir
from tinystories.errors import UserError
from tinystories.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    stories = conftest.testdata_path("tinystories/TinyStories-valid.first201.txt")
    return make_dataset(tmp_path_factory.mktemp("init") / "data", stories)


@pytest.fixture(scope="module")
def source(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("init") / "source"
    train(micro_cfg(dataset, run, max_steps=6, ckpt_interval=3, keep_ckpts=0), MICRO)
    return run


def test_init_loads_the_weights_bitwise_with_a_fresh_optimizer(dataset: Path, source: Path, tmp_path: Path) -> None:
    # lr 0: the one step leaves the weights as loaded, so the new run's checkpoint is the source's, bit for bit.
    run = tmp_path / "tuned"
    summary = train(micro_cfg(dataset, run, max_steps=1, lr=0.0, min_lr=0.0, init=f"{source}:3"))
    assert summary is not None and summary["step"] == 1
    a, b = weights(source, 3), weights(run, 1)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(weights(source, 6)[k], b[k]) for k in a)  # the step asked for, not the newest
    config = rundir.read_config(run)
    assert config.train.init == f"{source.resolve()}:3"  # where it came from, pinned to a step
    assert config.model == rundir.read_config(source).model
    optim = torch.load(rundir.find_checkpoint(run) / rundir.OPTIM_FILE, weights_only=False)
    assert all(int(s["step"]) == 1 for s in optim["state"].values())  # fresh: one step, not seven
    # Without a step, the newest checkpoint; then it trains like any run.
    train(micro_cfg(dataset, tmp_path / "newest", max_steps=2, init=str(source)))
    assert rundir.read_config(tmp_path / "newest").train.init.endswith(":6")


def test_init_refuses_another_shape_in_one_line(dataset: Path, source: Path, tmp_path: Path) -> None:
    run = tmp_path / "deeper"
    with pytest.raises(UserError, match="does not fit this model"):
        train(micro_cfg(dataset, run, max_steps=1, init=str(source)), {"n_layer": 3})
    assert not run.exists()
    r = cli("train", "--data", str(dataset), "--run", str(run), "--max-steps", "1", "--init", str(source),
            "--model-d-model", "48")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "does not fit this model" in lines[0], r.stderr
    assert not run.exists()


def test_init_refuses_another_vocabulary(source: Path, tmp_path: Path) -> None:
    text = tmp_path / "other.txt"
    text.write_text("\n<|endoftext|>\n".join(f"Story {i}: a cat sat on a mat with a dog." for i in range(300)))
    smaller = make_dataset(tmp_path / "v300", text, vocab_size=300)
    with pytest.raises(UserError, match="300"):
        train(micro_cfg(smaller, tmp_path / "a", max_steps=1, init=str(source)))
    same_size = make_dataset(tmp_path / "v512", text)
    before = tree_hash(source)
    with pytest.raises(UserError, match="tokenizer differs"):
        train(micro_cfg(same_size, tmp_path / "b", max_steps=1, init=str(source)))
    assert tree_hash(source) == before and not (tmp_path / "b").exists()
    with pytest.raises(UserError, match="no checkpoint at step 5"):
        train(micro_cfg(same_size, tmp_path / "c", max_steps=1, init=f"{source}:5"))
