"""`eval instruct`: the built-in instruction sets, the automatic checks on hand-made stories, the
training-corpus check, and the command on a tiny model trained here on procedural Instruct records."""

from __future__ import annotations

import json

import pytest

from conftest import torch_threads
from tinystories.data.instruct import parse_instruct
from tinystories.errors import UserError
from tinystories.eval.instruct import (
    INSTRUCT_ASSESS,
    InstructEvalConfig,
    check_story,
    evaluate_instruct,
    exercise_text,
    missing_words,
    read_sets,
    seen_in_training,
    sentence_present,
)
from tinystories.llm.base import Completion
from tinystories.synth.lexicon import POS, load_lexicon

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def instruct_run(tmp_path_factory):
    """A procedural Instruct corpus, its dataset, and a tiny model trained on it for a few seconds."""
    from tinystories.data.tokenize import TokenizeConfig, tokenize
    from tinystories.synth.generate import SynthConfig, synth
    from tinystories.train import TrainConfig, train

    root = tmp_path_factory.mktemp("instruct")
    with torch_threads(1):
        synth(SynthConfig(n=300, out=str(root / "corpus"), instruct=True, backend="procedural"))
        tokenize(TokenizeConfig(data=(str(root / "corpus" / "stories.txt"),), out=str(root / "data"),
                                vocab_size=400, val_fraction=0.1, workers=1))
        train(TrainConfig(data=str(root / "data"), run=str(root / "run"), seq_len=128, batch_size=8, lr=3e-3,
                          max_steps=60, eval_interval=0, ckpt_interval=0, log_interval=1000, progress=False, seed=3),
              {"d_model": 32, "n_layer": 2, "n_head": 4, "n_kv_head": 2, "max_seq_len": 256})
    return root


# --- the built-in sets ----------------------------------------------------------------------------------


def test_builtin_sets():
    sets, info = read_sets()
    assert len(sets) == info["n"] == 50 and info["label"] == "built-in" and len(info["set_sha256"]) == 64
    lex = load_lexicon()
    assert len({s["sentence"] for s in sets}) == 50 and len({s["id"] for s in sets}) == 50
    for s in sets:
        # words in the lexicon, as [verb, noun, adjective], and a sentence in every set
        assert len(s["words"]) == 3 and all(lex.get(w, pos) for w, pos in zip(s["words"], POS)), s["id"]
        assert s["sentence"] and s["prompt"].endswith("\nStory:")
        assert parse_instruct(s["prompt"]).words == s["words"]
    assert sum(bool(s["summary"]) for s in sets) >= 30 and sum(bool(s["features"]) for s in sets) >= 30
    # the fields come in different orders, as in training records
    assert len({tuple(parse_instruct(s["prompt"]).order) for s in sets}) >= 10


def test_set_file_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    for text, msg in (
        ("{not json", "not JSON"),
        (json.dumps({"id": "a"}), "'instruct' string"),
        (json.dumps({"instruct": "Words: a, b, c"}), "no 'Story:' field"),
        (json.dumps({"instruct": "Words: a, b, c\nStory: Once upon a time."}), "empty 'Story:'"),
        (json.dumps({"instruct": "Story:"}), "no instructions"),
    ):
        bad.write_text(text + "\n")
        with pytest.raises(UserError, match=msg):
            read_sets(bad)
    dup = json.dumps({"id": "x", "instruct": "Words: run, dog, red\nStory:"})
    bad.write_text(dup + "\n" + dup + "\n")
    with pytest.raises(UserError, match="unique"):
        read_sets(bad)


# --- automatic checks ----------------------------------------------------------------------------------------


def test_words_in_any_form():
    lex = load_lexicon()
    story = "Grandma baked bread in two ovens. The kitchen got warmer and warmer."
    assert missing_words(story, ["bake", "oven", "warm"], lex) == []
    assert missing_words("She bakes a pie.", ["bake", "oven", "warm"], lex) == ["oven", "warm"]
    # irregular forms from the lexicon; a part of a longer word does not count
    assert missing_words("Three mice ran and the children ran too.", ["run", "mouse", "child"], lex) == []
    assert missing_words("The warmth was nice.", ["warm"], lex) == ["warm"]
    # a possessive is the word ("The horse's name was Buddy": the procedural engine writes this)
    assert missing_words("The horse's name was Buddy.", ["horse"], lex) == []
    # a word outside the lexicon counts only as written
    assert missing_words("The zorbs were happy.", ["zorb"], lex) == ["zorb"]
    assert missing_words("A zorb was happy.", ["zorb"], lex) == []


