"""`tinystories eval judge`: GPT-Eval, an LLM grades a model's story completions as in the paper.

The protocol (Eldan & Li 2023, §3; details in docs/judge.md):

1. About 50 story beginnings, each cut in the middle of a sentence. The
   built-in set (`sets/beginnings.yaml`) was written for this project; the
   released `Evaluation prompts.yaml` (44 beginnings) or any other file can be
   given with --prompts.
2. K completions of every beginning at temperature 1 from the run's model.
3. A two-turn conversation with the judge per completion: first an assessment
   in words, then grades `Grammar: x/10, Creativity: x/10, Consistency: x/10`
   and an age group A-F.
4. Tolerant parsing of the grades. When a score is missing, the judge is asked
   again (at most `--reasks` times); after that the grade counts as missing -
   never filled in - and the share of such completions is reported.
5. Means with 95% intervals from a bootstrap over beginnings: the K completions
   of one beginning share it and are not independent, so beginnings, not
   completions, are resampled.

Every answer is cached (`<run>/eval/judge_cache.sqlite`), so a re-run, or one
that stopped half way, pays only for what is new. The grading machinery
(`grade_all`) also serves `eval instruct`, with the paper's instruct prompts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinystories.config import OPERATIONAL, check, is_operational
from tinystories.errors import UserError
from tinystories.eval.paper_table import RELEASED_FIRST, RELEASED_N, comparability, render_table, run_row
from tinystories.io import atomic_write_json, sha256_file
from tinystories.llm.base import Request
from tinystories.llm.jobs import LLMJob, LLMOptions
from tinystories.llm.prices import cost_usd
from tinystories.llm.select import choose_backend
from tinystories.options import RunOptions, SamplingOptions
from tinystories.rundir import MODEL_FILE, load_run, with_device
from tinystories.sample import SampleParams, complete, prompt_ids

SETS = Path(__file__).parent / "sets"
BUILTIN_BEGINNINGS = SETS / "beginnings.yaml"

# --- the paper's prompts ------------------------------------------------------------------------
# Exact text as printed in the paper (arXiv 2305.07759v2, §3, the story-completion example), with the
# PDF's line wraps joined. Kept as printed: the first word is a lowercase "the", "student´s" has an
# acute accent and "gramatically" is misspelled.
STORY_ASSESS = (
    "the following exercise, the student is given a beginning of a story. The student needs to complete "
    "it into a full story. The exercise tests the student´s language abilities and creativity. The symbol "
    "*** marks the separator between the prescribed beginning and the student’s completion:\n"
    "{beginning}*** {completion}\n"
    "Please provide your general assessment about the part written by the student (the one after the *** "
    "symbol). Is it gramatically correct? Is it consistent with the beginning of the story? Pay special "
    "attention to whether the student manages to complete the sentence which is split in the middle by the "
    "separator ***."
)
STORY_GRADE = (
    "Now, grade the student’s completion in terms of grammar, creativity, consistency with the story’s "
    "beginning and whether the plot makes sense. Moreover, please provide your best guess of what the age "
    "of the student might be, as reflected from the completion. Choose from possible age groups: A: 3 or "
    "under. B: 4-5. C: 6-7. D: 8-9. E: 10-12. F: 13-16."
)
# The paper prints "Use the following grade format: [...]" only in its instruct prompt (Fig. 5); the
# format itself is the one of its example answers ("Grammar: 8/10, Creativity: 7/10, Consistency: 7/10,
# Age group: E (10-12)"). Appended by default (--no-format-line leaves the story prompt as printed).
STORY_FORMAT = "Grammar: x/10, Creativity: x/10, Consistency: x/10, Age group: x"
FORMAT_LINE = " Use the following grade format: {format}."
# Asked when a grade could not be read; not from the paper.
REASK = (
    "I could not read all the grades in your answer. Please reply with one line in exactly this format, "
    "with numbers from 0 to 10: {format}"
)

AGE_GROUPS = {"A": "3 or under", "B": "4-5", "C": "6-7", "D": "8-9", "E": "10-12", "F": "13-16"}
STORY_FIELDS = ("grammar", "creativity", "consistency")
ALL_FIELDS = ("grammar", "creativity", "consistency", "plot")

# --- options ------------------------------------------------------------------------------------


@dataclass
class JudgeOptions(LLMOptions):
    """Which LLM judges and how it is asked (shared by `eval judge` and `eval instruct`)."""

    judge_model: str = ""
    """The judge: a model name the endpoint serves (e.g. gpt-4o), or a model file for --backend local."""
    backend: str = "auto"
    """Judge backend: openai (any OpenAI-compatible endpoint), local (a model file in this process); auto = openai."""
    judge_max_tokens: int = field(default=600, metadata={"min": 1})
    """Most tokens of one judge answer."""
    judge_temperature: float = 0.0
    """Judge sampling temperature (the paper does not say; 0 makes re-runs repeatable where servers allow)."""
    reasks: int = field(default=2, metadata={"min": 0})
    """Times the judge is asked again when its grades cannot be read; then the grade counts as missing."""
    format_line: bool = True
    """Append 'Use the following grade format: ...' to the story grading turn (the paper prints it for instruct only)."""
    concurrency: int = field(default=8, metadata={**OPERATIONAL, "min": 1})
    """Judge conversations in flight at once."""
    cache: str = field(default="", metadata=OPERATIONAL)
    """Answer cache (sqlite); default: eval/judge_cache.sqlite (eval instruct: instruct_cache) in the run folder."""


@dataclass
class GradedOptions(JudgeOptions, SamplingOptions, RunOptions):
    """A run's model completes prompts K times each; the judge may grade them (`eval judge`, `eval instruct`)."""

    completions: int = field(default=10, metadata={"min": 1})
    """Completions per prompt: per story beginning, or per instruction set (the paper: 10)."""
    max_new_tokens: int = 400
    """Most new tokens of one completion (the paper's models stop by themselves; it gives no limit)."""
    seed: int = 1234
    """Seed: completion k of prompt i uses seed + i * completions + k; also seeds the bootstrap."""
    batch: int = 64
    """Completions decoded together at most."""
    bootstrap: int = field(default=10000, metadata={"min": 100})
    """Bootstrap resamples of the prompts (beginnings or instruction sets) for the 95% intervals."""
    write: bool = True
    """Write the results (eval/judge.json, eval/instruct.json) in the run folder."""


