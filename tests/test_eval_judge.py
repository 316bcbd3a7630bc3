"""`eval judge` (GPT-Eval): grade parsing and re-asks, bootstrap intervals, the table, prompt files,
and the whole command against a real LLM server (llama.cpp with SmolLM2-135M)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from tinystories import cli
from tinystories.errors import UserError
from tinystories.eval.judge import (
    REASK,
    STORY_ASSESS,
    JudgeConfig,
    JudgeOptions,
    Task,
    bootstrap_mean,
    comparability,
    evaluate_judge,
    grade_all,
    parse_grade,
    parse_yaml_list,
    read_beginnings,
    render_table,
    summarize_grades,
)
from tinystories.eval.paper_table import PAPER_FIGURE4
from tinystories.llm.base import Completion, LLMError

pytestmark = pytest.mark.usefixtures("one_thread")


class Scripted:
    """An `LLM` that gives recorded answers in order and keeps every conversation it was sent."""

    name = "scripted"

    def __init__(self, answers):
        self.answers = list(answers)
        self.seen: list[list[dict[str, str]]] = []

    async def complete(self, request):
        self.seen.append(request.messages)
        if not self.answers:
            raise LLMError("no more recorded answers", retryable=False)
        return Completion(text=self.answers.pop(0), prompt_tokens=100, completion_tokens=20, model="scripted")

    async def aclose(self):
        return None


# --- parsing -------------------------------------------------------------------------------------------

# Answers as judges write them (several seen from SmolLM2-135M and larger models).
ODD_ANSWERS = [
    # the paper's own example format
    ("Grammar: 8/10, Creativity: 7/10, Consistency: 7/10, Age group: E (10-12)",
     {"grammar": 8, "creativity": 7, "consistency": 7, "age_group": "E"}),
    # half points, markdown, "out of 10", a long preamble that mentions grammar without a grade
    ("The grammar is mostly fine, but the student forgets 2 commas.\n\n**Grammar:** 8.5/10\n"
     "**Creativity** - 6 out of 10\nConsistency with the story's beginning: 9/10.\nAge group: C",
     {"grammar": 8.5, "creativity": 6, "consistency": 9, "age_group": "C"}),
    # a missing field
    ("Grammar: 9/10, Consistency: 4/10. Age group: B.",
     {"grammar": 9, "creativity": None, "consistency": 4, "age_group": "B"}),
    # the format echoed back without numbers (SmolLM2-135M does this)
    ("In terms of grammar: x/10, Creativity: x/10, Consistency: x/10, Age group: x",
     {"grammar": None, "creativity": None, "consistency": None, "age_group": None}),
    # nothing parseable
    ("The student's completion is a perfect example of their exceptional language skills.",
     {"grammar": None, "creativity": None, "consistency": None, "age_group": None}),
    # plain "Label: n" without "/10", an out-of-range score, the age as a range
    ("Grammar: 7\nCreativity: 5\nConsistency: 12/10\nPlot: 6/10\nThe age of the student is probably 6-7.",
     {"grammar": 7, "creativity": 5, "consistency": None, "plot": 6, "age_group": "C"}),
    # a discussion first, the grade line last: the last mention wins
    ("Consistency is weak at first (3/10 for the opening) but the rest is fine.\n"
     "Grammar: 6/10, Creativity: 5/10, Consistency: 7/10, Plot: 5/10, Age group: A",
     {"grammar": 6, "creativity": 5, "consistency": 7, "plot": 5, "age_group": "A"}),
]


@pytest.mark.parametrize(("answer", "expected"), ODD_ANSWERS)
def test_parse_grade_reads_odd_answers(answer, expected):
    got = parse_grade(answer)
    for key, value in expected.items():
        assert got[key] == value, (key, answer)


def test_reasks_then_missing_never_filled_in(tmp_path):
    judge = Scripted([
        # task 0: complete at once
        "Looks fine.", "Grammar: 8/10, Creativity: 7/10, Consistency: 9/10, Age group: C",
        # task 1: a field missing, supplied after one re-ask
        "Some errors.", "Grammar: 6/10, Creativity: 5/10", "Consistency: 4/10",
        # task 2: nothing readable, twice re-asked, then missing
        "Hmm.", "It is a story.", "Grammar: x/10, Creativity: x/10, Consistency: x/10", "Grammar: 9/10",
    ])  # fmt: skip
    tasks = [Task(group=g, k=0, assess=f"assess {g}", grade="grade it") for g in range(3)]
    opts = JudgeOptions(judge_model="scripted", progress=False, concurrency=1)
    grades, stats = grade_all(tasks, opts, tmp_path / "cache.sqlite", client=judge)

    assert [g["reasks"] for g in grades] == [0, 1, 2]
    assert grades[0]["scores"] == {"grammar": 8, "creativity": 7, "consistency": 9, "plot": None}
    assert grades[0]["age_group"] == "C"
    assert grades[1]["complete"] and grades[1]["scores"]["consistency"] == 4 and grades[1]["scores"]["grammar"] == 6
    # the grammar score of task 2 was read, but a grade with fields missing counts as missing as a whole
    assert not grades[2]["complete"]
    assert grades[2]["scores"] == {"grammar": None, "creativity": None, "consistency": None, "plot": None}
    assert grades[2]["partial"]["grammar"] == 9
    assert stats["requests"] == 2 + 3 + 4 and stats["cached_answers"] == 0

    # the conversation: assessment turn, grading turn, each re-ask after the judge's own answer
    conv = judge.seen[-1]
    assert [m["role"] for m in conv] == ["user", "assistant", "user", "assistant", "user", "assistant", "user"]
    assert conv[0]["content"] == "assess 2" and conv[1]["content"] == "Hmm." and conv[2]["content"] == "grade it"
    assert conv[4]["content"] == conv[6]["content"] == REASK.format(format=tasks[2].format)

    summary = summarize_grades(grades, ("grammar", "creativity", "consistency"), 3, 1000, 0)
    assert summary["parse"] == {"graded": 3, "missing": 1, "failure_rate": 1 / 3, "reasks": 3,
                                "answered_after_reask": 1}  # fmt: skip
    assert summary["grammar"]["n"] == 2 and summary["grammar"]["mean"] == pytest.approx(7.0)
    assert summary["age_groups"] == {"C": 1, "missing": 1}

    # a second run takes every answer from the cache and asks nothing
    again, stats2 = grade_all(tasks, opts, tmp_path / "cache.sqlite", client=Scripted([]))
    assert again == grades and stats2["requests"] == 0 and stats2["cached_answers"] == 9


def test_no_reasks_and_failed_requests(tmp_path):
    opts = JudgeOptions(judge_model="scripted", progress=False, reasks=0)
    grades, _ = grade_all([Task(0, 0, "a", "g")], opts, tmp_path / "c.sqlite", client=Scripted(["ok", "no"]))
    assert grades[0]["reasks"] == 0 and not grades[0]["complete"]
    # a judge that stops answering: a clear error, and what it did answer stays cached
    with pytest.raises(UserError, match="1 of 2 gradings failed"):
        grade_all([Task(1, 0, "a", "g"), Task(2, 0, "b", "g")], JudgeOptions(judge_model="s", progress=False,
                  concurrency=1), tmp_path / "c2.sqlite", client=Scripted(["ok", "Grammar: 1/10, Creativity: 1/10, "
                  "Consistency: 1/10"]))  # fmt: skip


# --- statistics --------------------------------------------------------------------------------------------


def test_bootstrap_over_groups_by_hand():
    # Two beginnings: a resample is {a,a}, {a,b}, {b,a} or {b,b} with probability 1/4 each, so the pooled
    # mean is a's mean or b's mean a quarter of the time each: the 2.5% and 97.5% points are those means.
    a, b = [2.0, 4.0], [8.0, 8.0, 8.0, 10.0]
    r = bootstrap_mean([a, b], n_boot=20000, seed=1)
    assert r["mean"] == pytest.approx(40 / 6)  # the mean of all six scores, as the paper averages
    assert r["ci95"] == pytest.approx([3.0, 8.5])
    assert r["n"] == 6 and r["groups"] == 2
    # a beginning without any graded completion carries no information
    assert bootstrap_mean([a, [], b], n_boot=20000, seed=1) == r
    assert bootstrap_mean([[], []])["mean"] is None


def test_bootstrap_resamples_beginnings_not_completions():
    # Ten beginnings whose K completions all get the same score: more completions per beginning add no
    # information, so the interval must not shrink with K (resampling completions would shrink it ~1/sqrt(K)).
    means = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    few = bootstrap_mean([[m] * 2 for m in means], n_boot=20000, seed=3)
    many = bootstrap_mean([[m] * 50 for m in means], n_boot=20000, seed=3)
    assert few["ci95"] == pytest.approx(many["ci95"])
    # and its width matches the normal approximation of the mean of ten: 2 * 1.96 * sd / sqrt(10)
    sd = torch.tensor(means).std(unbiased=False).item()
    assert many["ci95"][1] - many["ci95"][0] == pytest.approx(2 * 1.96 * sd / 10**0.5, rel=0.1)


# --- the table -----------------------------------------------------------------------------------------------


def _row(**kw):
    row = {"model": "ours (step 5)", "hidden": 256, "layers": 4, "eval_loss": None, "creativity": None,
           "grammar": {"mean": 7.5, "ci95": [7.1, 7.9]}, "consistency": None, "instruct": None, "plot": None,
           "judge": "gpt-4o", "prompt_set": "built-in (50)", "comparable": "no: judge gpt-4o (paper: GPT-4)"}  # fmt: skip
    row.update(kw)
    return row


def test_table_layout_like_figure_4():
    text = render_table([_row()])
    lines = text.strip().splitlines()
    cols = [c.strip() for c in lines[0].strip("|").split("|")]
    assert cols[:9] == ["Model", "Hidden", "Layers", "Eval loss", "Creativity", "Grammar", "Consistency",
                        "Instruct", "Plot"]  # fmt: skip
    assert cols[9:] == ["Judge", "Prompt set", "Comparable to the paper"]
    assert all(line.count("|") == len(cols) + 1 for line in lines)
    ours = [c.strip() for c in lines[2].strip("|").split("|")]
    assert ours[5] == "7.50 [7.10, 7.90]" and ours[4] == "–" and ours[9] == "gpt-4o"
    assert ours[11].startswith("no: judge gpt-4o")
    # the paper's rows of the nearest hidden size, with its numbers, then GPT-2-large and GPT-4
    paper = [ln for ln in lines[3:] if ln.startswith("| paper")]
    assert len(paper) == 4 and all("| 256 |" in ln for ln in paper)
    assert "| paper | 256 | 4 | 1.47 | 6.32 | 7.64 | 7.76 | 8.07 | 7.18 | GPT-4 |" in text
    assert "GPT-4, paper | – | – | – | 8.21 | 8.75 | 9.93 | 9.31 | 8.26" in text
    assert text.count("\n") == 2 + 1 + 4 + 2
    assert len(render_table([_row()], "all").strip().splitlines()) == 2 + 1 + len(PAPER_FIGURE4) + 5
    assert len(render_table([_row(hidden=100)], "none").strip().splitlines()) == 3
    with pytest.raises(UserError):
        render_table([_row()], "some")


def test_comparability_labels():
    assert comparability("gpt-4-0613", "released", 10, 1.0) == []
    assert comparability("gpt-4", "released", 10, 1.0) == []
    why = comparability("gpt-4o", "built-in", 3, 0.8)
    assert len(why) == 4 and why[0] == "judge gpt-4o (paper: GPT-4)"
    assert "built-in prompt set" in why[1] and "3 completions" in why[2] and "temperature 0.8" in why[3]


# --- prompt files -----------------------------------------------------------------------------------------------


# Trailing spaces (\x20) as in the released file: after one "|-" and at the end of a beginning.
RELEASED_LAYOUT = """---
- |-
  One day, a fox found a hat. It was too big, so he
