"""The hand-written probe sets (size, schema, patterns, lengths, shallow rules at chance) and `eval decontam`."""

from __future__ import annotations

import fnmatch
import json
import tomllib
from pathlib import Path

import pytest

from tinystories import cli
from tinystories.errors import UserError
from tinystories.eval.decontam import DecontamConfig, decontam, default_sets, ngrams, read_items, words
from tinystories.eval.probes import (
    BUILTIN_SETS,
    CATEGORIES,
    LENGTH_TOLERANCE,
    MAX_PATTERN_USES,
    RULES,
    builtin_items,
    lint_items,
    read_probes,
    report,
    rule_outcomes,
    sentence_patterns,
)

ROOT = Path(__file__).resolve().parents[1]


def test_each_category_has_at_least_40_well_formed_items():
    ids = set()
    for cat in CATEGORIES:
        items = read_probes(BUILTIN_SETS[cat])  # the schema check raises on a bad line
        assert len(items) >= 40
        for it in items:
            assert it["category"] == cat and it["id"].startswith(cat + "-") and it["id"] not in ids
            ids.add(it["id"])
            # The answer is accepted; no wrong option is.
            assert it["accept"][0] == it["answer"].strip()
            assert not {w.strip().lower() for w in it["wrong"]} & {a.lower() for a in it["accept"]}
            assert it["source"] == "builtin"


def test_no_sentence_pattern_more_than_five_times_and_lengths_match():
    items = builtin_items()
    assert lint_items(items) == []
    # Stated rules, checked directly too.
    uses: dict[str, int] = {}
    for it in items:
        for p in sentence_patterns(it["prompt"]):
            uses[p] = uses.get(p, 0) + 1
        for w in it["wrong"]:
            assert abs(len(w.encode()) - len(it["answer"].encode())) <= LENGTH_TOLERANCE
    assert max(uses.values()) <= MAX_PATTERN_USES


def test_pattern_rule_and_lint_catch_what_they_should():
    assert sentence_patterns("Tom ran to the hill to fly his") == ["_ to the _ to _ his"]
    assert sentence_patterns('Mia smiled. "Look!" said Ben. She gave the cat a') == ["she _ the _ a"]
    names = ["Tom", "Sue", "Ann", "Max", "Kim", "Leo"]
    same = [{"id": f"x{i}", "prompt": f"{n} ran to the hill to fly his", "answer": " kite", "wrong": [" ball"]}
            for i, n in enumerate(names)]
    assert lint_items(same[:5]) == []
    assert lint_items(same) == ["pattern '_ to the _ to _ his' used 6 times"]
    long = [{"id": "y", "prompt": "p", "answer": " cat", "wrong": [" elephant"]}]
    assert "differ by more than" in lint_items(long)[0]


def test_shallow_rules_stay_near_chance_on_each_set():
    items = builtin_items()
    for name, rule in RULES.items():
        r = report(items, rule_outcomes(items, rule))
        assert abs(r["accuracy"] - r["chance"]) <= 0.03, name
        for cat, s in r["by_category"].items():
            assert abs(s["accuracy"] - s["chance"]) <= 0.06, (name, cat)


def test_sets_ship_as_package_data():
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["tinystories"]
    for path in BUILTIN_SETS.values():
        rel = path.relative_to(ROOT / "src" / "tinystories").as_posix()
        assert any(fnmatch.fnmatch(rel, p) for p in patterns), rel


# --- decontamination -------------------------------------------------------------------------------


def test_ngrams_ignore_case_and_punctuation():
    assert words("Tom's dog, Spot, said \"Woof!\"") == ["tom's", "dog", "spot", "said", "woof"]
    assert ngrams("A b c. D a b c", 3) == [("a", "b", "c"), ("b", "c", "d"), ("c", "d", "a"), ("d", "a", "b")]
    assert ngrams("too short", 6) == []


