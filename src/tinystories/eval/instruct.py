"""`tinystories eval instruct`: how well an Instruct model follows instructions (paper §3, Fig. 5).

An instruction set is a TinyStories-Instruct entry without its story: some of
`Features:`, `Words:`, `Random sentence:`, `Summary:`, then an empty `Story:`
(`sets/instructions.jsonl` holds 50 written for this project; `--sets` takes
another JSONL of `{"id", "instruct"}` lines). The model reads the entry as it
read Instruct records in training (`[eot]` + text up to `Story:`) and writes K
stories per set at temperature 1.

Automatic checks run on every story: each required word present in some
inflected form (the lexicon's forms, as the synth word check), and the
required sentence present (case, spacing and quote style ignored). With
`--judge-model`, the paper's instruct grading conversation adds Grammar,
Creativity, Consistency with the instructions and Plot. Rates and means come
with 95% intervals from a bootstrap over instruction sets.

With `--data`, the sets are first checked against a training corpus: a set
whose sentence or summary occurs there, or whose three words are those of a
training entry, is reported as seen in training.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinystories.data.instruct import parse_instruct, sentences
from tinystories.data.stories import iter_records
from tinystories.errors import UserError
from tinystories.eval.judge import (
    ALL_FIELDS,
    GradedOptions,
    Task,
    bootstrap_mean,
    bootstrap_record,
    check_command,
    complete_for,
    grade_all,
    json_lines,
    judge_settings,
    model_info,
    read_json,
    sampling_record,
    set_hash,
    summarize_grades,
)
from tinystories.eval.paper_table import judge_differs, render_table, run_row
from tinystories.io import atomic_write_json
from tinystories.rundir import load_run, with_device
from tinystories.synth.checks import story_words
from tinystories.synth.lexicon import FEATURES, load_lexicon
from tinystories.synth.stats import read_corpus

BUILTIN_SETS = Path(__file__).parent / "sets" / "instructions.jsonl"

# The paper's instruct grading prompt (arXiv 2305.07759v2, Fig. 5), with its "[...]" parts filled in.
# The features sentence is not in the paper's example; it uses the feature phrases of the story prompt.
INSTRUCT_ASSESS = (
    "Your task is to evaluate the performance of a student. The student is given the following exercise:\n"
    "{exercise}\n"
    "The student wrote the following story: {story}\n"
    "Please provide your general assessment about the story written by the student. Is it gramatically "
    "correct? Is it consistent with the requirements in the exercise?"
)
INSTRUCT_FORMAT = "Grammar: x/10, Creativity: x/10, Consistency: x/10, Plot: x/10, Age group: x"
INSTRUCT_GRADE = (
    "Now, grade the story in terms of grammar, creativity, consistency with the instructions and whether the "
    "plot makes sense. Moreover, please provide your best guess of what the age of the student might be, as "
    "reflected from the completion. Choose from possible age groups: A: 3 or under. B: 4-5. C: 6-7. D: 8-9. "
    "E: 10-12. F: 13-16. Use the following grade format: " + INSTRUCT_FORMAT + "."
)


@dataclass
class InstructEvalConfig(GradedOptions):
    """`tinystories eval instruct`: instruction following of an Instruct model (automatic checks, optional judge)."""

    sets: str = ""
    """Instruction sets (JSONL of {"id", "instruct"} entries ending in 'Story:'); default: the built-in 50."""
    data: tuple[str, ...] = ()
    """Training corpus (story files or a synth folder) to check the sets against; default: no check."""
    lexicon: str = ""
    """Lexicon TSV whose inflections count as the required words (default: the shipped one)."""


# --- instruction sets --------------------------------------------------------------------------------


def read_sets(path: str | os.PathLike | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Instruction sets (id, prompt text, words, sentence, features, summary) and a description of the file."""
    p = Path(path) if path else BUILTIN_SETS
    if not p.is_file():
        raise UserError(f"no instruction-set file at {p}")
    sets = []
    for where, obj in json_lines(p, p.read_text(encoding="utf-8")):
        text = obj.get("instruct") if isinstance(obj, dict) else None
        if not isinstance(text, str):
            raise UserError(f"{where}: expected an object with an 'instruct' string")
        rec = parse_instruct(text)  # UserError without a Story: field
        if rec.story:
            raise UserError(
                f"{where}: an instruction set ends with an empty 'Story:' (the model writes the story)"
            )
        if not rec.order:
            raise UserError(f"{where}: no instructions (Features, Words, Random sentence or Summary)")
        sets.append(
            {
                "id": str(obj.get("id", where.rsplit(":", 1)[1])),
                # The model's prompt: the entry up to and including "Story:", as in training records.
                "prompt": text.rstrip(),
                "words": rec.words,
                "sentence": rec.random_sentence,
                "features": rec.features,
                "summary": rec.summary,
            }
        )
    if not sets:
        raise UserError(f"{p} holds no instruction sets")
    ids = [s["id"] for s in sets]
    if len(set(ids)) != len(ids):
        raise UserError(f"{p}: instruction-set ids must be unique")
    info = {
        "source": "built-in" if path is None else os.fspath(path),
        "n": len(sets),
        "set_sha256": set_hash([s["prompt"] for s in sets]),
        "label": "built-in" if path is None else "custom",
    }
    return sets, info


