"""The model card (`README.md`) of a Hugging Face export: what the model is, what it was trained on, how it scores.

Every figure comes from the run folder: `config.toml` (architecture, training
settings, dataset path), the dataset's `meta.json` when it is still there
(stories, tokens, sources), `metrics.jsonl` (steps, tokens, the last training
and validation losses) and each `eval/*.json` (loss, probes, judge and any
other evaluation's headline numbers). A model that did not come from a run
(an import exported again) gets the architecture and the loading code only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tinystories.errors import UserError
from tinystories.flops import count_params
from tinystories.model import ModelConfig
from tinystories.rundir import read_config


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _fmt(x: Any) -> str:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    return "nan" if math.isnan(x) else f"{x:.4g}"


def _metrics(run: Path) -> list[dict[str, Any]]:
    rows = []
    path = run / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # a line cut by a crash
    return rows


def _training_rows(run: Path, step: int | None) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    try:
        config = read_config(run)
    except UserError:  # a card is written from whatever the folder has
        return rows
    train = config.train
    if train is not None:
        for key in ("preset", "seq_len", "batch_size", "lr", "max_steps", "max_tokens", "seed"):
            value = getattr(train, key, None)
            if value not in (None, 0, ""):
                rows.append((f"train.{key}", str(value) if key == "seed" else _fmt(value)))
    metrics = [r for r in _metrics(run) if step is None or r.get("step", 0) <= step]
    last = next((r for r in reversed(metrics) if "loss" in r), None)
    if last:
        rows += [("steps", _fmt(last.get("step"))), ("training tokens", _fmt(last.get("tokens"))),
                 ("final training loss (nats/token)", _fmt(last["loss"]))]
    val = next((r for r in reversed(metrics) if "val_loss" in r), None)
    if val:
        rows.append((f"validation loss at step {_fmt(val.get('step'))} (nats/token)", _fmt(val["val_loss"])))
        if "val_bpb" in val:
            rows.append(("validation bits per byte", _fmt(val["val_bpb"])))
    return rows


def _data_rows(run: Path) -> list[tuple[str, str]]:
    try:
        data = read_config(run).data
    except UserError:
        return []
    rows = []
    if data.get("path"):
        rows.append(("dataset", f"`{Path(data['path']).name}`"))
    if data.get("content_hash"):
        rows.append(("dataset content hash", f"`{data['content_hash']}`"))
    meta = _read_json(Path(data["path"]) / "meta.json") if data.get("path") else None
    if isinstance(meta, dict):
        for name, split in (meta.get("splits") or {}).items():
            rows.append((f"{name} split", f"{_fmt(split.get('documents'))} stories, {_fmt(split.get('tokens'))} tokens"))
        sources = [Path(s["path"]).name for s in meta.get("sources") or [] if isinstance(s, dict) and s.get("path")]
        if sources:
            rows.append(("story files", ", ".join(f"`{s}`" for s in sources[:5]) + (" ..." if len(sources) > 5 else "")))
        if meta.get("tokenizer"):
            rows.append(("tokenizer", f"`{meta['tokenizer']}`"))
    return rows


def _eval_rows(run: Path) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for path in sorted((run / "eval").glob("*.json")):
        result = _read_json(path)
        if not isinstance(result, dict):
            continue
        name = path.stem
        if name == "loss" and isinstance(result.get("per_story"), dict):
            per = result["per_story"]
            rows.append((f"loss on {_fmt(result.get('stories'))} stories (per story)",
                         f"{_fmt(per.get('loss'))} nats/token, perplexity {_fmt(per.get('perplexity'))}, "
                         f"{_fmt(per.get('bits_per_byte'))} bits/byte"))
        elif name == "probes" and "accuracy" in result:
            ci = result.get("ci95") or []
            ci_text = f" (95% CI {_fmt(ci[0])}-{_fmt(ci[1])})" if len(ci) == 2 else ""
            rows.append((f"probes: {_fmt(result.get('n'))} items", f"accuracy {_fmt(result['accuracy'])}{ci_text}"))
            for cat, block in (result.get("by_category") or {}).items():
                if isinstance(block, dict) and "accuracy" in block:
                    rows.append((f"probes: {cat}", f"accuracy {_fmt(block['accuracy'])} ({_fmt(block.get('n'))} items)"))
        else:
            scores = result["scores"] if isinstance(result.get("scores"), dict) else result
            for key, value in scores.items():
                if isinstance(value, dict) and isinstance(value.get("mean"), int | float):
                    value = value["mean"]
                if isinstance(value, int | float) and not isinstance(value, bool) and key not in ("step", "seed"):
                    rows.append((f"{name}: {key}", _fmt(value)))
    return rows


def _table(rows: list[tuple[str, str]]) -> str:
    return "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def model_card(cfg: ModelConfig, arch: str, run: Path | None, repo: str = "", step: int | None = None,
               origin: str = "") -> str:
    """README.md text for an HF export; figures from `run` when the export came from a run folder."""
    family = "GPT-Neo" if arch == "GPTNeoForCausalLM" else "Llama"
    where = repo or "path/to/this/folder"
    model_rows = [
        ("architecture", f"`{arch}` ({family} family)"),
        ("parameters", _fmt(count_params(cfg))),
        ("layers / heads / width", f"{cfg.n_layer} / {cfg.n_head} / {cfg.d_model}"),
        ("vocabulary", _fmt(cfg.vocab_size)),
        ("context", f"{_fmt(cfg.max_seq_len)} tokens"),
    ]
    parts = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags:",
        "- tinystories",
        "---",
        "",
        f"# {repo.split('/')[-1] if repo else 'A TinyStories model'}",
        "",
        "A small language model of children's stories in the manner of TinyStories (Eldan & Li, 2023), "
        "trained and exported with the tinystories toolkit."
        + (f" Converted from `{origin}`." if origin and run is None else ""),
        "",
        "## Model",
        "",
        _table(model_rows),
    ]
    if run is not None:
        for title, rows in (("Training data", _data_rows(run)), ("Training", _training_rows(run, step)),
                            ("Evaluation", _eval_rows(run))):
            if rows:
                parts += ["", f"## {title}", "", _table(rows)]
    parts += [
        "",
        "## How to load it",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'tokenizer = AutoTokenizer.from_pretrained("{where}")',
        f'model = AutoModelForCausalLM.from_pretrained("{where}")',
        "# the model saw each story after an end-of-text token (the tokenizer's bos_token)",
        'inputs = tokenizer(tokenizer.bos_token + "Once upon a time", add_special_tokens=False, return_tensors="pt")',
        "out = model.generate(**inputs, max_new_tokens=200, do_sample=True, temperature=0.8, top_p=0.9)",
        "print(tokenizer.decode(out[0], skip_special_tokens=True))",
        "```",
        "",
        "`generate` stops when the model writes the end-of-text token again.",
        "",
    ]
    return "\n".join(parts)