def test_sentence_present_ignores_case_spacing_quotes():
    story = "Tom was sad.  the sky was getting   DARKER! He ran home.\nShe said, “Come closer.”"
    assert sentence_present(story, "The sky was getting darker.")
    assert sentence_present(story, 'She said, "Come closer."')
    assert not sentence_present(story, "The sky was getting dark and cold.")
    assert not sentence_present(story, "...")


def test_check_story_by_hand():
    lex = load_lexicon()
    s = {"words": ["plant", "seed", "small"], "sentence": "Every day he gave it a little water."}
    good = "Tim planted a small seed. Every day he gave it a little water. Soon it grew."
    assert check_story(good, s, lex) == {"missing_words": [], "words_present": 1.0, "all_words": True,
                                         "sentence": True}  # fmt: skip
    bad = "Tim had seeds. He was happy."
    assert check_story(bad, s, lex) == {"missing_words": ["plant", "small"], "words_present": 1 / 3,
                                        "all_words": False, "sentence": False}  # fmt: skip
    none = {"words": [], "sentence": ""}
    assert check_story(bad, none, lex) == {"missing_words": [], "words_present": None, "all_words": None,
                                           "sentence": None}  # fmt: skip


def test_exercise_text_is_the_papers():
    s = {"words": ["perform", "cold", "beautiful"], "features": [],
         "sentence": "The cat started to do her trick, but then something unexpected happened.",
         "summary": "A cat performs a new trick for her friends but starts shivering."}  # fmt: skip
    assert exercise_text(s) == (
        "Write a short story. The story should contain the words: perform, cold, beautiful. The story should "
        "contain the following sentence: The cat started to do her trick, but then something unexpected "
        "happened. The general plot of the story should be: A cat performs a new trick for her friends but "
        "starts shivering. (feel free to expand beyond this general plot)."
    )
    s.update(features=["Dialogue"], summary="", sentence="")
    assert exercise_text(s).endswith("the following features: the story should contain at least one dialogue.")
    text = INSTRUCT_ASSESS.format(exercise="E", story="S")
    assert text.startswith("Your task is to evaluate the performance of a student. The student is given")
    assert "\nThe student wrote the following story: S\n" in text


# --- the training-corpus check ----------------------------------------------------------------------------------


def test_seen_in_training(tmp_path):
    sets, _ = read_sets()
    corpus = tmp_path / "train.jsonl"
    records = [
        {"story": "Once there was a cat. " + sets[3]["sentence"] + " The end.", "words": ["x", "y", "z"]},
        {"story": "A story.", "words": list(reversed(sets[7]["words"]))},
        {"story": "Another story.", "summary": sets[1]["summary"].upper()},
        {"story": "Nothing here.", "words": [sets[9]["words"][0], "other", "words"]},
    ]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in records))
    got = seen_in_training(sets, [str(corpus)])
    assert got["records"] == 4 and got["absent"] == 47
    assert {s["id"]: s["found"] for s in got["seen"]} == {
        sets[1]["id"]: ["summary"], sets[3]["id"]: ["sentence"], sets[7]["id"]: ["words"]}  # fmt: skip


# --- the command on a model trained on procedural Instruct records ----------------------------------------------


def test_instruct_eval_on_a_procedural_instruct_model(instruct_run):
    run = instruct_run / "run"
    brief = evaluate_instruct(InstructEvalConfig(run=str(run), completions=2, max_new_tokens=24, bootstrap=500,
                                                 data=(str(instruct_run / "corpus"),)))  # fmt: skip
    result = json.loads((run / "eval" / "instruct.json").read_text())
    assert brief["judge"] is None and result["sets"]["n"] == 50
    # the built-in sets are absent from the procedural training corpus
    assert result["seen_in_training"]["records"] == 300 and result["seen_in_training"]["seen"] == []
    assert len(result["items"]) == 100
    checks = result["checks"]
    for key in ("all_words", "words_present", "sentence"):
        low, high = checks[key]["ci95"]
        assert 0 <= low <= checks[key]["mean"] <= high <= 1 and checks[key]["groups"] == 50
    item = result["items"][0]
    assert item["set"] == "instruct-01" and item["tokens"] <= 24 and isinstance(item["missing_words"], list)
    assert checks["words_present"]["mean"] == pytest.approx(sum(i["words_present"] for i in result["items"]) / 100)
    assert result["sampling"]["completions"] == 2 and result["model"]["n_layer"] == 2
    assert sum(result["finish_reasons"].values()) == 100 and set(result["finish_reasons"]) <= {"stop", "length"}