def exercise_text(s: dict[str, Any]) -> str:
    """The exercise as the paper words it for the judge ("Write a short story. The story should contain ...")."""
    parts = ["Write a short story."]
    if s["words"]:
        parts.append("The story should contain the words: " + ", ".join(s["words"]) + ".")
    if s["sentence"]:
        parts.append("The story should contain the following sentence: " + _end(s["sentence"]))
    if s["features"]:
        phrases = [FEATURES.get(f, f) for f in s["features"]]
        parts.append("The story should have the following features: " + ", ".join(phrases) + ".")
    if s["summary"]:
        parts.append(
            f"The general plot of the story should be: {_end(s['summary'])} (feel free to expand beyond this "
            "general plot)."
        )
    return " ".join(parts)


def _end(text: str) -> str:
    text = text.strip()
    return text if text[-1:] in ".!?\"'”’" else text + "."


# --- automatic checks ---------------------------------------------------------------------------------


def _normal(text: str) -> str:
    # Case, spacing and quote style do not decide whether a sentence is "present".
    text = text.lower().translate(str.maketrans("’‘“”", "''\"\""))
    return " ".join(text.split())


def sentence_present(story: str, sentence: str) -> bool:
    """Whether `sentence` occurs in `story` (case, spacing, quote style and final punctuation ignored)."""
    want = _normal(sentence).rstrip(".!?\"' ")
    return bool(want) and want in _normal(story)


def missing_words(story: str, words: Sequence[str], lexicon: Any) -> list[str]:
    """Required words that appear in no form (the word or any lexicon inflection) in `story`."""
    used = story_words(story)
    low = story.lower()
    out = []
    for w in words:
        forms = {f.lower() for f in lexicon.forms_of(w.lower())}
        # Words written with a space ("ice cream") are looked for in the text itself.
        if not forms & used and not any(" " in f and f in low for f in forms):
            out.append(w)
    return out


def check_story(story: str, s: dict[str, Any], lexicon: Any) -> dict[str, Any]:
    """The automatic checks of one story against its instruction set."""
    missing = missing_words(story, s["words"], lexicon)
    return {
        "missing_words": missing,
        "words_present": (len(s["words"]) - len(missing)) / len(s["words"]) if s["words"] else None,
        "all_words": not missing if s["words"] else None,
        "sentence": sentence_present(story, s["sentence"]) if s["sentence"] else None,
    }


def summarize_checks(
    checks: Sequence[dict[str, Any]], groups: Sequence[int], n_groups: int, n_boot: int, seed: int
) -> dict[str, Any]:
    """Rates of the automatic checks with bootstrap intervals over instruction sets."""
    out = {}
    for key in ("all_words", "words_present", "sentence"):
        per: list[list[float]] = [[] for _ in range(n_groups)]
        for c, g in zip(checks, groups):
            if c[key] is not None:
                per[g].append(float(c[key]))
        out[key] = bootstrap_mean(per, n_boot, seed)
    return out


# --- contamination -------------------------------------------------------------------------------------


