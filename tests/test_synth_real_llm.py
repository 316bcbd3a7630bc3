"""End to end against a real LLM: llama.cpp's OpenAI-compatible server on 127.0.0.1, and the same GGUF in-process.

SmolLM2-135M is far too small to follow the paper's prompt reliably, so these
tests check the plumbing with a real model and a real HTTP API (every item
finishes as a story or as rejects with reasons, usage comes from the server),
not the quality of the stories.
"""

from __future__ import annotations

import json

import pytest

from llm_server import skip_reason, smollm2_gguf
from tinystories.synth.generate import SynthConfig, synth
from tinystories.synth.stats import StatsConfig, stats


def _lines(p):
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def _check_job(out, n, attempts):
    stories = _lines(out / "stories_0000.jsonl")
    rejects = _lines(out / "rejects_0000.jsonl")
    finished = {r["index"] for r in stories} | {r["index"] for r in rejects if r["attempt"] == attempts - 1}
    assert finished == set(range(n))
    for r in [*stories, *rejects]:
        assert r["story"] and r["usage"]["prompt_tokens"] > 50 and r["usage"]["completion_tokens"] > 0
        assert r["prompt"].startswith("Write a short story (3-5 paragraphs)")
    for r in rejects:
        assert r["reject"]
    return stories, rejects


def test_synth_through_a_real_server(llm_server, tmp_path):
    out = tmp_path / "job"
    res = synth(SynthConfig(n=2, out=str(out), model=llm_server.model, base_url=llm_server.base_url,
                            max_tokens=24, attempts=1, concurrency=2, progress=False))  # fmt: skip
    assert res["requests"] == 2 and res["items_left"] == 0
    _, rejects = _check_job(out, 2, 1)
    # 24 tokens cannot hold a 3-5 paragraph story: the server says "length", the check says truncated
    assert all(r["finish_reason"] == "length" and r["reject"].startswith("truncated") for r in rejects)
    assert rejects and all(r["usage"]["completion_tokens"] == 24 for r in rejects)
    # resuming a finished job asks nothing
    again = synth(SynthConfig(out=str(out), resume=True, progress=False))
    assert again["requests"] == 0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_longer_stories_and_stats(llm_server, tmp_path):
    res = synth(SynthConfig(n=2, out=str(tmp_path), model=llm_server.model, base_url=llm_server.base_url,
                            max_tokens=300, attempts=2, progress=False, min_words=30))  # fmt: skip
    assert res["items_left"] == 0
    stories, _ = _check_job(tmp_path, 2, 2)
    if stories:
        s = stats(StatsConfig(data=str(tmp_path), estimate=True))
        assert s["tokens_per_story"]["measured"] and len(s["estimate"]["usd_by_model"]) >= 2


def test_plain_completions_endpoint(llm_server, tmp_path):
    res = synth(SynthConfig(n=1, out=str(tmp_path), model=llm_server.model, base_url=llm_server.base_url,
                            chat=False, max_tokens=24, attempts=1, progress=False))  # fmt: skip
    assert res["items_left"] == 0
    _check_job(tmp_path, 1, 1)


@pytest.mark.skipif(smollm2_gguf() is None or skip_reason() is not None, reason=str(skip_reason()))
def test_local_backend_in_process(tmp_path):
    res = synth(SynthConfig(n=2, out=str(tmp_path), backend="local", model=str(smollm2_gguf()),
                            max_tokens=24, attempts=1, progress=False))  # fmt: skip
    assert res["items_left"] == 0 and res["requests"] == 2
    _check_job(tmp_path, 2, 1)
