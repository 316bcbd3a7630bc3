"""`eval loss`: per-story and stream loss against hand loops with plain F.cross_entropy."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import write_tiny_run
from tinystories.errors import UserError
from tinystories.eval.loss import LossConfig, evaluate_loss, story_windows
from tinystories.loss import IGNORE_INDEX
from tinystories.model import GPT, ModelConfig
from tinystories.rundir import save_checkpoint, write_config

STORIES = [
    "Once upon a time there was a little dog named Max. Max liked to run in the park with his red ball.",
    "Lily saw a big tree. She said, \u201cI want to climb it!\u201d Her mom smiled and helped her up.",
    "Tom had a toy car. It was blue and fast. One day the car broke, and Tom was sad. His dad fixed it. "
    "Tom was happy again and said thank you. They played all day long until the sun went down.",
    "The cat sat.",
    "A bird sang a song in the tree. The song was very pretty. All the animals came to listen, even the old "
    "bear who never came out. The bear said the song made him feel young again. Caf\u00e9 time!",
]
CONTEXT = 32


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A run folder with a random model and a BPE tokenizer, and a story file."""
    root = tmp_path_factory.mktemp("evalloss")
    stories = root / "stories.txt"
    stories.write_text("".join(f"{s}\n<|endoftext|>\n" for s in STORIES), encoding="utf-8")
    run, model, tok = write_tiny_run(root, STORIES * 10, 300, step=3, max_seq_len=CONTEXT, windows=(None, 8),
                                     init_std=0.2)
    return run, stories, model, tok


def hand_per_story(model, tok, stride):
    """Each prediction j of [eot] + story + [eot] scored from the window that starts at k * stride,
    k the first window whose end passes j."""
    nll, n = 0.0, 0
    for story in STORIES:
        seq = [tok.eot_id, *tok.encode(story), tok.eot_id]
        for j in range(len(seq) - 1):
            begin = max(0, math.ceil((j + 1 - CONTEXT) / stride)) * stride
            logits = model(torch.tensor([seq[begin : j + 1]])).logits[0, -1]
            nll += float(F.cross_entropy(logits, torch.tensor(seq[j + 1])))
            n += 1
    return nll, n


def hand_stream(model, tok):
    stream = [t for s in STORIES for t in [tok.eot_id, *tok.encode(s)]] + [tok.eot_id]
    nll, n = 0.0, 0
    for begin in range(0, len(stream) - 1, CONTEXT):
        x = torch.tensor([stream[begin : begin + CONTEXT]])
        y = torch.tensor(stream[begin + 1 : begin + CONTEXT + 1])
        nll += float(F.cross_entropy(model(x).logits[0, : len(y)], y, reduction="sum"))
        n += len(y)
    return nll, n