@dataclass
class JudgeConfig(GradedOptions):
    """`tinystories eval judge`: GPT-Eval of a run's story completions."""

    prompts: str = ""
    """Story beginnings: a YAML list (as the released 'Evaluation prompts.yaml'), a .jsonl or a .txt; default: the built-in 50."""
    table: str = "nearest"
    """Paper rows beside ours in the printed table: nearest (same hidden size), all, or none."""


# --- beginnings ---------------------------------------------------------------------------------


def _yaml_scalar(text: str, where: str) -> str:
    """One plain or quoted YAML scalar written on one line."""
    text = text.strip()
    if text.startswith('"'):
        try:
            value = json.loads(text)  # YAML double-quoted escapes are JSON's for the cases that occur
        except json.JSONDecodeError:
            raise UserError(f"{where}: cannot read the double-quoted string") from None
        return str(value)
    if text.startswith("'"):
        if len(text) < 2 or not text.endswith("'"):
            raise UserError(f"{where}: unterminated single-quoted string")
        return text[1:-1].replace("''", "'")
    return text


def parse_yaml_list(text: str, source: str = "<yaml>") -> list[str]:
    """The strings of a YAML document that is one list of strings.

    Handles what such files hold: `- |-` / `- |` / `- >` blocks (the released
    file's layout), one-line plain or quoted items, comments and `---`. PyYAML
    is not needed; anything else is refused with the line number.
    """
    lines = text.splitlines()
    items: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        where = f"{source}:{i + 1}"
        if not stripped or stripped.startswith("#") or stripped in ("---", "..."):
            i += 1
            continue
        if not line.startswith("-") or (len(line) > 1 and not line[1].isspace()):
            raise UserError(
                f"{where}: expected a list item '- ...' (the file must be a YAML list of strings)"
            )
        head = line[1:].strip()
        block = re.fullmatch(r"([|>])([+-]?)\d?\s*(#.*)?", head)
        if not block:
            items.append(_yaml_scalar(head, where))
            i += 1
            continue
        style, chomp = block.group(1), block.group(2)
        body: list[str] = []
        indent: int | None = None
        i += 1
        while i < len(lines):
            cur = lines[i]
            if cur.strip() == "":
                body.append("")
                i += 1
                continue
            lead = len(cur) - len(cur.lstrip(" "))
            if indent is None:
                indent = lead
            if lead < indent or lead == 0:
                break
            body.append(cur[indent:])
            i += 1
        trailing = 0
        while body and body[-1] == "":
            body.pop()
            trailing += 1
        if style == "|":
            value = "\n".join(body)
        else:  # folded: single line breaks become spaces, blank lines stay line breaks
            value = re.sub(r"(?<!\n)\n(?!\n)", " ", "\n".join(body))
        if chomp == "+":
            value += "\n" * (trailing + 1)
        elif chomp == "" and body:
            value += "\n"
        items.append(value)
    return items


