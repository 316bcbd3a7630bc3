"""TinyStories-Instruct: the one formatter and parser.

The released files put a random subset of four labelled fields before the
story, in random order, one per line, then `Story:` and the story:

    Features: Dialogue, Twist
    Words: decorate, thunder, ancient
    Random sentence: One day, she went to the park.
    Summary: Lily finds a box in the attic.
    Story: Once upon a time, ...

(The paper's example says `Sentence:` and spells features out; the released
files use `Random sentence:` and the CamelCase keys.) The random sentence is
never the story's first sentence. The OOD variant never combines Words with
Summary. The parser takes the fields in any order, including after the story.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from tinystories.errors import UserError
from tinystories.synth.lexicon import item_rng

FIELDS = ("Features", "Words", "Random sentence", "Summary")
_LABEL = re.compile(r"^(Features|Words|Random sentence|Summary|Story) ?:[ \t]?", re.MULTILINE)
_SENT_END = re.compile(r"[.!?][\"']?(?=\s+[\"']?[A-Z])")


@dataclass
class InstructRecord:
    """The parts of one Instruct entry; absent fields are empty."""

    story: str
    features: list[str] = field(default_factory=list)
    words: list[str] = field(default_factory=list)
    random_sentence: str = ""
    summary: str = ""
    order: list[str] = field(default_factory=list)
    """The instruction fields in the order they appeared."""


def sentences(story: str) -> list[str]:
    """Split a story into sentences (end punctuation, closing quote kept, then a capital)."""
    out = []
    for para in story.split("\n"):
        start = 0
        for m in _SENT_END.finditer(para):
            out.append(para[start : m.end()].strip())
            start = m.end()
        if para[start:].strip():
            out.append(para[start:].strip())
    return [x for x in out if x]


def format_instruct(
    story: str,
    *,
    features: Sequence[str] = (),
    words: Sequence[str] = (),
    summary: str = "",
    seed: int = 0,
    i: int = 0,
    ood: bool = False,
    fields: Sequence[str] | None = None,
) -> str:
    """One Instruct entry: a random subset of the fields, in random order, from (seed, i).

    `fields` fixes the fields and their order instead. Fields with nothing to
    say (no words given, a one-sentence story) are left out.
    """
    rng = item_rng(seed, i, "instruct")
    candidates = [s for s in sentences(story)[1:] if len(s.split()) >= 3]
    if fields is None:
        chosen = [f for f in FIELDS if rng.random() < 0.5]
        rng.shuffle(chosen)
        if ood and "Words" in chosen and "Summary" in chosen:
            chosen.remove(rng.choice(("Words", "Summary")))
    else:
        unknown = [f for f in fields if f not in FIELDS]
        if unknown:
            raise UserError(f"unknown Instruct field(s) {unknown}; known: {', '.join(FIELDS)}")
        chosen = list(fields)
        if ood and "Words" in chosen and "Summary" in chosen:
            raise UserError("the OOD variant never combines Words with Summary")
    lines = []
    for f in chosen:
        if f == "Features" and features:
            lines.append("Features: " + ", ".join(features))
        elif f == "Words" and words:
            lines.append("Words: " + ", ".join(words))
        elif f == "Random sentence" and candidates:
            lines.append("Random sentence: " + rng.choice(candidates))
        elif f == "Summary" and summary:
            lines.append("Summary: " + " ".join(summary.split()))
    lines.append("Story: " + story.strip())
    return "\n".join(lines)


def parse_instruct(text: str) -> InstructRecord:
    """Parse one entry (fields in any order, `Story:` anywhere); raises UserError without `Story:`."""
    parts = list(_LABEL.finditer(text))
    if not any(m.group(1) == "Story" for m in parts):
        raise UserError("not a TinyStories-Instruct entry: no 'Story:' field")
    rec = InstructRecord(story="")
    for k, m in enumerate(parts):
        end = parts[k + 1].start() if k + 1 < len(parts) else len(text)
        value = text[m.end() : end].strip()
        label = m.group(1)
        if label == "Story":
            rec.story = value
            continue
        rec.order.append(label)
        if label == "Features":
            rec.features = [x.strip() for x in value.split(",") if x.strip()]
        elif label == "Words":
            rec.words = [x.strip() for x in value.split(",") if x.strip()]
        elif label == "Random sentence":
            rec.random_sentence = value
        else:
            rec.summary = value
    return rec


def eval_sets(records: Sequence[dict], n: int = 50, seed: int = 0) -> dict[str, list[dict[str, str]]]:
    """Instruction sets for `eval instruct` from story records not used in training: {"id": [...], "ood": [...]}.

    Every set asks for the story's words and one of its sentences; the in-distribution
    ("id") sets add its Features, a combination the OOD training records have, and the
    "ood" sets its Summary, so Words come with Summary, which OOD training records never
    do. Each entry is {"id", "instruct"}, the prompt up to and including "Story:".
    """
    short = [r.get("index", k) for k, r in enumerate(records[:n]) if not r.get("summary") or not r.get("words")]
    if short:
        raise UserError(f"{len(short)} held-out stories lack a summary or words (e.g. index {short[0]}); "
                        "the sets need both")
    rng = random.Random(seed)
    out: dict[str, list[dict[str, str]]] = {}
    for kind, extra in (("id", "Features"), ("ood", "Summary")):
        entries = []
        for i, rec in enumerate(records[:n]):
            fields = ["Words", "Random sentence", extra]
            rng.shuffle(fields)
            entry = format_instruct(rec["story"], features=rec.get("features", []), words=rec["words"],
                                    summary=rec["summary"], seed=seed, i=i, fields=fields)
            entries.append({"id": f"{kind}-{i:03d}", "instruct": entry[: entry.index("Story:") + len("Story:")]})
        out[kind] = entries
    return out
