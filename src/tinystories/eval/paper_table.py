"""The results table of `eval judge` and `eval instruct`, laid out like the paper's Figure 4.

Our rows (mean [95% interval] per score) come first, then the paper's own
numbers for comparison, and a column that says why a row is not comparable
with the paper's protocol (another judge, prompt set or sampling).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tinystories.errors import UserError

# The paper's Figure 4 (read from its image): (hidden, layers, eval loss, creativity,
# grammar, consistency, instruct, plot). Baseline rows have no shape and no instruct models.
PAPER_FIGURE4: list[tuple[Any, ...]] = [
    (64, 12, 2.02, 4.84, 6.19, 4.75, 4.34, 4.39),
    (64, 8, 2.08, 4.68, 6.14, 4.45, 4.34, 4.40),
    (64, 4, 2.26, 3.97, 5.31, 3.77, 3.79, 3.71),
    (64, 2, 2.38, 2.94, 4.33, 2.41, 2.86, 3.40),
    (128, 12, 1.62, 6.02, 7.25, 7.20, 6.94, 6.58),
    (128, 8, 1.65, 5.97, 7.23, 7.10, 6.87, 6.16),
    (128, 4, 1.78, 5.70, 6.91, 6.60, 6.00, 5.53),
    (128, 2, 1.92, 4.90, 6.43, 4.75, 5.23, 4.89),
    (256, 12, 1.34, 6.66, 7.80, 8.38, 7.68, 7.18),
    (256, 8, 1.38, 6.54, 7.72, 8.02, 7.92, 7.23),
    (256, 4, 1.47, 6.32, 7.64, 7.76, 8.07, 7.18),
    (256, 2, 1.60, 6.23, 7.50, 7.20, 7.23, 6.50),
    (512, 12, 1.19, 6.90, 8.46, 9.11, 8.21, 7.37),
    (512, 8, 1.20, 6.85, 8.34, 8.95, 8.05, 7.26),
    (512, 4, 1.27, 6.75, 8.35, 8.50, 8.34, 7.36),
    (512, 2, 1.39, 6.40, 7.72, 7.90, 7.76, 7.13),
    (768, 12, 1.18, 7.00, 8.30, 9.20, 8.23, 7.47),
    (768, 8, 1.18, 7.02, 8.62, 9.34, 8.36, 7.34),
    (768, 4, 1.20, 6.89, 8.43, 9.01, 8.44, 7.52),
    (768, 2, 1.31, 6.68, 8.01, 8.42, 7.97, 7.34),
    (768, 1, 1.54, 6.00, 7.35, 7.25, 5.81, 6.44),
    (1024, 12, 1.22, 7.05, 8.43, 8.98, 8.18, 7.29),
    (1024, 8, 1.20, 7.13, 8.25, 8.92, 8.47, 7.47),
    (1024, 4, 1.21, 7.04, 8.32, 8.93, 8.34, 7.47),
    (1024, 2, 1.27, 6.68, 8.22, 8.52, 8.04, 7.24),
    (1024, 1, 1.49, 6.36, 7.77, 7.47, 6.09, 6.42),
]
PAPER_BASELINES: list[tuple[str, float, float, float, float | None, float | None]] = [
    # (model, creativity, grammar, consistency, instruct, plot)
    ("GPT-Neo (125M)", 3.34, 5.27, 4.22, None, None),
    ("GPT-2-small (125M)", 3.70, 5.40, 4.32, None, None),
    ("GPT-2-med (355M)", 4.22, 6.27, 5.34, None, None),
    ("GPT-2-large (774M)", 4.30, 6.43, 6.04, None, None),
    ("GPT-4", 8.21, 8.75, 9.93, 9.31, 8.26),
]
PAPER_K = 10
"""Completions per beginning in the paper."""
# The released eval file starts with this beginning (44 in all); it identifies the file, not its bytes.
RELEASED_FIRST = "Once upon a time, there lived a bunny in a field."
RELEASED_N = 44


def judge_differs(judge_model: str) -> str | None:
    """Why a judge is not the paper's (None for the 2023 GPT-4 family; its snapshot is unstated)."""
    name = judge_model.lower()
    # gpt-4o, gpt-4.1 and gpt-4-turbo are later, different models.
    if name == "gpt-4" or name.startswith(("gpt-4-0", "gpt-4-32k")):
        return None
    return f"judge {judge_model} (paper: GPT-4)"