def json_lines(path: Path, text: str) -> Iterator[tuple[str, Any]]:
    """(`file:line`, value) of every non-blank line of a JSONL text; a line that is not JSON is refused."""
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield f"{path}:{n}", json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{n}: not JSON ({e.msg})") from None


def read_beginnings(path: str | os.PathLike | None = None) -> tuple[list[str], dict[str, Any]]:
    """Beginnings from a file (built-in set when None) and a description: source, counts, hashes.

    Formats by suffix: .yaml/.yml a list of strings; .jsonl one string or an
    object with `beginning` / `prompt` per line; .txt beginnings separated by
    `<|endoftext|>` lines.
    """
    p = Path(path) if path else BUILTIN_BEGINNINGS
    if not p.is_file():
        raise UserError(f"no prompt file at {p}")
    text = p.read_text(encoding="utf-8")
    suffix = p.suffix.lower()
    if suffix in (".yaml", ".yml"):
        items = parse_yaml_list(text, str(p))
    elif suffix in (".jsonl", ".ndjson"):
        items = []
        for where, obj in json_lines(p, text):
            if isinstance(obj, dict):
                obj = obj.get("beginning", obj.get("prompt"))
            if not isinstance(obj, str):
                raise UserError(f"{where}: expected a string or an object with a 'beginning' string")
            items.append(obj)
    elif suffix == ".txt":
        items = text.split("<|endoftext|>")
    else:
        raise UserError(f"{p}: unknown prompt file type {suffix!r} (use .yaml, .jsonl or .txt)")
    # Trailing whitespace ("Anna insisted that ") would end the model's prompt in a lone space token.
    beginnings = [b.strip() for b in items if b.strip()]
    if not beginnings:
        raise UserError(f"{p} holds no story beginnings")
    info = {
        "source": "built-in" if path is None else os.fspath(path),
        "n": len(beginnings),
        "file_sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
        "set_sha256": set_hash(beginnings),
        "label": prompt_set_label(beginnings, path is None),
    }
    return beginnings, info


def set_hash(texts: Sequence[Any]) -> str:
    """sha256 of a set's content (not of its file's layout)."""
    return hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode("utf-8")).hexdigest()


def prompt_set_label(beginnings: Sequence[str], builtin: bool) -> str:
    """'built-in', 'released' (the released eval file's 44 beginnings) or 'custom'."""
    if builtin:
        return "built-in"
    if len(beginnings) == RELEASED_N and beginnings[0].startswith(RELEASED_FIRST):
        return "released"
    return "custom"


