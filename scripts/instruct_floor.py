"""What the `eval instruct` figures of the Instruct demo should be read against.

    python scripts/instruct_floor.py OUT [--runs model instruct/model] [--pool 300]

OUT is the folder of the `instruct` recipe (`tinystories pipeline --recipe instruct --out OUT`: the
story model in model/, the held-out stories, the sets and the fine-tuned model in instruct/); --runs
are run folders under OUT. Prints one JSON object:

- ceiling: each set checked against its own held-out story, whole and cut to what fits the
  model's context after the prompt (what a model that follows the instructions perfectly scores);
- chance: each set checked against `--pool` other held-out procedural stories (what a model that
  writes good procedural stories but ignores the instructions scores);
- use: per run, the log-loss of each held-out story after its own instruction set and after the
  next set's (teacher-forced, so it shows a use of the instructions too small to change samples).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tinystories.eval.instruct import check_story, read_sets
from tinystories.rundir import load_run
from tinystories.sample import prompt_ids
from tinystories.synth.lexicon import load_lexicon
from tinystories.synth.procedural import story_record
from tinystories.synth.stats import read_corpus


def rates(checks: list[dict[str, Any]]) -> dict[str, float]:
    keys = ("all_words", "words_present", "sentence")
    return {k: round(statistics.mean(float(c[k]) for c in checks), 4) for k in keys}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--runs", nargs="+", default=["model", "instruct/model"], help="run folders under OUT")
    ap.add_argument("--pool", type=int, default=300, help="other held-out stories for the chance rates")
    args = ap.parse_args()
    out, lex = Path(args.out), load_lexicon()
    torch.set_num_threads(1)
    stories = [r["story"] for r in read_corpus(out / "instruct" / "heldout")[0]]
    # Disjoint from the training stories (0..) and from the sets' stories (1,000,000..).
    pool = [story_record(0, 2_000_000 + i, lex)["story"] for i in range(args.pool)]
    runs = {name: load_run(out / name) for name in args.runs}
    tok = next(iter(runs.values())).tokenizer
    context = next(iter(runs.values())).model.config.max_seq_len
    report: dict[str, Any] = {"context": context, "pool": args.pool}
    for kind in ("id", "ood"):
        sets, _ = read_sets(out / "instruct" / "sets" / f"{kind}.jsonl")
        cut = []
        for s, story in zip(sets, stories):
            room = context - len(prompt_ids(tok, s["prompt"]))
            cut.append(check_story(tok.decode(tok.encode(" " + story)[:room]), s, lex))
        chance = [check_story(story, s, lex) for s in sets for story in pool]
        use = {}
        for name, loaded in runs.items():
            own, other = [], []
            for i, (s, story) in enumerate(zip(sets, stories)):
                ids = tok.encode(" " + story)
                for prompt, acc in ((s["prompt"], own), (sets[(i + 1) % len(sets)]["prompt"], other)):
                    p = prompt_ids(tok, prompt)
                    x = torch.tensor([(p + ids)[:context]])
                    with torch.no_grad():
                        logits = loaded.model(x[:, :-1]).logits[0, len(p) - 1 :]
                    acc.append(F.cross_entropy(logits, x[0, len(p) :], reduction="sum").item())
            use[name] = {
                "own_set_nats": round(statistics.mean(own), 2),
                "next_set_nats": round(statistics.mean(other), 2),
                "own_lower": sum(a < b for a, b in zip(own, other)),
                "stories": len(own),
            }
        report[kind] = {
            "ceiling": rates([check_story(story, s, lex) for s, story in zip(sets, stories)]),
            "ceiling_in_context": rates(cut),
            "chance": rates(chance),
            "use": use,
        }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