def comparability(judge_model: str, prompt_label: str, completions: int, temperature: float) -> list[str]:
    """Why a row differs from the paper's protocol (empty: same judge family, prompt set and sampling)."""
    why = [w for w in [judge_differs(judge_model)] if w]
    if prompt_label != "released":
        why.append(f"{prompt_label} prompt set (paper: its own ~50; released file: {RELEASED_N})")
    if completions != PAPER_K:
        why.append(f"{completions} completions per beginning (paper: {PAPER_K})")
    if temperature != 1.0:
        why.append(f"temperature {temperature:g} (paper: 1)")
    return why


def _cell(stat: dict[str, Any] | None) -> str:
    if stat is None:
        return "–"
    if stat.get("mean") is None:
        return "n/a"
    low, high = stat["ci95"]
    return f"{stat['mean']:.2f} [{low:.2f}, {high:.2f}]"


def run_row(
    run_dir: str | os.PathLike, judge: dict[str, Any] | None, instruct: dict[str, Any] | None
) -> dict[str, Any]:
    """A table row for a run from its eval results (judge.json and/or instruct.json contents)."""
    base = judge or instruct or {}
    model = base.get("model", {})
    loss = None
    loss_path = Path(run_dir) / "eval" / "loss.json"
    if loss_path.is_file():
        try:
            loss = json.loads(loss_path.read_text())["stream"]["loss"]
        except (OSError, ValueError, KeyError, TypeError):
            loss = None
    ijudge = (instruct or {}).get("judge") or {}
    scores, iscores = (judge or {}).get("scores", {}), ijudge.get("scores", {})
    why = list((judge or {}).get("not_comparable", []))
    why += [w for w in ijudge.get("not_comparable", []) if w not in why]
    judges = ([judge["judge"]["model"]] if judge else []) + ([ijudge["model"]] if ijudge else [])
    sets = [f"{judge['prompts']['label']} ({judge['prompts']['n']})"] if judge else []
    if ijudge:
        info = (instruct or {})["sets"]
        sets.append(f"instruct {info['label']} ({info['n']})")
    return {
        "model": f"{Path(os.fspath(run_dir)).name} (step {base.get('step', '?')})",
        "hidden": model.get("d_model"),
        "layers": model.get("n_layer"),
        "eval_loss": loss,
        "creativity": scores.get("creativity"),
        "grammar": scores.get("grammar"),
        "consistency": scores.get("consistency"),
        "instruct": iscores.get("consistency"),
        "plot": iscores.get("plot"),
        "judge": ", ".join(dict.fromkeys(judges)) or "–",
        "prompt_set": ", ".join(sets) or "–",
        "comparable": "yes" if not why else "no: " + "; ".join(why),
    }


def render_table(rows: Sequence[dict[str, Any]], paper: str = "nearest") -> str:
    """A Markdown table laid out like the paper's Figure 4: our rows, then the paper's (nearest, all or none).

    Our scores read `mean [95% interval]`; the paper's are its raw GPT-4 scores
    (its min-max normalised second numbers are left out).
    """
    if paper not in ("nearest", "all", "none"):
        raise UserError(f"--table must be nearest, all or none, got {paper!r}")

    def line(cells: Sequence[Any]) -> str:
        text = ("–" if c is None else f"{c:.2f}" if isinstance(c, float) else str(c) for c in cells)
        return "| " + " | ".join(text) + " |"

    head = ["Model", "Hidden", "Layers", "Eval loss", "Creativity", "Grammar", "Consistency", "Instruct", "Plot",
            "Judge", "Prompt set", "Comparable to the paper"]  # fmt: skip
    lines = [line(head), "|" + "---|" * len(head)]
    for r in rows:
        scores = [_cell(r[k]) for k in ("creativity", "grammar", "consistency", "instruct", "plot")]
        lines.append(line([r["model"], r["hidden"], r["layers"], r["eval_loss"], *scores,
                           r["judge"], r["prompt_set"], r["comparable"]]))  # fmt: skip
    if paper == "none":
        return "\n".join(lines) + "\n"
    sizes = sorted({row[0] for row in PAPER_FIGURE4})
    near = {min(sizes, key=lambda s: abs(s - r["hidden"])) for r in rows if r.get("hidden")}
    paper_cells = ["GPT-4", "paper's (~50)", "(the paper)"]
    for hidden, layers, *numbers in PAPER_FIGURE4:
        if paper == "all" or hidden in near:
            lines.append(line(["paper", hidden, layers, *numbers, *paper_cells]))
    for name, *numbers in PAPER_BASELINES:
        if paper == "all" or name in ("GPT-2-large (774M)", "GPT-4"):
            lines.append(line([f"{name}, paper", None, None, None, *numbers, *paper_cells]))
    return "\n".join(lines) + "\n"
