"""The LLM job engine shared by `synth`, `synth instruct` and `eval judge`: options declared once, the
fields that name a job, and cache keys that still match answers cached before."""

from __future__ import annotations

import argparse
import dataclasses
import time

import pytest

from fake_llm_server import FakeServer
from tinystories.cli import run
from tinystories.config import add_options, build, operational_fields, options_from
from tinystories.eval.instruct import InstructEvalConfig
from tinystories.eval.judge import JudgeConfig, JudgeOptions, Task, _request_seed, grade_all, judge_settings
from tinystories.llm.base import Completion, Request
from tinystories.llm.cache import AnswerCache, cache_key
from tinystories.llm.jobs import LLMOptions
from tinystories.synth.generate import SynthConfig, _job_settings
from tinystories.synth.instruct import InstructConfig

LLM_CONFIGS = (SynthConfig, InstructConfig, JudgeConfig, InstructEvalConfig)


@pytest.fixture
def server():
    s = FakeServer()
    s.url = s.start()
    yield s
    s.stop()


def test_every_llm_command_shares_the_options():
    shared = {f.name for f in dataclasses.fields(LLMOptions)}
    for cls in LLM_CONFIGS:
        assert issubclass(cls, LLMOptions)
        mine = {f.name: f for f in dataclasses.fields(cls)}
        assert shared <= set(mine)
        # A command that redeclares a shared option to change its default keeps its declaration.
        for name in shared:
            base = next(f for f in dataclasses.fields(LLMOptions) if f.name == name)
            assert dict(mine[name].metadata) == dict(base.metadata), (cls.__name__, name)
    # The defaults each command had before the options were shared.
    assert (SynthConfig().backend, InstructConfig().backend, JudgeConfig().backend) == ("auto", "openai", "auto")
    assert (SynthConfig().concurrency, InstructConfig().concurrency, JudgeConfig().concurrency) == (16, 16, 8)
    assert (SynthConfig().max_tokens, InstructConfig().max_tokens, JudgeConfig().judge_max_tokens) == (600, 100, 600)


def _retry_twice(server) -> None:
    server.faults.extend(["500", "500"])


def test_a_new_llm_option_is_one_declaration(server, tmp_path):
    # `retry_max` is declared once, in LLMOptions: synth, synth instruct and the judge all take --retry-max
    # and honour it. With a first wait of 30 s, two retries would take ~45 s on average without the cap.
    fast = ["--retry-base", "30", "--retry-max", "0.05", "--no-progress"]
    corpus = tmp_path / "corpus"
    t0 = time.monotonic()
    _retry_twice(server)
    res = run(["synth", "--model", "fake", "--base-url", server.url, "--n", "2", "--out", str(corpus), *fast])
    assert res["stories"] == 2 and [code for *_, code in server.log[:3]] == ["500", "500", "ok"]

    _retry_twice(server)
    asked = len(server.log)
    res = run(["synth", "instruct", "--data", str(corpus), "--out", str(tmp_path / "inst"), "--model", "fake",
               "--base-url", server.url, *fast])  # fmt: skip
    assert res["records"] == 2 and res["without_summary"] == 0 and len(server.log) - asked >= 4

    # The judge through the command line's own path (option parsing, then the library call).
    parser = argparse.ArgumentParser()
    add_options(parser, JudgeConfig)
    argv = ["--judge-model", "fake", "--base-url", server.url, "--reasks", "0", "--concurrency", "1", *fast]
    cfg = build(JudgeConfig, options_from(parser.parse_args(argv), JudgeConfig))
    assert cfg.retry_max == 0.05
    _retry_twice(server)
    grades, stats = grade_all([Task(0, 0, "assess this", "grade it")], cfg, tmp_path / "judge.sqlite")
    assert len(grades) == 1 and stats["requests"] == 2
    assert time.monotonic() - t0 < 20


def test_job_fields_follow_the_field_metadata():
    # job.json of an LLM synth job holds the settings that change its stories, exactly those it held
    # when they were listed by hand, so a job folder written before still resumes and still matches.
    assert set(_job_settings(SynthConfig())) == {
        "backend", "n", "seed", "start", "model", "base_url", "chat", "max_tokens", "temperature", "attempts",
        "min_words", "max_words", "word_check", "template", "lexicon", "word_lists", "features_file", "instruct",
    }  # fmt: skip
    # What only paces, places or pays for a job is declared so, for every command at once.
    pacing = {"api_key_env", "concurrency", "rpm", "tpm", "timeout", "retries", "retry_base", "retry_max",
              "price", "progress"}  # fmt: skip
    for cls in LLM_CONFIGS:
        assert pacing <= operational_fields(cls), cls.__name__
    assert {"out", "budget_usd", "resume"} <= operational_fields(SynthConfig)
    assert {"cache"} <= operational_fields(JudgeConfig)
    # The judge settings a result records: its options that change answers, named without `judge_`.
    settings = judge_settings(JudgeOptions(judge_model="gpt-4o"))
    assert settings == {"backend": "openai", "model": "gpt-4o", "base_url": "", "chat": True, "max_tokens": 600,
                        "temperature": 0.0, "reasks": 2, "format_line": True}  # fmt: skip


class _NoAnswers:
    name = "none"

    async def complete(self, request):
        raise AssertionError("asked a question whose answer is cached")

    async def aclose(self):
        return None


def test_answers_cached_by_the_judge_before_still_count(tmp_path):
    # A cache entry keyed the way the judge always keyed it (namespace, item = group * 1e6 + k, turn).
    path = tmp_path / "judge_cache.sqlite"
    cache = AnswerCache(path)
    namespace = {"task": "judge", "backend": "openai", "model": "gpt-4o", "base_url": ""}
    turns = [([{"role": "user", "content": "assess"}], "Fine."),
             ([{"role": "user", "content": "assess"}, {"role": "assistant", "content": "Fine."},
               {"role": "user", "content": "grade"}], "Grammar: 8/10, Creativity: 7/10, Consistency: 6/10")]  # fmt: skip
    for turn, (messages, answer) in enumerate(turns):
        req = Request(messages=messages, max_tokens=600, temperature=0.0, seed=_request_seed(5, 3, 1, turn))
        cache.put(cache_key(namespace, 3 * 1_000_000 + 1, turn, req), Completion(answer, prompt_tokens=9))
    cache.close()
    opts = JudgeOptions(judge_model="gpt-4o", reasks=0, progress=False)
    [grade], stats = grade_all([Task(3, 1, "assess", "grade")], opts, path, seed=5, client=_NoAnswers())
    assert stats["requests"] == 0 and stats["cached_answers"] == 2
    assert grade["scores"] == {"grammar": 8, "creativity": 7, "consistency": 6, "plot": None}