- |-\x20\x20
  Tom said, "Look at the sky!"

  Sam looked up and saw that\x20
- "Lily had a \\"red\\" ball and"
- 'It''s raining, so we'
- plain text item
# a comment
- >-
  folded lines
  become one
"""


def test_yaml_list_parser():
    items = parse_yaml_list(RELEASED_LAYOUT)
    assert items == [
        "One day, a fox found a hat. It was too big, so he",
        'Tom said, "Look at the sky!"\n\nSam looked up and saw that ',
        'Lily had a "red" ball and',
        "It's raining, so we",
        "plain text item",
        "folded lines become one",
    ]
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load(RELEASED_LAYOUT) == items
    with pytest.raises(UserError, match=r"<yaml>:1: expected a list item"):
        parse_yaml_list("key: value\n")


def test_builtin_beginnings_stop_mid_sentence():
    beginnings, info = read_beginnings()
    assert info["n"] == len(beginnings) == 50 and info["label"] == "built-in"
    assert len(set(beginnings)) == 50 and len(info["set_sha256"]) == 64
    for b in beginnings:
        # cut mid-sentence: no sentence end (an opened quote waiting for its words is fine)
        assert not re.search(r"[.!?]\"?$", b), b
        assert 60 <= len(b) <= 400


def test_prompt_files(tmp_path):
    y = tmp_path / "Evaluation prompts.yaml"
    released = ["Once upon a time, there lived a bunny in a field. She", *[f"Beginning number {i} and" for i in range(43)]]
    y.write_text("---\n" + "".join(f"- |-\n  {b}\n" for b in released))
    got, info = read_beginnings(y)
    assert got == released and info["label"] == "released" and info["n"] == 44
    j = tmp_path / "mine.jsonl"
    j.write_text(json.dumps("One day the cat") + "\n" + json.dumps({"beginning": "Then the dog "}) + "\n")
    assert read_beginnings(j)[0] == ["One day the cat", "Then the dog"]
    assert read_beginnings(j)[1]["label"] == "custom"
    t = tmp_path / "mine.txt"
    t.write_text("First one, and\n<|endoftext|>\nSecond\ntwo lines, but\n<|endoftext|>\n")
    assert read_beginnings(t)[0] == ["First one, and", "Second\ntwo lines, but"]
    for bad, msg in (("x.csv", "unknown prompt file type"), ("none.yaml", "no prompt file")):
        if bad.endswith("csv"):
            (tmp_path / bad).write_text("a,b\n")
        with pytest.raises(UserError, match=msg):
            read_beginnings(tmp_path / bad)
    (tmp_path / "empty.yaml").write_text("---\n")
    with pytest.raises(UserError, match="no story beginnings"):
        read_beginnings(tmp_path / "empty.yaml")


def test_the_assessment_prompt_is_the_papers():
    text = STORY_ASSESS.format(beginning="There was a loud", completion="noise.")
    assert text.startswith("the following exercise, the student is given a beginning of a story.")
    assert "student´s language abilities" in text and "Is it gramatically correct?" in text
    assert "\nThere was a loud*** noise.\n" in text


def test_command_errors(tiny_run):
    with pytest.raises(UserError, match="--judge-model is required"):
        evaluate_judge(JudgeConfig(run=str(tiny_run)))
    with pytest.raises(UserError, match="--run is required"):
        evaluate_judge(JudgeConfig(judge_model="x"))
    with pytest.raises(UserError, match="--table"):
        evaluate_judge(JudgeConfig(run=str(tiny_run), judge_model="x", table="big"))
    with pytest.raises(UserError, match="--completions"):
        evaluate_judge(JudgeConfig(run=str(tiny_run), judge_model="x", completions=0))
    with pytest.raises(UserError, match="backend 'ollama' is not available"):
        evaluate_judge(JudgeConfig(run=str(tiny_run), judge_model="x", backend="ollama"))
    assert "eval judge" in cli.COMMANDS and "eval instruct" in cli.COMMANDS


# --- end to end against a real LLM server ---------------------------------------------------------------------


def _two_beginnings(tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text('---\n- |-\n  Once upon a time, there was a little duck named Pip. One morning, Pip\n'
                    '- "Mia had a red kite. When she let go of the string, the kite"\n')  # fmt: skip
    return path


def test_judge_end_to_end_with_a_real_server(llm_server, tiny_run, tmp_path):
    # SmolLM2-135M is far too weak to grade reliably: this checks the plumbing with a real model over HTTP
    # (two turns, the answer parsed or counted missing, usage, the cache, the result file). One completion:
    # on one thread of a busy machine llama.cpp reads the ~300-token grading prompt in ~10 s.
    prompts = tmp_path / "one.yaml"
    prompts.write_text("---\n- Mia had a red kite. When she let go of the string, the kite\n")
    cfg = JudgeConfig(run=str(tiny_run), prompts=str(prompts), completions=1, max_new_tokens=8, reasks=0,
                      judge_model=llm_server.model, base_url=llm_server.base_url, judge_max_tokens=8,
                      progress=False, bootstrap=200, concurrency=1, cache=str(tmp_path / "cache.sqlite"))  # fmt: skip
    brief = evaluate_judge(cfg)
    result = json.loads((tiny_run / "eval" / "judge.json").read_text())
    assert brief["prompts"]["n"] == 1 and brief["cost"]["requests"] == 2
    assert result["cost"]["prompt_tokens"] > 300 and result["cost"]["usd_all_answers"] == 0.0
    assert result["judge"]["model"] == "smollm2" and result["judge"]["backend"] == "openai"
    [c] = result["completions"]
    assert c["assessment"] and len(c["answers"]) == 1 and c["tokens"] <= 8 and c["seed"] == cfg.seed
    assert c["complete"] == all(c["scores"][f] is not None for f in ("grammar", "creativity", "consistency"))
    parse = result["parse"]
    assert parse["graded"] == 1 and parse["failure_rate"] == parse["missing"]
    assert "smollm2" in result["table"] and "no: judge smollm2 (paper: GPT-4)" in result["table"]
    assert result["model"]["d_model"] == 32 and len(result["prompts"]["set_sha256"]) == 64
    # the same command again: every answer from the cache
    again = evaluate_judge(cfg)
    assert again["cost"]["requests"] == 0 and again["cost"]["cached_answers"] == 2
    assert again["parse"] == parse


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_judge_with_reasks_on_a_real_server(llm_server, tiny_run, tmp_path):
    cfg = JudgeConfig(run=str(tiny_run), prompts=str(_two_beginnings(tmp_path)), completions=2, max_new_tokens=40,
                      judge_model=llm_server.model, base_url=llm_server.base_url, judge_max_tokens=80,
                      progress=False, bootstrap=500, write=False, cache=str(tmp_path / "cache.sqlite"))  # fmt: skip
    brief = evaluate_judge(cfg)
    parse = brief["parse"]
    assert parse["graded"] == 4
    # every incomplete grade was asked again twice before it was given up
    assert parse["reasks"] >= 2 * parse["missing"]
    assert brief["cost"]["requests"] == 4 * 2 + parse["reasks"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_judge_in_process_with_the_local_backend(tiny_run, tmp_path):
    from llm_server import skip_reason, smollm2_gguf

    if skip_reason():
        pytest.skip(skip_reason())
    prompts = tmp_path / "one.yaml"
    prompts.write_text("---\n- Mia had a red kite. When she let go of the string, the kite\n")
    brief = evaluate_judge(JudgeConfig(run=str(tiny_run), prompts=str(prompts), completions=1, max_new_tokens=8,
                                       reasks=0, backend="local", judge_model=str(smollm2_gguf()),
                                       judge_max_tokens=8, progress=False, bootstrap=200, write=False,
                                       cache=str(tmp_path / "cache.sqlite")))  # fmt: skip
    assert brief["judge"]["backend"] == "local" and brief["cost"]["requests"] == 2
    assert brief["parse"]["graded"] == 1
