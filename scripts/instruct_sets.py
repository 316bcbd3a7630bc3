"""Instruction sets for `eval instruct` from held-out procedural stories: in-distribution and OOD apart.

    python scripts/instruct_sets.py HELDOUT_JOB OUT_FOLDER [--n 50]

Every set asks for the story's three words and one of its sentences. The
in-distribution sets add Features (a combination the OOD training records have);
the OOD sets add the Summary, so Words and Summary come together, which the
training records (`synth instruct --ood`) never do. Writes OUT/id.jsonl and
OUT/ood.jsonl ({"id", "instruct"} per line, ending in "Story:").
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from tinystories.data.instruct import format_instruct
from tinystories.io import atomic_write_text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("job", help="procedural synth job folder of stories not used in training")
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    records = [json.loads(line) for f in sorted(Path(args.job).glob("stories_*.jsonl")) for line in f.read_text(encoding="utf-8").splitlines()]
    rng = random.Random(args.seed)
    for kind, extra in (("id", "Features"), ("ood", "Summary")):
        lines = []
        for i, rec in enumerate(records[: args.n]):
            fields = ["Words", "Random sentence", extra]
            rng.shuffle(fields)
            entry = format_instruct(rec["story"], features=rec["features"], words=rec["words"],
                                    summary=rec["summary"], seed=args.seed, i=i, fields=fields)
            prompt = entry[: entry.index("Story:") + len("Story:")]
            lines.append(json.dumps({"id": f"{kind}-{i:03d}", "instruct": prompt}))
        atomic_write_text(Path(args.out) / f"{kind}.jsonl", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