# --- parsing the judge's grades ---------------------------------------------------------------------

_NUM = r"(\d+(?:\.\d+)?)"
_AGE_RANGES = {"3 or under": "A", "4-5": "B", "6-7": "C", "8-9": "D", "10-12": "E", "13-16": "F"}


def _score(text: str, label: str) -> float | None:
    # "Grammar: 8/10", "Consistency with the beginning - 8.5 out of 10": the last such mention wins, since
    # a grade line comes after any discussion. Failing that, "Grammar: 8" with a separator.
    out_of = re.compile(rf"\b{label}\b[^\d\n]{{0,40}}?{_NUM}\s*(?:/|out of)\s*10(?!\.?\d)", re.I)
    found = out_of.findall(text)
    if not found:
        found = re.findall(rf"\b{label}\b(?:\s+score)?\s*[:=\-–]\s*{_NUM}(?![\d/%])", text, re.I)
    if not found:
        return None
    value = float(found[-1])
    return value if 0 <= value <= 10 else None


def _age(text: str) -> str | None:
    found = re.findall(r"(?i:\bage(?:\s+group)?)\s*[:\-–]?\s*\(?([A-F])\b", text)
    if found:
        return found[-1]
    m = re.search(r"(?i:\bage(?:\s+group)?)[^\n]{0,30}?(3 or under|\d+\s*-\s*\d+)", text)
    if m:
        return _AGE_RANGES.get(re.sub(r"\s+", "", m.group(1)).replace("orunder", " or under"))
    return None


def parse_grade(text: str) -> dict[str, Any]:
    """Scores (0-10, None where absent or out of range) and the age group (A-F or None) in an answer."""
    clean = re.sub(r"[*_#`]", "", text)  # markdown emphasis around labels or numbers
    out: dict[str, Any] = {f: _score(clean, f) for f in ALL_FIELDS}
    out["age_group"] = _age(clean)
    return out


# --- grading conversations -----------------------------------------------------------------------------


@dataclass
class Task:
    """One story to grade: the two user turns of its conversation and the scores it must yield."""

    group: int
    """Bootstrap unit: the beginning (or instruction set) the story belongs to."""
    k: int
    """Which of the group's completions."""
    assess: str
    """First turn: the exercise and the request for an assessment."""
    grade: str
    """Second turn: the request for grades."""
    fields: tuple[str, ...] = STORY_FIELDS
    """Scores a complete grade has."""
    format: str = STORY_FORMAT
    """The grade format quoted when asking again."""


def _request_seed(seed: int, group: int, k: int, turn: int) -> int:
    blob = f"{seed}|{group}|{k}|{turn}".encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "little") >> 1


