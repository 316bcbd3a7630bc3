"""Stories in: the released TinyStories files, JSONL / parquet records, `all_data` JSON, HF datasets.

Inputs are given as paths, globs, folders, or `hf:owner/name[:split]`. Every
reader yields records (dicts with at least `story`, the story text with
surrounding whitespace stripped; empty stories are dropped). Formats by suffix:

- `.txt`: stories separated by `<|endoftext|>` (as in `TinyStories-train.txt`).
- `.jsonl` / `.ndjson`: one JSON object per line with a `story` or `text` field.
- `.json`: a JSON list of records (the released `TinyStories_all_data` shards,
  whose prompt key is literally `"prompt:"`), or JSON lines.
- `.parquet`: a `story` or `text` column.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinystories.data.shards import is_dataset, open_dataset
from tinystories.errors import UserError

SEPARATOR = "<|endoftext|>"
_SEP_BYTES = SEPARATOR.encode()
_CHUNK = 16 << 20

FORMATS = {
    ".txt": "txt",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
}


@dataclass(frozen=True)
class Source:
    """One resolved input: a file with a known format, or a Hugging Face dataset."""

    path: str
    """File path, or `hf:owner/name[:split]`."""
    format: str
    """txt | jsonl | json | parquet | hf."""


def resolve(inputs: Sequence[str | os.PathLike] | str | os.PathLike) -> list[Source]:
    """Expand globs and folders (their story files, sorted) into a list of sources."""
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    sources: list[Source] = []
    for item in inputs:
        text = str(item)
        if text.startswith("hf:"):
            sources.append(Source(text, "hf"))
            continue
        if glob.has_magic(text):
            matches = sorted(glob.glob(os.path.expanduser(text)))
            if not matches:
                raise UserError(f"no files match {text}")
        else:
            matches = [os.path.expanduser(text)]
        for match in matches:
            path = Path(match)
            if path.is_dir():
                found = sorted(p for p in path.rglob("*") if p.is_file() and _format_of(p))
                if not found:
                    raise UserError(f"no story files (.txt, .jsonl, .json, .parquet) in folder {path}")
                sources += [Source(str(p), _format_of(p) or "") for p in found]
            elif path.is_file():
                fmt = _format_of(path)
                if fmt is None:
                    raise UserError(
                        f"unknown format of {path}: expected .txt, .jsonl, .ndjson, .json or .parquet"
                    )
                if path.stat().st_size == 0:
                    raise UserError(f"{path} is empty")
                sources.append(Source(str(path), fmt))
            else:
                raise UserError(f"file not found: {path}")
    if not sources:
        raise UserError("no input stories given")
    return sources


def _format_of(path: Path) -> str | None:
    return FORMATS.get(path.suffix.lower())


def iter_records(inputs: Sequence[str | os.PathLike] | str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Records (dicts with at least `story`) from every input in order."""
    for source in resolve(inputs):
        yield from read_source(source)


def iter_stories(inputs: Sequence[str | os.PathLike] | str | os.PathLike) -> Iterator[str]:
    """Just the story texts from every input in order."""
    for source in resolve(inputs):
        for record in read_source(source):
            yield record["story"]


def corpus_stories(data: Sequence[str | os.PathLike], split: str = "train") -> Iterator[str]:
    """Stories of story files, or the documents of one dataset folder's `split` decoded back to text."""
    if len(data) == 1 and is_dataset(data[0]):
        yield from open_dataset(data[0]).stories(split)
        return
    if any(is_dataset(d) for d in data):
        raise UserError("give either one dataset folder or story files, not both")
    yield from iter_stories(list(data))


def read_source(source: Source) -> Iterator[dict[str, Any]]:
    """Records of one source; a source with no stories at all is an error."""
    reader = {
        "txt": _read_txt,
        "jsonl": _read_jsonl,
        "json": _read_json,
        "parquet": _read_parquet,
        "hf": _read_hf,
    }[source.format]
    if source.format != "hf" and os.path.getsize(source.path) == 0:
        raise UserError(f"{source.path} is empty")
    count = 0
    for record in reader(source.path):
        count += 1
        yield record
    if count == 0:
        raise UserError(f"no stories in {source.path}")


# --- .txt ---------------------------------------------------------------------------


def _decode(data: bytes, path: str, offset: int) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path} is not UTF-8 text (invalid byte 0x{data[e.start]:02x} at byte offset {offset + e.start})"
        ) from None


