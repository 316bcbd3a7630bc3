"""`eval probes`: log-likelihood multiple choice against hand computations, intervals, an untrained model."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from tinystories import cli
from tinystories.data.tokenizer import train_bpe
from tinystories.errors import UserError
from tinystories.eval.probes import (
    ProbesConfig,
    continuation_ids,
    evaluate_probes,
    last_mentioned,
    most_mentioned,
    option_logprobs,
    outcome,
    read_probes,
    report,
    rule_outcomes,
    wilson_interval,
)
from tinystories.model import GPT, ModelConfig
from tinystories.run import save_checkpoint, write_config
from tinystories.synth.lexicon import load_lexicon
from tinystories.synth.probes import make_probes
from tinystories.synth.procedural import story_record


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """A run folder with an untrained model and a BPE tokenizer fit on procedural stories and probes."""
    root = tmp_path_factory.mktemp("probes")
    lex = load_lexicon()
    texts = [story_record(0, i, lex)["story"] for i in range(60)] + [p["prompt"] for p in make_probes(40)]
    tok = train_bpe(texts, 400)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, max_seq_len=128, d_model=32, n_layer=2, n_head=4)
    model = GPT(cfg).eval()
    run = root / "run"
    run.mkdir()
    write_config(run, cfg)
    tok.save(run)
    save_checkpoint(run, 0, model)
    return run, model, tok


def test_wilson_interval_by_hand():
    # 8 of 10, z = 1.96: centre (0.8 + z^2/20) / (1 + z^2/10), half-width z sqrt(0.016 + z^2/400) / (1 + z^2/10).
    z = 1.959963984540054
    d = 1 + z * z / 10
    centre = (0.8 + z * z / 20) / d
    half = z * math.sqrt(0.8 * 0.2 / 10 + z * z / 400) / d
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(centre - half) and high == pytest.approx(centre + half)
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)  # the textbook value for 8/10
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_outcome_and_report_by_hand():
    assert outcome(-1.0, [-2.0, -3.0]) == 1.0
    assert outcome(-2.0, [-2.0, -3.0]) == 0.5
    assert outcome(-3.0, [-2.0]) == 0.0
    items = [
        {"id": "a", "category": "fact", "prompt": "p", "answer": " x", "wrong": [" y"]},
        {"id": "b", "category": "fact", "prompt": "p", "answer": " x", "wrong": [" y", " z"]},
        {"id": "c", "category": "context", "prompt": "p", "answer": " x", "wrong": [" y"]},
        {"id": "proc-1-000003-names", "category": "context", "prompt": "p", "answer": " x", "wrong": [" y"]},
    ]
    r = report(items, [1.0, 0.0, 0.5, 1.0])
    assert r["n"] == 4 and r["correct"] == 2.5 and r["accuracy"] == 0.625
    assert r["chance"] == pytest.approx((0.5 + 1 / 3 + 0.5 + 0.5) / 4)
    assert r["ci95"] == list(wilson_interval(2.5, 4))
    assert r["by_category"]["fact"]["accuracy"] == 0.5
    assert r["by_category"]["fact"]["chance"] == pytest.approx((0.5 + 1 / 3) / 2)
    assert r["by_category"]["context"]["accuracy"] == 0.75
    assert r["by_kind"] == {"names": r["by_kind"]["names"]} and r["by_kind"]["names"]["n"] == 1


def test_context_rules_sit_at_chance_on_procedural_probes():
    items = make_probes(200, seed=3)
    for rule in (most_mentioned, last_mentioned):
        acc = sum(rule_outcomes(items, rule)) / len(items)
        assert acc == pytest.approx(0.5, abs=0.05)
    # ... while they do read the context: a rule that knows the answer's mentions is not blind.
    assert most_mentioned("a cat and a cat and a dog", " cat") == 2
    assert last_mentioned("a cat and a dog", " dog") > last_mentioned("a cat and a dog", " cat")


def test_option_logprobs_equal_a_plain_forward(untrained):
    _, model, tok = untrained
    items = make_probes(6, seed=5)
    pairs = [continuation_ids(tok, it["prompt"], o) for it in items for o in (it["answer"], *it["wrong"])]
    got = option_logprobs(model, pairs, batch=4, device="cpu")  # several batches, right padding
    for (ctx, cont), score in zip(pairs, got):
        seq = torch.tensor([ctx + cont])
        with torch.no_grad():
            logp = torch.log_softmax(model(seq[:, :-1]).logits[0].float(), dim=-1)
        want = sum(float(logp[len(ctx) - 1 + j, cont[j]]) for j in range(len(cont)))
        assert score == pytest.approx(want, abs=1e-4)
    # The option is tokenized as in running text, after [eot] + the context.
    ctx, cont = continuation_ids(tok, "The grass was", " green")
    assert ctx[0] == tok.eot_id and tok.decode(ctx[1:]) == "The grass was" and tok.decode(cont) == " green"


def test_untrained_model_is_not_above_chance(untrained):
    run, _, _ = untrained
    result = evaluate_probes(ProbesConfig(run=str(run), n=200, seed=1))
    assert result["n"] == 200 and result["chance"] == 0.5
    # The bar: chance + 15 points with the interval's lower end above chance. Not met untrained.
    assert not (result["accuracy"] >= result["chance"] + 0.15 and result["ci95"][0] > result["chance"])
    assert abs(result["accuracy"] - 0.5) < 0.1
    written = json.loads((run / "eval" / "probes.json").read_text())
    assert written["accuracy"] == result["accuracy"] and len(written["items"]) == 200
    assert set(written["by_category"]) == {"fact", "reasoning", "context"}
    assert set(written["by_kind"]) == {"possession", "names", "elimination", "cause", "color"}
    assert written["baselines"]["most_mentioned"]["accuracy"] == pytest.approx(0.5, abs=0.05)


def test_probe_file_and_its_mistakes(untrained, tmp_path):
    run, model, tok = untrained
    good = tmp_path / "probes.jsonl"
    items = [
        {"id": "q1", "category": "fact", "prompt": "The sky was", "answer": " blue", "wrong": [" green", " red"]},
        {"id": "q2", "category": "context", "prompt": "Tom had a ball.", "answer": " Tom", "wrong": [" Sue"]},
    ]
    good.write_text("".join(json.dumps(i) + "\n" for i in items))
    out = cli.run(["eval", "probes", "--run", str(run), "--probes", str(good), "--no-write"])
    assert out["n"] == 2 and out["chance"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    # The scores are the model's: recompute item 1's outcome by hand.
    pairs = [continuation_ids(tok, items[0]["prompt"], o) for o in (items[0]["answer"], *items[0]["wrong"])]
    s = option_logprobs(model, pairs, 8, "cpu")
    assert out["by_category"]["fact"]["accuracy"] == outcome(s[0], s[1:])


def test_bad_probe_files(tmp_path):
    item = {"id": "q1", "category": "fact", "prompt": "The sky was", "answer": " blue", "wrong": [" green"]}
    for line, message in [
        ("not json", "not JSON"),
        ('{"category": "fact", "prompt": "p", "answer": " a", "wrong": []}', "wrong"),
        ('{"category": "nonsense", "prompt": "p", "answer": " a", "wrong": [" b"]}', "category"),
        ('{"category": "fact", "prompt": "p", "answer": " a", "wrong": [" a"]}', "also listed"),
    ]:
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps(item) + "\n" + line + "\n")
        with pytest.raises(UserError, match=message) as e:
            read_probes(bad)
        assert ":2:" in str(e.value)
    with pytest.raises(UserError, match="no probe file"):
        read_probes(tmp_path / "missing.jsonl")
    with pytest.raises(UserError, match="no run folder"):
        evaluate_probes(ProbesConfig(run=str(tmp_path / "nope"), n=2))


def test_cli_error_is_one_line(tmp_path):
    res = subprocess.run([sys.executable, "-m", "tinystories", "eval", "probes", "--run", str(tmp_path / "nope")],
                         capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and res.stderr.startswith("tinystories: error:")