def grade_all(
    tasks: Sequence[Task],
    opts: JudgeOptions,
    cache_path: str | os.PathLike,
    seed: int = 0,
    client: Any = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run every task's conversation with the judge; one grade record per task, and judge statistics.

    A grade record holds the assessment, every grading answer, the scores
    (all None unless every required score was read), the age group, the
    re-asks used and `complete`. A request that still fails after its retries
    stops the command with a UserError once the others are done; the cache
    keeps every answer received, so running it again continues. `client`
    replaces the backend `opts` names (any object with the `LLM` interface).
    """
    backend = choose_backend(opts.backend, opts.judge_model, model_flag="--judge-model")
    if not opts.chat:
        raise UserError("the grading is a conversation: the judge needs the chat API (drop --no-chat)")
    namespace = {"task": "judge", "backend": backend, "model": opts.judge_model, "base_url": opts.base_url}
    job = LLMJob(opts, backend=backend, model=opts.judge_model, cache=cache_path, namespace=namespace, seed=seed,
                 client=client)  # fmt: skip
    results: list[dict[str, Any] | None] = [None] * len(tasks)

    async def converse(i: int) -> bool:
        task = tasks[i]
        item = task.group * 1_000_000 + task.k
        messages = [{"role": "user", "content": task.assess}]
        answers: list[str] = []
        found: dict[str, Any] = {}
        # Turn 0 is the assessment; turns 1.. grade, each after the judge's previous answer.
        for turn in range(opts.reasks + 2):
            req = Request(messages=[dict(m) for m in messages], max_tokens=opts.judge_max_tokens,
                          temperature=opts.judge_temperature, seed=_request_seed(seed, task.group, task.k, turn))  # fmt: skip
            comp = await job.ask(item, turn, req)
            if comp is None:
                return False  # the job stopped
            answers.append(comp.text)
            if turn:
                # A score read in an earlier answer stands unless a later one restates it.
                found.update({k: v for k, v in parse_grade(comp.text).items() if v is not None})
                if all(found.get(f) is not None for f in task.fields):
                    break
            ask_next = task.grade if turn == 0 else REASK.format(format=task.format)
            messages += [{"role": "assistant", "content": comp.text}, {"role": "user", "content": ask_next}]
        complete = all(found.get(f) is not None for f in task.fields)
        results[i] = {
            "group": task.group,
            "k": task.k,
            "assessment": answers[0],
            "answers": answers[1:],
            "reasks": len(answers) - 2,
            "complete": complete,
            # An unreadable grade is missing as a whole, never completed by guesses.
            "scores": {f: found.get(f) if complete else None for f in ALL_FIELDS},
            "partial": {f: found.get(f) for f in ALL_FIELDS} if not complete else None,
            "age_group": found.get("age_group"),
        }
        return True

    try:
        st = job.run(range(len(tasks)), converse, unit="grade")
    finally:
        job.close()
    if st.failed or st.fatal:
        done = sum(r is not None for r in results)
        raise UserError(
            f"{len(tasks) - done} of {len(tasks)} gradings failed (last error: {st.last_error}); the answers "
            "received are cached: run the command again to finish"
        )
    stats = {
        "requests": st.requests,
        "cached_answers": st.cached,
        "prompt_tokens": st.prompt_tokens,
        "completion_tokens": st.completion_tokens,
        "price_usd_per_1m": list(job.price) if job.price else None,
        "usd_all_answers": round(cost_usd(job.price, st.prompt_tokens, st.completion_tokens), 6),
        "usd_this_run": round(cost_usd(job.price, st.new_prompt_tokens, st.new_completion_tokens), 6),
    }
    return [r for r in results if r is not None], stats


def judge_settings(opts: JudgeOptions) -> dict[str, Any]:
    """What decides the judge's answers: its options that change results, named without `judge_` (no key)."""
    settings = {
        f.name.removeprefix("judge_"): getattr(opts, f.name)
        for f in dataclasses.fields(JudgeOptions)
        if not is_operational(f)
    }
    settings["backend"] = choose_backend(opts.backend, opts.judge_model, model_flag="--judge-model")
    return settings


# --- statistics -------------------------------------------------------------------------------------------


def bootstrap_mean(
    groups: Sequence[Sequence[float]], n_boot: int = 10000, seed: int = 0, level: float = 0.95
) -> dict[str, Any]:
    """The mean of all values and a percentile interval from resampling whole groups with replacement.

    Each resample draws as many groups as there are (with replacement) and
    takes the mean of all their values together, so the interval reflects how
    much the result depends on which beginnings were chosen. Groups without
    values (every grade missing) carry no information and are left out.
    """
    kept = [list(g) for g in groups if len(g)]
    n = len(kept)
    if n == 0:
        return {"mean": None, "ci95": None, "n": 0, "groups": 0}
    sums = np.array([sum(g) for g in kept], dtype=np.float64)
    counts = np.array([len(g) for g in kept], dtype=np.float64)
    mean = float(sums.sum() / counts.sum())
    rng = np.random.default_rng(seed)
    boot = np.empty(n_boot)
    for s in range(0, n_boot, 1000):  # in blocks: a large set times many resamples stays small in memory
        idx = rng.integers(0, n, size=(min(1000, n_boot - s), n))
        boot[s : s + len(idx)] = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(boot, [tail, 100 - tail])
    return {"mean": mean, "ci95": [float(low), float(high)], "n": int(counts.sum()), "groups": n}


def summarize_grades(
    grades: Sequence[dict[str, Any]], fields: Sequence[str], n_groups: int, n_boot: int, seed: int
) -> dict[str, Any]:
    """Per score: mean and bootstrap interval over groups; the parse-failure rate; age groups."""
    out: dict[str, Any] = {}
    for f in fields:
        groups: list[list[float]] = [[] for _ in range(n_groups)]
        for g in grades:
            if g["scores"].get(f) is not None:
                groups[g["group"]].append(g["scores"][f])
        out[f] = bootstrap_mean(groups, n_boot, seed)
    failed = sum(not g["complete"] for g in grades)
    out["parse"] = {
        "graded": len(grades),
        "missing": failed,
        "failure_rate": failed / len(grades) if grades else None,
        "reasks": sum(g["reasks"] for g in grades),
        "answered_after_reask": sum(g["complete"] and g["reasks"] > 0 for g in grades),
    }
    ages = [g["age_group"] for g in grades if g["complete"]]
    out["age_groups"] = {a: ages.count(a) for a in AGE_GROUPS if a in ages}
    out["age_groups"]["missing"] = sum(a is None for a in ages)
    return out


# --- the model's completions --------------------------------------------------------------------------------


def model_info(loaded: Any) -> dict[str, Any]:
    """What identifies the model: its shape, checkpoint and weight hash."""
    cfg = loaded.model.config
    return {
        "checkpoint": os.fspath(loaded.path),
        "weights_sha256": sha256_file(Path(loaded.path) / MODEL_FILE),
        "params": sum(p.numel() for p in loaded.model.parameters()),
        "d_model": cfg.d_model,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "vocab_size": cfg.vocab_size,
        "max_seq_len": cfg.max_seq_len,
    }


def complete_prompts(
    loaded: Any,
    prompts: Sequence[str],
    k: int,
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
    batch: int,
    top_k: int = 0,
) -> list[list[dict[str, Any]]]:
    """K completions of every prompt (text, finish reason, seed): completion j of prompt i uses seed + i*k + j."""
    model, tok = loaded.model, loaded.tokenizer
    context = model.config.max_seq_len
    ids = [prompt_ids(tok, p) for p in prompts]
    for i, p in enumerate(ids):
        if len(p) >= context:
            raise UserError(
                f"prompt {i + 1} has {len(p)} tokens: it does not fit the model's context of {context}"
            )
    flat = [p for p in ids for _ in range(k)]
    params = [
        SampleParams(
            temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed + j
        )
        for j in range(len(flat))
    ]
    outs = complete(model, flat, params, eot_id=tok.eot_id, max_batch=batch)
    result: list[list[dict[str, Any]]] = [[] for _ in prompts]
    for j, (p, c) in enumerate(zip(flat, outs)):
        text = tok.decode(p + c.tokens)[len(tok.decode(p)) :]
        result[j // k].append(
            {"text": text, "finish_reason": c.finish_reason, "tokens": len(c.tokens), "seed": seed + j}
        )
    return result


def check_command(cfg: GradedOptions) -> None:
    """The checks `eval judge` and `eval instruct` share: a run is named, the declared bounds hold."""
    if not cfg.run:
        raise UserError("--run is required: the run folder whose model is evaluated")
    check(cfg)


def complete_for(cfg: GradedOptions, loaded: Any, prompts: Sequence[str]) -> list[list[dict[str, Any]]]:
    """`cfg.completions` completions of every prompt with `cfg`'s sampling settings."""
    return complete_prompts(loaded, prompts, cfg.completions, max_new_tokens=cfg.max_new_tokens,
                            temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, seed=cfg.seed,
                            batch=cfg.batch)  # fmt: skip


def sampling_record(cfg: GradedOptions, seeds: str) -> dict[str, Any]:
    """How the completions were sampled, as the result files keep it."""
    return {"completions": cfg.completions, "temperature": cfg.temperature, "top_k": cfg.top_k, "top_p": cfg.top_p,
            "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed, "seeds": seeds}  # fmt: skip


def bootstrap_record(cfg: GradedOptions, unit: str) -> dict[str, Any]:
    return {"resamples": cfg.bootstrap, "seed": cfg.seed, "unit": unit, "interval": "percentile"}


# --- the command -----------------------------------------------------------------------------------------------


def evaluate_judge(cfg: JudgeConfig) -> dict[str, Any]:
    """Complete the beginnings with the run's model, have the judge grade them; writes eval/judge.json."""
    cfg = with_device(cfg)
    check_command(cfg)
    if not cfg.judge_model:
        raise UserError(
            "--judge-model is required: the LLM that grades (e.g. gpt-4o, or a local server's model)"
        )
    if cfg.table not in ("nearest", "all", "none"):
        raise UserError(f"--table must be nearest, all or none, got {cfg.table!r}")
    beginnings, prompts_info = read_beginnings(cfg.prompts or None)
    settings = judge_settings(cfg)
    loaded = load_run(cfg.run, step=cfg.step, device=cfg.device)
    done = complete_for(cfg, loaded, beginnings)
    grade_turn = STORY_GRADE + (FORMAT_LINE.format(format=STORY_FORMAT) if cfg.format_line else "")
    tasks = [
        Task(
            group=i,
            k=k,
            assess=STORY_ASSESS.format(beginning=b, completion=c["text"].strip()),
            grade=grade_turn,
        )
        for i, b in enumerate(beginnings)
        for k, c in enumerate(done[i])
    ]
    cache = cfg.cache or Path(cfg.run) / "eval" / "judge_cache.sqlite"
    grades, stats = grade_all(tasks, cfg, cache, seed=cfg.seed)
    summary = summarize_grades(grades, (*STORY_FIELDS, "plot"), len(beginnings), cfg.bootstrap, cfg.seed)
    why = comparability(cfg.judge_model, prompts_info["label"], cfg.completions, cfg.temperature)
    result: dict[str, Any] = {
        "run": os.fspath(cfg.run),
        "step": loaded.step,
        "model": model_info(loaded),
        "prompts": prompts_info,
        "sampling": sampling_record(cfg, "completion k of beginning i: seed + i * completions + k"),
        "judge": settings,
        "templates": {
            "assess": STORY_ASSESS,
            "grade": grade_turn,
            "reask": REASK.format(format=STORY_FORMAT),
        },
        "bootstrap": bootstrap_record(cfg, "beginning"),
        "scores": {f: summary[f] for f in (*STORY_FIELDS, "plot")},
        "parse": summary["parse"],
        "age_groups": summary["age_groups"],
        "cost": stats,
        "not_comparable": why,
    }
    instruct_path = Path(cfg.run) / "eval" / "instruct.json"
    instruct = read_json(instruct_path)
    result["table"] = render_table([run_row(cfg.run, result, instruct)], cfg.table)
    result["completions"] = [
        {"beginning": t.group, "k": t.k, **done[t.group][t.k], **g} for t, g in zip(tasks, grades)
    ]
    if cfg.write:
        atomic_write_json(Path(cfg.run) / "eval" / "judge.json", result)
    # The table goes to stderr: stdout carries the command's JSON summary.
    print(result["table"], file=sys.stderr)
    return {k: v for k, v in result.items() if k not in ("completions", "templates", "table")}


def read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
