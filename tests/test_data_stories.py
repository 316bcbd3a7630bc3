"""Story readers: the released .txt quirks, JSONL / all_data JSON / parquet records, clear errors."""

from __future__ import annotations

import json

import pytest

from tinystories.data import stories
from tinystories.data.stories import iter_records, iter_stories, resolve
from tinystories.errors import UserError


def test_real_validation_file(valid_stories):
    got = list(iter_stories(valid_stories))
    assert len(got) == 201
    # The original file starts mid-story with a leading space.
    assert got[0].startswith("Spot. Spot saw the shiny car")
    assert got[1].startswith("Once upon a time, in a big forest, there lived a rhinoceros named Roxy.")
    for s in got:
        assert s == s.strip() and s
        assert "<|endoftext|>" not in s


def test_txt_quirks(tmp_path):
    path = tmp_path / "s.txt"
    path.write_bytes(
        b" Leading space story.\nSecond line.\n<|endoftext|>\n\n"
        b"After a blank line.\n<|endoftext|>\n<|endoftext|>\n   \n<|endoftext|>\n"
        b"Last one, no trailing separator or newline."
    )
    assert list(iter_stories(path)) == [
        "Leading space story.\nSecond line.",
        "After a blank line.",
        "Last one, no trailing separator or newline.",
    ]


def test_txt_chunked_reading_matches_whole(valid_stories, monkeypatch):
    whole = list(iter_stories(valid_stories))
    monkeypatch.setattr(stories, "_CHUNK", 997)  # forces many chunk boundaries, some mid-separator
    assert list(iter_stories(valid_stories)) == whole


def test_txt_utf8_bom_and_unicode(tmp_path):
    path = tmp_path / "u.txt"
    path.write_bytes("\ufeffLéa saw a 🐶.<|endoftext|>Ünïcode ok".encode())
    assert list(iter_stories(path)) == ["Léa saw a 🐶.", "Ünïcode ok"]


@pytest.mark.parametrize("chunk", [1 << 20, 7])
def test_non_utf8_reports_byte_offset(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(stories, "_CHUNK", chunk)
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"Fine story.\n<|endoftext|>\nCaf\xe9 story.\n")
    with pytest.raises(UserError, match=r"not UTF-8.*0xe9 at byte offset 29"):
        list(iter_stories(path))


def test_jsonl_story_and_text_fields(tmp_path):
    path = tmp_path / "r.jsonl"
    lines = [
        {"id": 1, "story": "  One.  ", "source": "procedural"},
        {"text": "Two."},
        {"story": "   "},  # empty after stripping: dropped
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n", encoding="utf-8")
    records = list(iter_records(path))
    assert [r["story"] for r in records] == ["One.", "Two."]
    assert records[0]["id"] == 1 and records[0]["source"] == "procedural"


def test_jsonl_missing_field_names_the_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"story": "ok"}\n{"title": "no story"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"line 2: record has no 'story' or 'text' field"):
        list(iter_records(path))


def test_jsonl_bad_json(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"story": "ok"}\n{"story": \n', encoding="utf-8")
    with pytest.raises(UserError, match=r"line 2: invalid JSON"):
        list(iter_records(path))


def test_all_data_shape(tmp_path):
    # The released TinyStories_all_data shards: a JSON list; the prompt key is literally "prompt:".
    shard = [
        {
            "story": "Lily saw thunder.",
            "instruction": {
                "prompt:": "Write a short story (3-5 paragraphs) ...",
                "words": ["decorate", "thunder", "ancient"],
                "features": ["Dialogue", "BadEnding"],
            },
            "summary": "Lily sees thunder.",
            "source": "GPT-4",
        },
        {
            "story": "Tom ran.",
            "instruction": {"prompt:": "p2", "words": ["run", "dog", "fast"], "features": []},
            "summary": "Tom runs.",
            "source": "GPT-3.5",
        },
    ]
    path = tmp_path / "data00.json"
    path.write_text(json.dumps(shard), encoding="utf-8")
    records = list(iter_records(path))
    assert [r["story"] for r in records] == ["Lily saw thunder.", "Tom ran."]
    first = records[0]
    assert first["prompt"] == "Write a short story (3-5 paragraphs) ..."
    assert first["instruction"]["prompt"] == first["prompt"] and "prompt:" not in first["instruction"]
    assert first["words"] == ["decorate", "thunder", "ancient"]
    assert first["features"] == ["Dialogue", "BadEnding"]
    assert first["summary"] == "Lily sees thunder." and first["source"] == "GPT-4"


def test_json_file_with_json_lines(tmp_path):
    path = tmp_path / "lines.json"
    path.write_text('{"story": "A."}\n{"story": "B."}\n', encoding="utf-8")
    assert list(iter_stories(path)) == ["A.", "B."]


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"text": ["  P one. ", "P two."], "n": [1, 2]}), tmp_path / "a.parquet")
    records = list(iter_records(tmp_path / "a.parquet"))
    assert [r["story"] for r in records] == ["P one.", "P two."]
    assert records[1]["n"] == 2
    pq.write_table(pa.table({"title": ["x"]}), tmp_path / "bad.parquet")
    with pytest.raises(UserError, match=r"no 'story' or 'text' column"):
        list(iter_records(tmp_path / "bad.parquet"))


def test_globs_folders_and_order(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b.txt").write_text("B1<|endoftext|>B2", encoding="utf-8")
    (tmp_path / "d" / "a.jsonl").write_text('{"story": "A1"}\n', encoding="utf-8")
    (tmp_path / "d" / "notes.md").write_text("ignored", encoding="utf-8")
    assert list(iter_stories(tmp_path / "d")) == ["A1", "B1", "B2"]
    assert list(iter_stories([str(tmp_path / "d" / "*.txt"), tmp_path / "d" / "a.jsonl"])) == [
        "B1",
        "B2",
        "A1",
    ]


def test_errors(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        resolve([tmp_path / "nope.txt"])
    with pytest.raises(UserError, match="no files match"):
        resolve([str(tmp_path / "*.txt")])
    (tmp_path / "x.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(UserError, match="unknown format"):
        resolve([tmp_path / "x.csv"])
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(UserError, match="is empty"):
        list(iter_stories(tmp_path / "empty.txt"))
    (tmp_path / "blank.txt").write_bytes(b"\n<|endoftext|>\n  \n")
    with pytest.raises(UserError, match="no stories in"):
        list(iter_stories(tmp_path / "blank.txt"))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(UserError, match="no story files"):
        resolve([tmp_path / "empty_dir"])


def test_hf_without_datasets(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("no datasets")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(UserError, match=r"needs the `datasets` package"):
        list(iter_stories("hf:roneneldan/TinyStories:validation"))


def test_hf_dataset_records(monkeypatch):
    # A stand-in `datasets` module: the reader's side of the contract without a network.
    import sys
    import types

    calls = []

    def load_dataset(name, split):
        calls.append((name, split))
        return [{"text": " From the hub. "}, {"text": ""}, {"text": "Second."}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert list(iter_stories("hf:roneneldan/TinyStories:validation")) == ["From the hub.", "Second."]
    assert list(iter_stories("hf:roneneldan/TinyStories")) == ["From the hub.", "Second."]
    assert calls == [("roneneldan/TinyStories", "validation"), ("roneneldan/TinyStories", "train")]


def test_jsonl_non_utf8_offset(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"story": "ok"}\n{"story": "\xff"}\n')
    with pytest.raises(UserError, match=r"not UTF-8.*0xff at byte offset 27"):
        list(iter_records(path))
