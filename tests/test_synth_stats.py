"""`synth stats` (with --estimate), `synth dedup` and `synth instruct` on corpora made through the fake server."""

from __future__ import annotations

import json
import random

import pytest

from fake_llm_server import FakeServer
from tinystories.cli import run
from tinystories.data.instruct import parse_instruct
from tinystories.errors import UserError
from tinystories.synth.generate import SynthConfig, synth
from tinystories.synth.instruct import InstructConfig, clean_summary, instruct
from tinystories.synth.stats import DedupConfig, StatsConfig, dedup, stats


@pytest.fixture(scope="module")
def server():
    s = FakeServer()
    s.url = s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def corpus(server, tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    server.faults.extend(["meta", "truncate"])
    synth(SynthConfig(n=40, out=str(out), model="gpt-4o-mini", base_url=server.url, progress=False, seed=2))
    return out


def _lines(p):
    return [json.loads(x) for x in p.read_text().splitlines()]


def test_stats_and_estimate(corpus, capsys):
    s = stats(StatsConfig(data=str(corpus), estimate=True))
    recs = _lines(corpus / "stories_0000.jsonl")
    rejects = _lines(corpus / "rejects_0000.jsonl")
    assert s["stories"] == len(recs) and s["rejected_attempts"] == len(rejects) == 2
    assert s["reject_reasons"] == {"refusal or meta-answer": 1, "truncated (hit max_tokens)": 1}
    assert s["sources"] == {"gpt-4o-mini": len(recs)}
    paid = [*recs, *rejects]
    completion = sum(r["usage"]["completion_tokens"] for r in paid) / len(recs)
    assert s["tokens_per_story"]["measured"] and s["tokens_per_story"]["completion"] == round(completion, 1)
    assert s["cost_so_far_usd"] == pytest.approx(sum(r["cost_usd"] for r in paid), abs=1e-6)
    # the meta answer still has its words, the truncated one lost them
    assert s["word_inclusion_rate"] == pytest.approx((len(paid) - 1) / len(paid), abs=1e-3)
    assert set(s["feature_frequencies"]) >= {
        "Dialogue",
        "BadEnding",
        "MoralValue",
        "Twist",
        "Foreshadowing",
        "Conflict",
    }
    top = dict(s["most_common_nouns"])
    assert top["park"] >= len(recs)  # every fake story is set in the park
    assert 0 < s["lexicon_coverage"]["noun"] < 1
    est = s["estimate"]
    assert est["stories"] == 2_119_719 and len(est["usd_by_model"]) >= 2
    per = est["prompt_tokens_per_story"] * 0.15 + est["completion_tokens_per_story"] * 0.60
    assert est["usd_by_model"]["gpt-4o-mini"] == pytest.approx(2_119_719 * per / 1e6, rel=1e-3)
    # the CLI prints the same as JSON
    run(["synth", "stats", "--data", str(corpus), "--estimate", "--models", "gpt-4o-mini,gpt-4o"])


def test_stats_on_procedural_corpus_estimates_tokens(tmp_path):
    synth(SynthConfig(n=30, out=str(tmp_path), backend="procedural"))
    s = stats(StatsConfig(data=str(tmp_path), estimate=True))
    assert s["stories"] == 30 and not s["tokens_per_story"]["measured"]
    assert s["word_inclusion_rate"] == 1.0 and s["duplicate_rate"] == 0.0
    with pytest.raises(UserError, match="no price"):
        stats(StatsConfig(data=str(tmp_path), estimate=True, models="my-model"))
    with pytest.raises(UserError, match="no such"):
        stats(StatsConfig(data=str(tmp_path / "nope")))


def test_dedup(tmp_path):
    rng = random.Random(0)
    vocab = [
        "cat",
        "dog",
        "sun",
        "tree",
        "ball",
        "girl",
        "boy",
        "park",
        "red",
        "big",
        "run",
        "jump",
        "sing",
        "eat",
        "happy",
        "sad",
        "cake",
        "rain",
        "box",
        "hat",
    ]
    recs = [{"index": i, "story": " ".join(rng.choice(vocab) for _ in range(120))} for i in range(3)]
    recs.append({"index": 3, "story": recs[1]["story"]})
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in recs))
    res = dedup(DedupConfig(data=str(src), out=str(tmp_path / "out")))
    assert res["dropped"] == 1 and res["kept"] == 3
    assert _lines(tmp_path / "out" / "duplicates.jsonl")[0]["duplicate_of"] == 1
    assert stats(StatsConfig(data=str(src)))["duplicate_rate"] == 0.25


def test_instruct_with_llm_summaries(server, corpus, tmp_path):
    out = tmp_path / "inst"
    res = instruct(InstructConfig(data=str(corpus), out=str(out), model="gpt-4o-mini", base_url=server.url,
                                  progress=False, ood=True))  # fmt: skip
    recs = _lines(out / "stories_0000.jsonl")
    assert res["records"] == len(recs) and res["without_summary"] == 0
    entries = (out / "stories.txt").read_text().split("\n<|endoftext|>\n")[:-1]
    assert len(entries) == len(recs)
    seen_fields = set()
    for r, e in zip(recs, entries):
        assert r["summary"].startswith("A child plays")
        p = parse_instruct(e)
        assert p.story == r["story"]
        assert not ("Words" in p.order and "Summary" in p.order)  # the OOD rule
        if p.random_sentence:
            assert p.random_sentence in r["story"] and not r["story"].startswith(p.random_sentence)
        seen_fields.update(p.order)
    assert seen_fields == {"Features", "Words", "Random sentence", "Summary"}
    # a second run with --resume asks nothing again
    before = len(server.log)
    instruct(InstructConfig(data=str(corpus), out=str(out), model="gpt-4o-mini", base_url=server.url,
                            progress=False, ood=True, resume=True))  # fmt: skip
    assert len(server.log) == before


def test_instruct_needs_a_model_only_for_missing_summaries(tmp_path, corpus):
    with pytest.raises(UserError, match="no summary"):
        instruct(InstructConfig(data=str(corpus), out=str(tmp_path / "x")))
    synth(SynthConfig(n=10, out=str(tmp_path / "proc"), backend="procedural"))
    res = run(["synth", "instruct", "--data", str(tmp_path / "proc"), "--out", str(tmp_path / "pi")])
    assert res["summaries_requested"] == 0 and res["without_summary"] == 0


def test_clean_summary():
    assert clean_summary("Summary: Tom finds a dog.") == ("Tom finds a dog.", None)
    assert clean_summary("Sure! Tom finds a dog.")[1] == "refusal or meta-answer"
    assert clean_summary("a\nb\nc")[1] == "summary longer than two lines"
    assert clean_summary("  ")[1] == "empty summary"


def test_stats_with_only_rejects(tmp_path):
    (tmp_path / "stories_0000.jsonl").write_text("")
    rej = {"index": 0, "story": "x", "reject": "missing words: cat", "attempt": 0,
           "usage": {"prompt_tokens": 100, "completion_tokens": 50}, "cost_usd": 0.5}  # fmt: skip
    (tmp_path / "rejects_0000.jsonl").write_text(json.dumps(rej) + "\n")
    s = stats(StatsConfig(data=str(tmp_path)))
    assert s["stories"] == 0 and s["acceptance_rate"] == 0.0 and s["reject_reasons"] == {"missing words": 1}
    assert s["tokens_per_attempt"] == {"prompt": 100.0, "completion": 50.0} and s["cost_so_far_usd"] == 0.5
