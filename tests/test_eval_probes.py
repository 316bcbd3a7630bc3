"""`eval probes`: log-likelihood multiple choice against hand computations (toy model), greedy accept strings,
intervals, the built-in sets as the default, checkpoint curves, an untrained model."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from conftest import write_tiny_run
from tinystories import cli
from tinystories.errors import UserError
from tinystories.eval.probes import (
    BUILTIN_SETS,
    CATEGORIES,
    ProbesConfig,
    accept_outcome,
    byte_normalised,
    continuation_ids,
    evaluate_probes,
    first_sentence,
    greedy_completions,
    last_mentioned,
    most_mentioned,
    option_logprobs,
    outcome,
    probe_model,
    read_probes,
    report,
    rule_outcomes,
    score_items,
    wilson_interval,
)
from tinystories.io import sha256_file
from tinystories.model import GPT, ModelConfig
from tinystories.rundir import save_checkpoint, write_config
from tinystories.synth.lexicon import load_lexicon
from tinystories.synth.probes import make_probes
from tinystories.synth.procedural import story_record

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """A run folder with an untrained model and a BPE tokenizer fit on procedural stories and probes."""
    lex = load_lexicon()
    texts = [story_record(0, i, lex)["story"] for i in range(60)] + [p["prompt"] for p in make_probes(40)]
    return write_tiny_run(tmp_path_factory.mktemp("probes"), texts)


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
    for n in range(1, 200):
        assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0


def test_outcome_and_report_by_hand():
    assert outcome(-1.0, [-2.0, -3.0]) == 1.0
    assert outcome(-2.0, [-2.0, -3.0]) == 0.5
    assert outcome(-3.0, [-2.0]) == 0.0
    items = [
        {"id": "a", "category": "fact", "prompt": "p", "answer": " x", "wrong": [" y"]},
        {"id": "b", "category": "fact", "prompt": "p", "answer": " x", "wrong": [" y", " z"]},
        {"id": "c", "category": "context", "prompt": "p", "answer": " x", "wrong": [" y"]},
        {"id": "proc-1-000003-names", "category": "context", "prompt": "p", "answer": " x", "wrong": [" y"],
         "source": "procedural"},
    ]
    r = report(items, [1.0, 0.0, 0.5, 1.0])
    assert r["n"] == 4 and r["correct"] == 2.5 and r["accuracy"] == 0.625
    assert r["chance"] == pytest.approx((0.5 + 1 / 3 + 0.5 + 0.5) / 4)
    assert r["ci95"] == list(wilson_interval(2.5, 4))
    assert r["by_category"]["fact"]["accuracy"] == 0.5
    assert r["by_category"]["fact"]["chance"] == pytest.approx((0.5 + 1 / 3) / 2)
    assert r["by_category"]["context"]["accuracy"] == 0.75
    assert r["by_kind"] == {"names": r["by_kind"]["names"]} and r["by_kind"]["names"]["n"] == 1
    assert r["by_source"]["file"]["n"] == 3 and r["by_source"]["file"]["accuracy"] == 0.5  # no source: a user file
    assert r["by_source"]["procedural"]["accuracy"] == 1.0 and r["by_source"]["procedural"]["chance"] == 0.5


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


# --- a toy model whose scores can be computed by hand ------------------------------------------

TOY_CHARS = ["<eot>", "a", "b", "c", " "]
TOY_EMB = [
    [0.5, -1.0, 0.25, 2.0],
    [1.5, 0.5, -0.5, 0.0],
    [-1.0, 2.0, 1.0, 0.5],
    [0.0, -0.5, 1.5, -1.0],
    [2.0, 1.0, 0.0, -1.5],
]


class ToyTokenizer:
    """One token per character of 'abc '; id 0 is end-of-text."""

    eot_id = 0

    def encode(self, text):
        return [TOY_CHARS.index(ch) for ch in text]

    def decode(self, ids):
        return "".join(TOY_CHARS[i] for i in ids)


def toy_model():
    """A one-layer GPT whose blocks add nothing: logits(next | t) = rmsnorm(E[t]) . E (a bigram model)."""
    cfg = ModelConfig(vocab_size=5, max_seq_len=16, d_model=4, n_layer=1, n_head=1, norm="rms", pos="rope",
                      mlp="swiglu", attn_out_bias=False, mlp_bias=False, tie_embeddings=True)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for name, p in model.named_parameters():
            if "norm" in name or name.startswith("ln") or ".ln" in name:
                p.fill_(1.0)
        model.tok_emb.weight.copy_(torch.tensor(TOY_EMB))
    return model


def hand_logprob(prev, nxt, eps=1e-5):
    """log p(nxt | prev) of the toy model, in plain Python floats."""
    x = TOY_EMB[prev]
    rms = math.sqrt(sum(v * v for v in x) / len(x) + eps)
    logits = [sum(h / rms * e for h, e in zip(x, row)) for row in TOY_EMB]
    top = max(logits)
    log_z = top + math.log(sum(math.exp(v - top) for v in logits))
    return logits[nxt] - log_z


def hand_score(prompt, option):
    ids = [0] + [TOY_CHARS.index(ch) for ch in prompt + option]
    start = 1 + len(prompt)  # the first option token's position in ids
    return sum(hand_logprob(ids[i - 1], ids[i]) for i in range(start, len(ids)))


def test_scores_agree_with_a_hand_computation_on_a_toy_model():
    model, tok = toy_model(), ToyTokenizer()
    items = [
        {"id": "t1", "category": "fact", "prompt": "ca", "answer": " ab", "wrong": [" c", "bba"]},
        {"id": "t2", "category": "context", "prompt": "abc a", "answer": "c", "wrong": ["b ca"]},
        {"id": "t3", "category": "reasoning", "prompt": "b", "answer": "aaa", "wrong": ["c"]},
    ]
    outcomes, scores = score_items(model, tok, items, batch=2)  # two batches, right padding
    for it, o, s in zip(items, outcomes, scores):
        options = [it["answer"], *it["wrong"]]
        want = [hand_score(it["prompt"], opt) for opt in options]
        assert s == pytest.approx(want, abs=1e-5)
        assert o == (1.0 if want[0] > max(want[1:]) else 0.0)
        per_byte = byte_normalised(it, s)
        assert per_byte == pytest.approx([w / len(opt) for w, opt in zip(want, options)], abs=1e-5)
    # The two measures disagree on at least one toy item, so the byte-normalised one is not a copy.
    result = probe_model(model, tok, items, ProbesConfig(batch=2, max_new_tokens=0))
    norm = [r["outcome_byte_normalised"] for r in result["items"]]
    hand_norm = [outcome(p[0], p[1:]) for p in (byte_normalised(it, s) for it, s in zip(items, scores))]
    assert norm == hand_norm and norm != outcomes
    assert result["byte_normalised"]["accuracy"] == pytest.approx(sum(norm) / 3)
    assert result["accuracy"] == pytest.approx(sum(outcomes) / 3)


def test_greedy_completion_follows_the_hand_argmax():
    model, tok = toy_model(), ToyTokenizer()
    item = {"id": "g", "category": "fact", "prompt": "ca", "answer": " b", "wrong": [" c"]}
    text, prev = "", TOY_CHARS.index("a")
    for _ in range(4):
        nxt = max(range(5), key=lambda j: hand_logprob(prev, j))
        if nxt == 0:
            break
        text, prev = text + TOY_CHARS[nxt], nxt
    assert greedy_completions(model, tok, [item], max_new_tokens=4) == [text]
    result = probe_model(model, tok, [item], ProbesConfig(max_new_tokens=4))
    assert result["items"][0]["completion"] == text
    assert result["items"][0]["outcome_greedy"] == accept_outcome(text, item)
    assert result["greedy"]["chance"] is None and result["greedy"]["significant"] is None


def test_accept_strings_and_first_sentence():
    item = {"prompt": "p", "answer": " bed", "wrong": [" lunch", " class"], "accept": ["bed", "sleep"]}
    assert accept_outcome("bed and slept.", item) == 1.0
    assert accept_outcome("Sleeping all night", item) == 1.0  # case-insensitive, a word start
    assert accept_outcome("lunch, then bed", item) == 0.0  # a wrong option came first
    assert accept_outcome("a flowerbed", item) == 0.0  # not at the start of a word
    assert accept_outcome("home.", {"prompt": "p", "answer": " home", "wrong": [" school"]}) == 1.0  # default
    assert first_sentence("bed. Then she dreamed of lunch.") == "bed."
    assert first_sentence('Moo!" said the cow') == "Moo!"
    assert first_sentence("no end") == "no end"


def test_ties_among_several_options_count_by_share():
    assert outcome(1.0, [1.0, 1.0]) == pytest.approx(1 / 3)
    assert outcome(1.0, [1.0, 0.0]) == 0.5
    # A rule that cannot tell three options apart scores chance (1/3), not 1/2.
    items = [{"prompt": "nothing here", "answer": " x", "wrong": [" y", " z"], "category": "fact"}]
    assert rule_outcomes(items, most_mentioned) == [pytest.approx(1 / 3)]


# --- the built-in sets as the default, set hashes, checkpoints ------------------------------------


def test_builtin_sets_are_the_default_and_recorded(untrained):
    run, _, _ = untrained
    result = evaluate_probes(ProbesConfig(run=str(run), max_new_tokens=4))
    assert result["sets"] == {"fact": 48, "reasoning": 46, "context": 48} and result["n"] == 142
    assert set(result["by_category"]) == set(CATEGORIES)
    assert set(result["byte_normalised"]) >= {"accuracy", "ci95", *CATEGORIES}
    assert set(result["greedy"]) >= {"accuracy", "ci95", *CATEGORIES}
    written = json.loads((run / "eval" / "probes.json").read_text())
    for s in written["sets"]:
        assert s["sha256"] == sha256_file(BUILTIN_SETS[s["name"]])
    ckpt = run / "ckpt" / "step_000000"
    assert written["model"]["weights_sha256"] == sha256_file(ckpt / "model.safetensors")
    assert written["model"]["config"]["d_model"] == 32
    assert written["settings"]["max_new_tokens"] == 4 and written["environment"]["torch"] == torch.__version__
    assert len(written["items"]) == 142 and all(i["completion"] is not None for i in written["items"])
    assert set(written["baselines"]) == {"most_mentioned", "last_mentioned", "shortest"}
    # Other sources replace the default; --sets names them together.
    assert evaluate_probes(ProbesConfig(run=str(run), n=10, write=False, max_new_tokens=0))["sets"] == {"procedural": 10}
    both = evaluate_probes(ProbesConfig(run=str(run), sets="context,procedural", n=4, write=False, max_new_tokens=0))
    assert both["sets"] == {"context": 48, "procedural": 4} and both["n"] == 52
    with pytest.raises(UserError, match="unknown probe set"):
        evaluate_probes(ProbesConfig(run=str(run), sets="facts", write=False))


def test_checkpoints_all_gives_a_curve(untrained, tmp_path):
    _, model, tok = untrained
    run = tmp_path / "run"
    run.mkdir()
    write_config(run, model.config)
    tok.save(run)
    save_checkpoint(run, 0, model)
    torch.manual_seed(1)
    save_checkpoint(run, 10, GPT(model.config).eval())
    out = evaluate_probes(ProbesConfig(run=str(run), sets="fact", checkpoints="all", max_new_tokens=2))
    assert [p["step"] for p in out["curve"]] == [0, 10] and out["step"] == 10
    written = json.loads((run / "eval" / "probes.json").read_text())
    first = evaluate_probes(ProbesConfig(run=str(run), sets="fact", step=0, max_new_tokens=2, write=False))
    assert written["curve"][0]["log_likelihood"]["fact"]["accuracy"] == first["by_category"]["fact"]["accuracy"]
    assert written["curve"][1]["log_likelihood"]["accuracy"] == written["accuracy"]
    assert set(written["curve"][0]) == {"step", "tokens", "log_likelihood", "byte_normalised", "greedy"}
    assert (run / "eval" / "probes_curve.png").read_bytes()[:4] == b"\x89PNG" and written["plot"] == "probes_curve.png"
    only = evaluate_probes(ProbesConfig(run=str(run), sets="fact", checkpoints="10", max_new_tokens=0, write=False))
    assert only["step"] == 10 and "curve" not in only
    with pytest.raises(UserError, match="no checkpoint at step"):
        evaluate_probes(ProbesConfig(run=str(run), sets="fact", checkpoints="0,5", write=False))
    with pytest.raises(UserError, match="takes 'all'"):
        evaluate_probes(ProbesConfig(run=str(run), sets="fact", checkpoints="latest", write=False))
    with pytest.raises(UserError, match="not both"):
        evaluate_probes(ProbesConfig(run=str(run), sets="fact", checkpoints="all", step=0, write=False))