@torch.no_grad()
def test_per_story_and_stream_equal_hand_loops(setup):
    run, stories, model, tok = setup
    assert max(len(tok.encode(s)) for s in STORIES) > 2 * CONTEXT  # sliding windows are exercised
    out = evaluate_loss(LossConfig(run=str(run), data=(str(stories),), stride=10, batch=3))
    nll, n = hand_per_story(model, tok, stride=10)
    n_bytes = sum(len(s.encode("utf-8")) for s in STORIES)
    assert out["stories"] == 5 and out["tokens"] == n and out["bytes"] == n_bytes
    a = out["per_story"]
    assert a["tokens"] == n
    assert a["loss"] == pytest.approx(nll / n, rel=1e-5)
    assert a["perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-5)
    assert a["bits_per_byte"] == pytest.approx(nll / math.log(2) / n_bytes, rel=1e-5)
    assert a["stride"] == 10
    nll_b, n_b = hand_stream(model, tok)
    b = out["stream"]
    assert b["tokens"] == n_b == n
    assert b["loss"] == pytest.approx(nll_b / n_b, rel=1e-5)
    assert b["bits_per_byte"] == pytest.approx(nll_b / math.log(2) / n_bytes, rel=1e-5)
    assert json.loads((run / "eval" / "loss.json").read_text()) == json.loads(json.dumps(out))
    # Batch size only changes the grouping.
    again = evaluate_loss(LossConfig(run=str(run), data=(str(stories),), stride=10, batch=1, write=False))
    assert again["per_story"]["loss"] == pytest.approx(a["loss"], rel=1e-6)


def test_story_windows_cover_each_prediction_once():
    doc = list(range(1, 50))  # [eot] + 48 tokens, stored; eot = 0
    wins = list(story_windows(doc, 0, context=16, stride=5))
    scored = [t for _, tgt in wins for t in tgt if t != IGNORE_INDEX]
    assert scored == [*doc[1:], 0]
    assert all(len(i) == len(t) <= 16 for i, t in wins)
    assert len(list(story_windows([0, 1, 2], 0, context=16, stride=8))) == 1


def test_dataset_folder_matches_story_file(setup, tmp_path):
    from tinystories.data.tokenize import TokenizeConfig, tokenize

    run, stories, _, _ = setup
    ds = tmp_path / "ds"
    tokenize(TokenizeConfig(data=(str(stories),), val_data=(str(stories),), out=str(ds),
                            tokenizer=str(run / "tokenizer.json")))
    from_ds = evaluate_loss(LossConfig(run=str(run), data=(str(ds),), write=False))
    from_file = evaluate_loss(LossConfig(run=str(run), data=(str(stories),), write=False))
    assert from_ds["tokens"] == from_file["tokens"] and from_ds["bytes"] == from_file["bytes"]
    assert from_ds["per_story"]["loss"] == pytest.approx(from_file["per_story"]["loss"], rel=1e-6)
    assert from_ds["split"] == "val"
    two = evaluate_loss(LossConfig(run=str(run), data=(str(ds),), max_stories=2, write=False))
    assert two["stories"] == 2 and two["bytes"] == sum(len(s.encode()) for s in STORIES[:2])

    other = tmp_path / "other"
    tokenize(TokenizeConfig(data=(str(stories),), out=str(other), vocab_size=280))
    with pytest.raises(UserError, match="different tokenizer"):
        evaluate_loss(LossConfig(run=str(run), data=(str(other),), write=False))


def test_bad_input_is_one_clear_line(setup, tmp_path):
    run, _, _, _ = setup
    with pytest.raises(UserError, match="not found"):
        evaluate_loss(LossConfig(run=str(run), data=(str(tmp_path / "missing.txt"),)))
    with pytest.raises(UserError, match="names no dataset"):
        evaluate_loss(LossConfig(run=str(run)))
    # A run whose tokenizer does not fit its model's vocabulary.
    _, stories, model, tok = setup
    bad = tmp_path / "bad_run"
    bad.mkdir()
    cfg = ModelConfig(**{**model.config.__dict__, "vocab_size": tok.vocab_size + 5})
    write_config(bad, cfg)
    tok.save(bad)
    save_checkpoint(bad, 1, GPT(cfg))
    with pytest.raises(UserError, match="vocab"):
        evaluate_loss(LossConfig(run=str(bad), data=(str(stories),)))
    for args in (["--data", str(tmp_path / "missing.txt")], []):
        res = subprocess.run([sys.executable, "-m", "tinystories", "eval", "loss", "--run", str(run), *args],
                             capture_output=True, text=True)
        assert res.returncode == 2, res.stderr
        assert res.stderr.count("\n") == 1 and res.stderr.startswith("tinystories: error:")


def test_unseparated_txt_is_refused_and_separator_splits_it(setup, tmp_path, capsys):
    """A big .txt without <|endoftext|> is not silently one story; --separator says how to cut it."""
    from tinystories.cli import main

    run, stories, _, _ = setup
    reference = evaluate_loss(LossConfig(run=str(run), data=(str(stories),), write=False))
    copies = 40  # 5 stories x 40 > 16 KB
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n".join(STORIES * copies) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"no <\|endoftext\|> separators.*200 blocks between empty lines.*--separator"):
        evaluate_loss(LossConfig(run=str(run), data=(str(blank),), write=False))
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "loss", "--run", str(run), "--data", str(blank), "--no-write"])
    assert exit_info.value.code == 2 and capsys.readouterr().err.count("\n") == 1

    lines = tmp_path / "lines.txt"
    lines.write_text("\r\n".join(STORIES * copies), encoding="utf-8")
    custom = tmp_path / "custom.txt"
    custom.write_text("\n===\n".join(STORIES * copies), encoding="utf-8")
    for path, sep in ((blank, "blank"), (lines, "line"), (custom, "\\n===\\n")):
        got = evaluate_loss(LossConfig(run=str(run), data=(str(path),), separator=sep, max_stories=5, write=False))
        assert got["stories"] == 5 and got["tokens"] == reference["tokens"] and got["bytes"] == reference["bytes"]
        assert got["per_story"]["loss"] == pytest.approx(reference["per_story"]["loss"], rel=1e-6)
    whole = evaluate_loss(LossConfig(run=str(run), data=(str(blank),), separator="none", write=False))
    assert whole["stories"] == 1
    # Small files and separated files are read as before.
    small = tmp_path / "small.txt"
    small.write_text(STORIES[0], encoding="utf-8")
    assert evaluate_loss(LossConfig(run=str(run), data=(str(small),), write=False))["stories"] == 1