def _read_txt(path: str) -> Iterator[dict[str, Any]]:
    # Read in chunks and cut at the last separator (ASCII, so never inside a
    # character): the 1.9 GB training file never has to sit in memory whole.
    with open(path, "rb") as f:
        pending = b""
        offset = 0  # file offset of pending[0]
        first = True
        while True:
            block = f.read(_CHUNK)
            data = pending + block
            if first and data.startswith(b"\xef\xbb\xbf"):
                data = data[3:]
                offset = 3
            first = False
            if block:
                cut = data.rfind(_SEP_BYTES)
                if cut < 0:
                    pending = data
                    continue
                cut += len(_SEP_BYTES)
            else:
                cut = len(data)
            text = _decode(data[:cut], path, offset)
            for story in text.split(SEPARATOR):
                story = story.strip()
                if story:
                    yield {"story": story}
            pending = data[cut:]
            offset += cut
            if not block:
                return


# --- JSON records ---------------------------------------------------------------------


def normalize_record(record: Any, where: str) -> dict[str, Any] | None:
    """A record with `story` (from `story` or `text`) and `prompt:` keys renamed to `prompt`.

    The released `all_data` records keep words and features under
    `instruction`; they are copied to top-level `words` / `features` too.
    Returns None for a record whose story is empty.
    """
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(record).__name__}")
    out = {_key(k): v for k, v in record.items()}
    if "story" not in out:
        if "text" not in out:
            raise UserError(f"{where}: record has no 'story' or 'text' field")
        out["story"] = out["text"]
    if not isinstance(out["story"], str):
        raise UserError(f"{where}: 'story' is not a string")
    instruction = out.get("instruction")
    if isinstance(instruction, dict):
        instruction = {_key(k): v for k, v in instruction.items()}
        out["instruction"] = instruction
        for key in ("prompt", "words", "features"):
            if key in instruction and key not in out:
                out[key] = instruction[key]
    out["story"] = out["story"].strip()
    return out if out["story"] else None


def json_lines(
    lines: Iterable[str], where: str, error: str = "{where}:{line}: not JSON ({msg})"
) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each non-blank line of JSON lines; a bad line is a UserError (`error` filled in)."""
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(error.format(where=where, line=line_no, msg=e.msg)) from None
        yield line_no, value


def _key(key: str) -> str:
    return "prompt" if key == "prompt:" else key


def _text_lines(path: str) -> Iterator[str]:
    """The lines of a UTF-8 file; an error names the byte offset of a bad byte."""
    offset = 0
    with open(path, "rb") as f:
        for raw in f:
            yield _decode(raw, path, offset)
            offset += len(raw)


def _read_jsonl(path: str) -> Iterator[dict[str, Any]]:
    for lineno, obj in json_lines(_text_lines(path), path, "{where} line {line}: invalid JSON ({msg})"):
        record = normalize_record(obj, f"{path} line {lineno}")
        if record is not None:
            yield record


def _read_json(path: str) -> Iterator[dict[str, Any]]:
    with open(path, "rb") as f:
        data = f.read()
    text = _decode(data, path, 0)
    stripped = text.lstrip("\ufeff \t\r\n")
    if not stripped.startswith("["):
        # Not a list: treat as JSON lines (some tools write those under .json).
        yield from _read_jsonl(path)
        return
    try:
        records = json.loads(stripped)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: invalid JSON at line {e.lineno} ({e.msg})") from None
    for i, obj in enumerate(records):
        record = normalize_record(obj, f"{path} record {i}")
        if record is not None:
            yield record


def _read_parquet(path: str) -> Iterator[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq  # type: ignore[import-untyped]
    except ImportError:
        raise UserError("reading parquet needs pyarrow: pip install 'tinystories[parquet]'") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise UserError(f"{path} is not a readable parquet file ({_first_line(e)})") from None
    names = set(pf.schema_arrow.names)
    if "story" not in names and "text" not in names:
        raise UserError(f"{path}: no 'story' or 'text' column (columns: {', '.join(sorted(names))})")
    row = 0
    for batch in pf.iter_batches(batch_size=8192):
        for obj in batch.to_pylist():
            record = normalize_record(obj, f"{path} row {row}")
            row += 1
            if record is not None:
                yield record


def _read_hf(spec: str) -> Iterator[dict[str, Any]]:
    name, _, split = spec[3:].partition(":")
    if not name:
        raise UserError(f"{spec}: expected hf:owner/name[:split]")
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        raise UserError(
            f"reading {spec} needs the `datasets` package: pip install 'tinystories[hf]'"
        ) from None
    try:
        ds = datasets.load_dataset(name, split=split or "train")
    except Exception as e:
        raise UserError(f"cannot load {spec}: {_first_line(e)}") from None
    for i, obj in enumerate(ds):
        record = normalize_record(obj, f"{spec} row {i}")
        if record is not None:
            yield record


def _first_line(e: BaseException) -> str:
    """An exception's message cut to one line, for one-line errors."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