def seen_in_training(sets: Sequence[dict[str, Any]], data: Sequence[str]) -> dict[str, Any]:
    """Which sets' sentence, summary or word triple occur in a training corpus.

    One pass over the corpus: its sentences, summaries and word sets go into
    hash sets, so millions of records cost one read.
    """

    def corpus() -> Iterator[dict[str, Any]]:
        for d in data:
            if (Path(d) / "job.json").is_file():  # a synth job folder: its records, not also its .txt copy
                yield from read_corpus(d)[0]
            else:
                yield from iter_records(d)

    seen_sentences: set[str] = set()
    seen_summaries: set[str] = set()
    seen_words: set[frozenset[str]] = set()
    records = 0
    for rec in corpus():
        records += 1
        text = rec.get("instruct") or rec["story"]
        words, summary = rec.get("words"), rec.get("summary")
        if "Story:" in text:
            parsed = parse_instruct(text)
            text = parsed.story + "\n" + parsed.random_sentence
            words = words or parsed.words
            summary = summary or parsed.summary
        for sent in sentences(text):
            seen_sentences.add(_normal(sent).rstrip(".!?\"' "))
        if summary:
            seen_summaries.add(_normal(summary))
        if words:
            seen_words.add(frozenset(w.lower() for w in words))
    found = []
    for s in sets:
        why = []
        if s["sentence"] and _normal(s["sentence"]).rstrip(".!?\"' ") in seen_sentences:
            why.append("sentence")
        if s["summary"] and _normal(s["summary"]) in seen_summaries:
            why.append("summary")
        if s["words"] and frozenset(w.lower() for w in s["words"]) in seen_words:
            why.append("words")
        if why:
            found.append({"id": s["id"], "found": why})
    return {"data": list(data), "records": records, "seen": found, "absent": len(sets) - len(found)}


# --- the command ------------------------------------------------------------------------------------------


def evaluate_instruct(cfg: InstructEvalConfig) -> dict[str, Any]:
    """Write stories for the instruction sets, check them (and have them graded); writes eval/instruct.json."""
    cfg = with_device(cfg)
    check_command(cfg)
    sets, sets_info = read_sets(cfg.sets or None)
    lexicon = load_lexicon(cfg.lexicon or None)
    contamination = seen_in_training(sets, [os.fspath(d) for d in cfg.data]) if cfg.data else None
    settings = judge_settings(cfg) if cfg.judge_model else None
    loaded = load_run(cfg.run, step=cfg.step, device=cfg.device)
    stories = complete_for(cfg, loaded, [s["prompt"] for s in sets])
    items, groups, checks = [], [], []
    for i, s in enumerate(sets):
        for k, c in enumerate(stories[i]):
            check = check_story(c["text"], s, lexicon)
            items.append({"set": s["id"], "k": k, **c, **check})
            groups.append(i)
            checks.append(check)
    result: dict[str, Any] = {
        "run": os.fspath(cfg.run),
        "step": loaded.step,
        "model": model_info(loaded),
        "sets": sets_info,
        "sampling": sampling_record(cfg, "story k of set i: seed + i * completions + k"),
        "bootstrap": bootstrap_record(cfg, "instruction set"),
        "checks": summarize_checks(checks, groups, len(sets), cfg.bootstrap, cfg.seed),
        # A story cut off by the model's context ("context") may lack words it would have written
        # later: the checks can only be read next to how many were.
        "finish_reasons": dict(Counter(item["finish_reason"] for item in items)),
        "seen_in_training": contamination,
        "judge": None,
    }
    if cfg.judge_model:
        tasks = [
            Task(
                group=i,
                k=k,
                assess=INSTRUCT_ASSESS.format(exercise=exercise_text(s), story=c["text"].strip()),
                grade=INSTRUCT_GRADE,
                fields=ALL_FIELDS,
                format=INSTRUCT_FORMAT,
            )
            for i, s in enumerate(sets)
            for k, c in enumerate(stories[i])
        ]
        cache = cfg.cache or Path(cfg.run) / "eval" / "instruct_cache.sqlite"
        grades, stats = grade_all(tasks, cfg, cache, seed=cfg.seed)
        summary = summarize_grades(grades, ALL_FIELDS, len(sets), cfg.bootstrap, cfg.seed)
        result["judge"] = {
            **(settings or {}),
            "scores": {f: summary[f] for f in ALL_FIELDS},
            "parse": summary["parse"],
            "age_groups": summary["age_groups"],
            "cost": stats,
            "templates": {"assess": INSTRUCT_ASSESS, "grade": INSTRUCT_GRADE},
            # The paper's instruct set was not released: ours is never the same set.
            "not_comparable": [
                w
                for w in (
                    judge_differs(cfg.judge_model),
                    f"{sets_info['label']} instruction sets (the paper's 50 were not released)",
                    f"temperature {cfg.temperature:g} (paper: 1)" if cfg.temperature != 1.0 else None,
                )
                if w
            ],
        }
        for item, g in zip(items, grades):
            item.update(
                {k: g[k] for k in ("scores", "age_group", "complete", "reasks", "assessment", "answers")}
            )
        result["table"] = render_table(
            [run_row(cfg.run, read_json(Path(cfg.run) / "eval" / "judge.json"), result)]
        )
        print(result["table"], file=sys.stderr)
    result["items"] = items
    if cfg.write:
        atomic_write_json(Path(cfg.run) / "eval" / "instruct.json", result)
    return {k: v for k, v in result.items() if k not in ("items", "table")}