def test_decontam_finds_an_item_copied_into_the_corpus(tmp_path):
    probes = tmp_path / "probes_x.jsonl"
    items = [
        {"id": "p1", "category": "fact", "prompt": "The old brown owl sat on the branch and looked at the",
         "answer": " moon", "wrong": [" spoon"]},
        {"id": "p2", "category": "fact", "prompt": "Zed the zebra painted seven purple stripes on his new",
         "answer": " wagon", "wrong": [" pillow"]},
    ]
    probes.write_text("".join(json.dumps(i) + "\n" for i in items))
    beginnings = tmp_path / "beginnings.yaml"
    beginnings.write_text("# a comment\n---\n- |-\n  Once upon a time there was a girl who loved red socks\n"
                          "- |-\n  A quiet fox walked alone under the silver winter stars\n")
    text = tmp_path / "notes.txt"
    text.write_text("The cat sat on the warm mat all day.\n\nNothing here matches any story at all today.\n")
    corpus = tmp_path / "stories.txt"
    corpus.write_text(
        "One day, the old brown owl sat on the branch and looked at the moon. It was big.\n<|endoftext|>\n"
        "Once upon a time there was a boy.\n<|endoftext|>\n"
        "Once upon a time there was a dog. The cat sat on the warm mat.\n<|endoftext|>\n"
    )
    out = tmp_path / "report.json"
    r = cli.run(["eval", "decontam", "--data", str(corpus), "--sets", str(probes), str(beginnings), str(text),
                 "--out", str(out)])
    assert r["items"] == 6 and r["corpus"]["stories"] == 3
    hits = {h["id"]: h for h in json.loads(out.read_text())["hits"]}
    # p1: prompt + answer is 13 words, so 8 six-grams, all in story 1.
    assert hits["p1"]["found"] == hits["p1"]["ngrams"] == 8 and hits["p1"]["contaminated"]
    assert "p2" not in hits
    # The shared opening counts twice in the corpus but covers only part of the beginning.
    y = hits["beginnings.yaml:1"]
    assert y["examples"][0] == {"ngram": "once upon a time there was", "count": 2} and not y["contaminated"]
    assert "beginnings.yaml:2" not in hits
    assert hits["notes.txt:1"]["fraction"] == 0.5  # 9 words: 4 six-grams, the first 2 in story 3
    assert r["contaminated"] == 2 and r["with_hits"] == 3
    assert r["by_file"]["probes_x.jsonl"] == {"items": 2, "with_hits": 1, "contaminated": 1,
                                              "sha256": r["by_file"]["probes_x.jsonl"]["sha256"]}


def test_decontam_reads_a_dataset_folder_and_the_default_sets(tmp_path):
    from tinystories.data.tokenize import TokenizeConfig, tokenize

    fact = builtin_items(["fact"])[0]
    stories = tmp_path / "s.txt"
    stories.write_text("".join(f"Story {i}: the sun came up over the hill.\n<|endoftext|>\n" for i in range(30))
                       + fact["prompt"] + fact["answer"] + ".\n<|endoftext|>\n")
    tokenize(TokenizeConfig(data=(str(stories),), out=str(tmp_path / "ds"), vocab_size=300, val_fraction=0.0))
    r = decontam(DecontamConfig(data=(str(tmp_path / "ds"),), show=100))
    assert r["corpus"]["stories"] == 31
    assert [h["id"] for h in r["hits"] if h["contaminated"]] == [fact["id"]]
    assert r["items"] == sum(len(read_items(f)) for f in default_sets())
    assert {f"probes_{c}.jsonl" for c in CATEGORIES} <= set(r["by_file"])


def test_decontam_mistakes(tmp_path):
    with pytest.raises(UserError, match="--data"):
        decontam(DecontamConfig())
    with pytest.raises(UserError, match="no eval set file"):
        decontam(DecontamConfig(data=("x.txt",), sets=(str(tmp_path / "none.jsonl"),)))
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(UserError, match=r"bad.jsonl:1: not JSON"):
        read_items(bad)
    with pytest.raises(UserError, match="threshold"):
        decontam(DecontamConfig(data=("x.txt",), threshold=0))