class ScriptedJudge:
    """Answers an assessment with a sentence and a grading turn with fixed grades."""

    name = "scripted"

    def __init__(self):
        self.first_turns: list[str] = []

    async def complete(self, request):
        if len(request.messages) == 1:
            self.first_turns.append(request.messages[0]["content"])
            return Completion(text="The story is short.", prompt_tokens=300, completion_tokens=5)
        return Completion(text="Grammar: 7/10, Creativity: 6/10, Consistency: 5/10, Plot: 4/10, Age group: B",
                          prompt_tokens=320, completion_tokens=25)  # fmt: skip

    async def aclose(self):
        return None


def test_instruct_eval_with_a_judge(instruct_run, tmp_path, monkeypatch):
    import tinystories.llm.select as select

    judge = ScriptedJudge()
    monkeypatch.setattr(select, "make_client", lambda *a, **k: judge)
    sets = tmp_path / "two.jsonl"
    sets.write_text(
        json.dumps({"id": "a", "instruct": "Words: run, dog, red\nRandom sentence: The dog ran fast.\nStory:"}) + "\n"
        + json.dumps({"id": "b", "instruct": "Summary: A cat naps.\nFeatures: Twist\nStory:"}) + "\n"
    )  # fmt: skip
    run = instruct_run / "run"
    brief = evaluate_instruct(InstructEvalConfig(run=str(run), sets=str(sets), completions=2, max_new_tokens=16,
                                                 judge_model="gpt-4o", price="2.5,10", bootstrap=500,
                                                 progress=False, write=False))  # fmt: skip
    j = brief["judge"]
    assert j["scores"]["consistency"]["mean"] == 5.0 and j["scores"]["plot"]["mean"] == 4.0
    assert j["scores"]["grammar"]["ci95"] == [7.0, 7.0] and j["parse"]["failure_rate"] == 0.0
    assert j["cost"]["requests"] == 8 and j["cost"]["usd_this_run"] == pytest.approx((4 * 620 * 2.5 + 4 * 30 * 10) / 1e6)
    assert j["not_comparable"][0] == "judge gpt-4o (paper: GPT-4)" and "custom instruction sets" in j["not_comparable"][1]
    assert brief["checks"]["sentence"]["groups"] == 1 and brief["checks"]["all_words"]["n"] == 2
    first = judge.first_turns[0]
    assert "The story should contain the words: run, dog, red." in first
    assert "The story should contain the following sentence: The dog ran fast." in first
    assert any("The general plot of the story should be: A cat naps." in t for t in judge.first_turns)
    assert any("something unexpected happens / there is a plot twist" in t for t in judge.first_turns)


def test_stories_cut_by_the_context_are_counted(instruct_run, tmp_path):
    # A prompt that leaves a few tokens of the 256-token context: every story ends there, not at
    # --max-new-tokens, and the summary says so (such stories may lack words they would have had).
    from tinystories.rundir import load_run
    from tinystories.sample import prompt_ids

    tok = load_run(instruct_run / "run").tokenizer
    prompt = "Words: run, dog, red\nRandom sentence: The dog ran.\nStory:"
    while len(prompt_ids(tok, prompt.replace("ran.", "ran and ran."))) < 250:
        prompt = prompt.replace("ran.", "ran and ran.")
    sets = tmp_path / "long.jsonl"
    sets.write_text(json.dumps({"id": "a", "instruct": prompt}) + "\n")
    brief = evaluate_instruct(InstructEvalConfig(run=str(instruct_run / "run"), sets=str(sets), completions=3,
                                                 max_new_tokens=200, bootstrap=100, progress=False, write=False))  # fmt: skip
    assert brief["finish_reasons"] == {"context": 3}


def test_cli_options_reach_the_command(instruct_run, tmp_path, capsys):
    from tinystories import cli

    sets = tmp_path / "one.jsonl"
    sets.write_text(json.dumps({"id": "a", "instruct": "Words: run, dog, red\nStory:"}) + "\n")
    out = cli.run(["eval", "instruct", "--run", str(instruct_run / "run"), "--sets", str(sets), "--completions", "3",
                   "--max-new-tokens", "8", "--bootstrap", "200", "--seed", "5", "--no-write"])  # fmt: skip
    assert out["sampling"]["completions"] == 3 and out["sampling"]["seed"] == 5
    assert out["checks"]["all_words"]["n"] == 3 and out["sets"]["source"] == str(sets)
    with pytest.raises(SystemExit):
        cli.main(["eval", "instruct", "--run", str(instruct_run / "run"), "--sets", str(tmp_path / "none.jsonl")])
    assert "tinystories: error: no instruction-set file at" in capsys.readouterr().err
