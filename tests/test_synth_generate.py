"""`tinystories synth`: shards, determinism, the .txt output and refusing to mix jobs."""

from __future__ import annotations

import json

import pytest

from tinystories.cli import run
from tinystories.data.instruct import parse_instruct
from tinystories.errors import UserError
from tinystories.synth.generate import SynthConfig, synth


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_shards_add_up_to_the_whole_job(tmp_path):
    whole = synth(SynthConfig(n=60, out=str(tmp_path / "all"), seed=3))
    assert whole["stories"] == 60
    a = synth(SynthConfig(n=60, out=str(tmp_path / "sh"), seed=3, shard="0/2"))
    b = synth(SynthConfig(n=60, out=str(tmp_path / "sh"), seed=3, shard="1/2"))
    assert a["stories"] + b["stories"] == 60
    all_recs = _jsonl(tmp_path / "all" / "stories_0000.jsonl")
    parts = _jsonl(tmp_path / "sh" / "stories_0000.jsonl") + _jsonl(tmp_path / "sh" / "stories_0001.jsonl")
    assert sorted(parts, key=lambda r: r["index"]) == all_recs
    txt = (tmp_path / "all" / "stories.txt").read_text()
    assert txt.count("<|endoftext|>\n") == 60
    assert txt.split("\n<|endoftext|>\n")[0] == all_recs[0]["story"]
    assert (tmp_path / "sh" / "stories_0001.txt").is_file()


def test_start_offsets_items(tmp_path):
    synth(SynthConfig(n=10, out=str(tmp_path / "a"), seed=1))
    synth(SynthConfig(n=5, start=5, out=str(tmp_path / "b"), seed=1))
    a = _jsonl(tmp_path / "a" / "stories_0000.jsonl")
    b = _jsonl(tmp_path / "b" / "stories_0000.jsonl")
    assert a[5:] == b


def test_refuses_a_different_job_and_bad_options(tmp_path):
    out = str(tmp_path / "x")
    synth(SynthConfig(n=5, out=out, seed=1))
    synth(SynthConfig(n=5, out=out, seed=1))  # the same job again is fine
    with pytest.raises(UserError, match="different job"):
        synth(SynthConfig(n=5, out=out, seed=2))
    with pytest.raises(UserError, match="not available"):
        synth(SynthConfig(n=5, out=str(tmp_path / "y"), backend="openai"))
    with pytest.raises(UserError, match="K/N"):
        synth(SynthConfig(n=5, out=str(tmp_path / "y"), shard="2"))
    with pytest.raises(UserError, match="0 <= K < N"):
        synth(SynthConfig(n=5, out=str(tmp_path / "y"), shard="2/2"))
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "other.txt").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        synth(SynthConfig(n=5, out=str(tmp_path / "z")))


def test_instruct_records(tmp_path):
    synth(SynthConfig(n=30, out=str(tmp_path), instruct=True))
    recs = _jsonl(tmp_path / "stories_0000.jsonl")
    entries = (tmp_path / "stories.txt").read_text().split("\n<|endoftext|>\n")
    assert len([e for e in entries if e.strip()]) == 30
    for r, e in zip(recs, entries, strict=False):
        assert r["instruct"] == e
        parsed = parse_instruct(e)
        assert parsed.story == r["story"]
        if parsed.words:
            assert parsed.words == r["words"]
        if parsed.summary:
            assert parsed.summary == r["summary"]


def test_cli(tmp_path, capsys):
    result = run(["synth", "--backend", "procedural", "--n", "20", "--out", str(tmp_path / "c")])
    assert result["stories"] == 20
    assert (tmp_path / "c" / "stories.txt").is_file()


def test_procedural_uses_word_lists_lexicon_and_template_and_refuses_features(tmp_path):
    (tmp_path / "v.txt").write_text("zoom\n")
    (tmp_path / "n.txt").write_text("gizmo\n")
    (tmp_path / "a.txt").write_text("fizzy\n")
    lists = ",".join(str(tmp_path / f) for f in ("v.txt", "n.txt", "a.txt"))
    (tmp_path / "t.txt").write_text("Tell a tale with {verb}, {noun} and {adjective}.{features}")
    synth(SynthConfig(n=8, out=str(tmp_path / "w"), word_lists=lists, template=str(tmp_path / "t.txt")))
    recs = _jsonl(tmp_path / "w" / "stories_0000.jsonl")
    for r in recs:
        assert r["words"] == ["zoom", "gizmo", "fizzy"]
        assert r["prompt"].startswith("Tell a tale with zoom, gizmo and fizzy.")
        words = set(r["story"].lower().replace(".", " ").replace(",", " ").split())
        assert {"gizmo", "fizzy"} <= words or "gizmos" in words, r["story"]
    assert json.loads((tmp_path / "w" / "job.json").read_text())["word_lists"] == lists
    # A lexicon file is used too (a one-row-per-class TSV is enough to check it is read).
    lex = tmp_path / "lex.tsv"
    lex.write_text("word\tpos\tforms\tclass\nhop\tverb\thops,hopped,hopping\tintransitive\n"
                   "kite\tnoun\tkites\ttoy\nred\tadjective\t\tcolor\n")
    synth(SynthConfig(n=4, out=str(tmp_path / "l"), lexicon=str(lex)))
    assert {tuple(r["words"]) for r in _jsonl(tmp_path / "l" / "stories_0000.jsonl")} == {("hop", "kite", "red")}
    (tmp_path / "f.tsv").write_text("Rhyme\tthe story should rhyme\n")
    with pytest.raises(UserError, match="features-file is for LLM backends"):
        synth(SynthConfig(n=4, out=str(tmp_path / "f"), features_file=str(tmp_path / "f.tsv")))
    assert not (tmp_path / "f").exists()
    with pytest.raises(UserError, match="lexicon not found"):
        synth(SynthConfig(n=4, out=str(tmp_path / "g"), lexicon=str(tmp_path / "nope.tsv")))
