"""LLM synth jobs against a fake OpenAI-compatible server on 127.0.0.1 that the tests control.

Faults (429 with Retry-After, 500s, timeouts, malformed JSON, truncated and
meta answers), the hard budget, determinism and shards, resume after torn
lines and after `kill -9` at random moments, the cache, and the API key
never reaching the disk.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fake_llm_server import FakeServer
from tinystories.cli import run
from tinystories.errors import UserError
from tinystories.llm.cache import AnswerCache
from tinystories.llm.jobs import BudgetExhausted, JobIncomplete
from tinystories.synth.generate import SynthConfig, plan, plan_item, synth
from tinystories.synth.lexicon import load_lexicon, sample_item
from tinystories.synth.prompts import story_prompt

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def server():
    s = FakeServer()
    url = s.start()
    s.url = url
    yield s
    s.stop()


def _cfg(server, out, **kw) -> SynthConfig:
    base = {"model": "fake", "base_url": server.url, "progress": False, "retry_base": 0.01, "concurrency": 4}
    base.update(kw)
    return SynthConfig(out=str(out), **base)


def _lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    text = path.read_text()
    assert text == "" or text.endswith("\n"), f"{path} ends in a torn line"
    return [json.loads(x) for x in text.splitlines()]


def _finished(out: Path, attempts: int = 2, k: int = 0) -> list[int]:
    """Finished item indices: accepted, or rejected at the last attempt."""
    ok = [r["index"] for r in _lines(out / f"stories_{k:04d}.jsonl")]
    last = [r["index"] for r in _lines(out / f"rejects_{k:04d}.jsonl") if r["attempt"] == attempts - 1]
    return ok + last


def test_faults_are_retried_or_rejected(server, tmp_path):
    server.retry_after = "1"
    server.faults.extend(["429", "500", "malformed", "truncate", "meta", "nowords"])
    t0 = time.monotonic()
    res = synth(_cfg(server, tmp_path, n=12, concurrency=1, price="1,2"))
    log = server.log
    # 429 then the retry no sooner than Retry-After (the backoff alone would be ~10 ms)
    assert log[0][2] == "429" and log[1][1] == log[0][1]
    assert log[1][0] - log[0][0] >= 0.95
    assert time.monotonic() - t0 < 20
    rejects = _lines(tmp_path / "rejects_0000.jsonl")
    reasons = [r["reject"] for r in rejects]
    assert reasons[0].startswith("truncated")
    assert reasons[1] == "refusal or meta-answer"
    assert reasons[2].startswith("missing words")
    # item 0: truncate, then meta -> both attempts rejected, kept with reasons, not a story
    assert [r["index"] for r in rejects[:2]] == [0, 0] and [r["attempt"] for r in rejects[:2]] == [0, 1]
    stories = _lines(tmp_path / "stories_0000.jsonl")
    assert sorted(r["index"] for r in stories) == list(range(1, 12))
    assert res["stories"] == 11 and res["items_left"] == 0
    for r in stories:
        assert r["usage"]["completion_tokens"] > 0 and r["finish_reason"] == "stop"
        assert r["cost_usd"] == pytest.approx(
            (r["usage"]["prompt_tokens"] + 2 * r["usage"]["completion_tokens"]) / 1e6
        )
        lowered = r["story"].lower()
        assert all(w in lowered for w in r["words"])
    txt = (tmp_path / "stories.txt").read_text().split("\n<|endoftext|>\n")
    assert txt[0] == stories[0]["story"] if stories[0]["index"] == 1 else True
    assert len([t for t in txt if t.strip()]) == 11


def test_timeouts_are_retried(server, tmp_path):
    server.hang = 20
    server.faults.extend(["hang", "hang"])
    t0 = time.monotonic()
    res = synth(_cfg(server, tmp_path, n=3, concurrency=1, timeout=0.5))
    assert time.monotonic() - t0 < 10
    assert res["stories"] == 3 and len(server.log) == 5


def test_retries_exhausted_leave_items_for_resume(server, tmp_path):
    server.faults.extend(["500"] * 30)
    with pytest.raises(JobIncomplete, match=r"failed after all retries \(last error: HTTP 500.*--resume"):
        synth(_cfg(server, tmp_path, n=4, concurrency=1, retries=2))
    assert len(_finished(tmp_path)) < 4
    res = synth(_cfg(server, tmp_path, n=4, resume=True))
    assert res["items_left"] == 0
    assert sorted(_finished(tmp_path)) == [0, 1, 2, 3]


def test_client_errors_stop_the_job(server, tmp_path):
    server.faults.extend(["status:401"])
    with pytest.raises(UserError, match="HTTP 401"):
        synth(_cfg(server, tmp_path, n=5, concurrency=1))
    assert len(server.log) == 1  # not retried


def test_budget_is_hard_and_resumable(server, tmp_path):
    # ~100 prompt + ~160 completion tokens a story at $1000/1M -> ~$0.26 a story; worst case ~$0.75
    cap = 5.0
    with pytest.raises(BudgetExhausted, match="budget reached"):
        synth(_cfg(server, tmp_path, n=200, concurrency=64, price="1000,1000", budget_usd=cap, max_tokens=300))
    recs = _lines(tmp_path / "stories_0000.jsonl") + _lines(tmp_path / "rejects_0000.jsonl")
    spent = sum(r["cost_usd"] for r in recs)
    assert 0 < spent <= cap
    assert 10 <= len(recs) < 200
    assert spent > cap - 0.75  # stopped only when the next worst case no longer fit
    cache = AnswerCache(tmp_path / "cache_0000.sqlite")
    p, c = cache.token_totals()
    cache.close()
    assert (p + c) * 1000 / 1e6 <= cap + 1e-9  # everything paid for, cached or not, is under the cap
    asked = len(server.log)
    # Later, with more money: finishes without asking again for what was answered.
    res = synth(
        _cfg(server, tmp_path, n=200, concurrency=64, price="1000,1000", budget_usd=1000, resume=True)
    )
    assert res["items_left"] == 0
    idx = _finished(tmp_path)
    assert sorted(idx) == list(range(200))
    assert len(server.log) - asked == 200 - len(recs)
    total = sum(
        r["cost_usd"]
        for r in _lines(tmp_path / "stories_0000.jsonl") + _lines(tmp_path / "rejects_0000.jsonl")
    )
    assert total <= 1000


def test_budget_needs_a_price(server, tmp_path):
    with pytest.raises(UserError, match="no price known"):
        synth(_cfg(server, tmp_path, n=3, budget_usd=1.0))


def test_plan_is_deterministic_and_shards_add_up(server, tmp_path):
    cfg = SynthConfig(n=50, seed=7)
    a, b = list(plan(cfg)), list(plan(cfg))
    assert a == b and len(a) == 50
    assert a != list(plan(SynthConfig(n=50, seed=8)))
    lex = load_lexicon()
    for p in a[:10]:
        assert (p["words"], p["features"]) == tuple(sample_item(7, p["index"], lex))
        assert p["prompt"] == story_prompt(p["words"], p["features"])
    parts = list(plan(SynthConfig(n=50, seed=7, shard="0/2"))) + list(
        plan(SynthConfig(n=50, seed=7, shard="1/2"))
    )
    assert sorted(parts, key=lambda p: p["index"]) == a
    assert plan_item(7, 3, lex, {"A": "x", "B": "y"})[0] == a[3]["words"]
    # the same through real jobs: shard 0/2 + shard 1/2 of one folder == the unsharded job
    synth(_cfg(server, tmp_path / "all", n=20, seed=7))
    synth(_cfg(server, tmp_path / "sh", n=20, seed=7, shard="0/2"))
    synth(_cfg(server, tmp_path / "sh", n=20, seed=7, shard="1/2"))

    def key(rs):
        return sorted((r["index"], r["words"], r["features"], r["prompt"]) for r in rs)

    whole = _lines(tmp_path / "all" / "stories_0000.jsonl")
    halves = _lines(tmp_path / "sh" / "stories_0000.jsonl") + _lines(tmp_path / "sh" / "stories_0001.jsonl")
    assert key(whole) == key(halves) and len(whole) == 20
    assert (tmp_path / "sh" / "stories_0001.txt").is_file()


def test_torn_last_line_is_dropped_on_resume(server, tmp_path):
    synth(_cfg(server, tmp_path, n=10))
    shard = tmp_path / "stories_0000.jsonl"
    lines = shard.read_text().splitlines(keepends=True)
    # a kill mid-write: the last record half there
    shard.write_text("".join(lines[:6]) + lines[6][:40])
    before = len(server.log)
    with pytest.raises(UserError, match="--resume"):
        synth(_cfg(server, tmp_path, n=10))
    res = synth(_cfg(server, tmp_path, n=10, resume=True))
    assert res["items_left"] == 0 and res["cached_answers"] == 4
    assert len(server.log) == before  # the lost records came back from the cache: nothing paid twice
    idx = [r["index"] for r in _lines(shard)]
    assert sorted(idx) == list(range(10))


def test_different_job_and_bad_options(server, tmp_path):
    synth(_cfg(server, tmp_path / "a", n=3))
    with pytest.raises(UserError, match="different job"):
        synth(_cfg(server, tmp_path / "a", n=3, seed=5))
    with pytest.raises(UserError, match="nothing to resume"):
        synth(_cfg(server, tmp_path / "b", n=3, resume=True))
    with pytest.raises(UserError, match="shards"):
        synth(_cfg(server, tmp_path / "a", n=3, resume=True, shard="0/2"))
    with pytest.raises(UserError, match="not available"):
        synth(SynthConfig(out=str(tmp_path / "c"), backend="nonesuch"))
    with pytest.raises(UserError, match="nothing to resume"):
        synth(SynthConfig(out=str(tmp_path / "d"), resume=True))


def test_refused_connection_is_reported(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(JobIncomplete, match="connection failed"):
        synth(SynthConfig(out=str(tmp_path), model="m", base_url=f"http://127.0.0.1:{port}/v1", n=1, retries=1,
                          retry_base=0.01, progress=False))  # fmt: skip


def test_custom_template_features_and_words(server, tmp_path):
    tpl = tmp_path / "tpl.txt"
    tpl.write_text(
        'Tell a story with the verb "{verb}", the noun "{noun}" and the adjective "{adjective}".{features}'
    )
    feats = tmp_path / "feats.tsv"
    feats.write_text("Rhyme\tthe story rhymes\nSpace\tthe story happens in space\n")
    lists = []
    for pos, words in (("v", "jump\nrun\n"), ("n", "cat\nbox\n"), ("a", "red\nbig\n")):
        p = tmp_path / f"{pos}.txt"
        p.write_text(words)
        lists.append(str(p))
    cfg = _cfg(
        server, tmp_path / "out", n=8, template=str(tpl), features_file=str(feats), word_lists=",".join(lists)
    )
    synth(cfg)
    recs = _lines(tmp_path / "out" / "stories_0000.jsonl")
    assert len(recs) == 8
    for r in recs:
        assert r["prompt"].startswith("Tell a story")
        assert r["words"][0] in ("jump", "run") and r["words"][1] in ("cat", "box")
        assert set(r["features"]) <= {"Rhyme", "Space"}
    # resume reads the template and lists back from job.json
    res = synth(SynthConfig(out=str(tmp_path / "out"), resume=True, progress=False))
    assert res["stories"] == 8 and res["requests"] == 0


def test_api_key_never_written(server, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-very-secret-123")
    synth(_cfg(server, tmp_path, n=3, api_key_env="MY_KEY"))
    for p in tmp_path.rglob("*"):
        if p.is_file():
            assert b"sk-very-secret-123" not in p.read_bytes(), p


def test_requests_carry_the_key_and_no_sdk_telemetry(server, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-abc")
    synth(_cfg(server, tmp_path, n=2, api_key_env="MY_KEY"))
    h = server.headers
    assert h["authorization"] == "Bearer sk-abc" and h["content-type"] == "application/json"
    assert not [k for k in h if k.startswith("x-stainless")], h


def test_no_key_without_base_url(monkeypatch, tmp_path):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    with pytest.raises(UserError, match="NO_SUCH_KEY"):
        synth(SynthConfig(out=str(tmp_path), model="gpt-4o-mini", api_key_env="NO_SUCH_KEY", n=2))


def test_cli(server, tmp_path):
    res = run(["synth", "--model", "fake", "--base-url", server.url, "--n", "5", "--out", str(tmp_path),
               "--no-progress", "--no-chat"])  # fmt: skip
    assert res["stories"] == 5
    assert all(p == "/v1/completions" for _, p, _ in server.log)


def _kill_and_resume(server, tmp_path, kills_wanted: int, n: int) -> None:
    """kill -9 a running synth at random points `kills_wanted` times; --resume finishes, each item exactly once."""
    server.delay = 0.03
    rng = random.Random(1234 + kills_wanted)
    out = tmp_path / "job"
    base = [sys.executable, "-m", "tinystories", "synth", "--model", "fake", "--base-url", server.url,
            "--n", str(n), "--out", str(out), "--concurrency", "4", "--no-progress", "--seed", "3"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    shard = out / "stories_0000.jsonl"
    kills = 0
    for round_ in range(kills_wanted):
        cmd = base + (["--resume"] if round_ else [])
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        start = shard.read_bytes().count(b"\n") if shard.exists() else 0
        target = start + rng.randint(1, 15)
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            if shard.exists() and shard.read_bytes().count(b"\n") >= target:
                time.sleep(rng.uniform(0, 0.05))  # somewhere between two writes, or in the middle of one
                break
            time.sleep(0.005)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills == kills_wanted
    res = subprocess.run([*base, "--resume"], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    stories = _lines(shard)
    idx = [r["index"] for r in stories]
    assert len(idx) == len(set(idx)) == n  # every item exactly once
    assert sorted(idx) == list(range(n))
    assert not list(out.glob(".*.tmp"))
    txt = (out / "stories.txt").read_text()
    assert txt.count("\n<|endoftext|>\n") == n
    # nothing re-bought beyond answers in flight at each kill
    assert len(server.log) <= n + kills * 4


def test_kill_9_then_resume(server, tmp_path):
    _kill_and_resume(server, tmp_path, kills_wanted=2, n=60)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_kill_9_at_random_moments_then_resume(server, tmp_path):
    """Five kills at random moments (about 20 s on a quiet 2-core machine: one interpreter start per kill)."""
    _kill_and_resume(server, tmp_path, kills_wanted=5, n=120)
