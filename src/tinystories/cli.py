"""`tinystories` command line: a table of subcommands mapped to library functions.

Each library function takes one config dataclass; its options come from that
dataclass's fields and docstrings (`tinystories.config`). A command may also
take overrides of a second dataclass (e.g. model fields on top of a preset),
passed as a dict keyword. A returned dict is printed as JSON. No logic lives
here beyond that mapping.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import typing
from dataclasses import dataclass

from tinystories.config import add_options, build, options_from
from tinystories.errors import UserError


@dataclass(frozen=True)
class Command:
    target: str
    """'module:function' taking one config dataclass."""
    help: str
    """One line for `tinystories --help`."""
    overrides: str | None = None
    """'module:Class' whose fields may be overridden (`--<prefix>-<field>`), passed as a dict."""
    overrides_kw: str = "overrides"
    """Keyword argument that receives the overrides dict."""
    overrides_prefix: str = ""
    """Prefix for override options."""
    deprecated: str | None = None
    """The command to use instead; this name still works and says so on stderr."""


COMMANDS: dict[str, Command] = {
    "synth": Command(
        "tinystories.synth.generate:synth",
        "write a story corpus (JSONL + .txt) with an LLM (--model, --base-url) or the offline procedural engine",
    ),
    "synth stats": Command(
        "tinystories.synth.stats:stats",
        "statistics of a story corpus: words, coverage, features, duplicates, tokens, cost; --estimate at 2.1M",
    ),
    "synth instruct": Command(
        "tinystories.synth.instruct:instruct",
        "turn a story corpus into TinyStories-Instruct records (LLM summaries where missing; --ood)",
    ),
    "synth dedup": Command(
        "tinystories.synth.stats:dedup",
        "copy a story corpus without its near-duplicates (MinHash on word 5-shingles)",
    ),
    "tokenize": Command(
        "tinystories.data.tokenize:tokenize",
        "train or load a tokenizer and pretokenize stories into a dataset folder",
    ),
    "train": Command(
        "tinystories.train:train",
        "train a model (or --resume a run) on a dataset folder; torchrun for several processes",
        overrides="tinystories.model:ModelConfig",
        overrides_kw="model_overrides",
        overrides_prefix="model-",
    ),
    "sample": Command(
        "tinystories.sample:sample",
        "print completions of prompts by a run's model (KV-cached, batched; sampling or beam search)",
    ),
    "convert": Command(
        "tinystories.convert.command:convert",
        "import llama2.c .bin / Hugging Face checkpoints (folders or Hub ids) as run folders; export runs to HF, "
        "llama2.c or GGUF",
    ),
    "eval loss": Command(
        "tinystories.eval.loss:evaluate_loss",
        "loss, perplexity and bits per byte of a run on story files or a dataset split",
    ),
    "interpret heads": Command(
        "tinystories.interp.heads:interpret_heads",
        "classify a run's attention heads (induction / distance-based / semantic, with controls) and draw attention "
        "maps",
    ),
    "interpret neurons": Command(
        "tinystories.interp.neurons:interpret_neurons",
        "top-activating tokens, labels and scores (vs random directions) of one layer's MLP neurons",
    ),
    "report": Command(
        "tinystories.report:report",
        "write <run>/report.html: config, training curves, samples, evals, heads and neurons in one file "
        "(several --run: their headline figures side by side)",
    ),
    "pipeline": Command(
        "tinystories.pipeline:run_command",
        "run a recipe's stages (synth, tokenize, train, sample, eval, ...; or an experiment's) on one folder; "
        "a re-run resumes",
    ),
    "run": Command(
        "tinystories.pipeline:run_command",
        "old name of `pipeline` (deprecated)",
        deprecated="pipeline",
    ),
    "sweep": Command(
        "tinystories.sweep:sweep",
        "train and grade a grid of model shapes x seeds at one budget (FLOPs, tokens or time); --report for "
        "the table and plots",
    ),
    "curriculum-ab": Command(
        "tinystories.curriculum_ab:curriculum_ab",
        "curriculum A/B: random order vs curricula and a reverse control, equal tokens, several seeds; "
        "--report for the table",
    ),
    "eval probes": Command(
        "tinystories.eval.probes:evaluate_probes",
        "multiple-choice capability probes (fact / reasoning / context) scored by log-likelihood",
    ),
    "eval decontam": Command(
        "tinystories.eval.decontam:decontam",
        "report eval and probe items whose word 6-grams occur in a training corpus",
    ),
    "eval judge": Command(
        "tinystories.eval.judge:evaluate_judge",
        "GPT-Eval: an LLM judge grades the run's completions of story beginnings (grammar, creativity, consistency)",
    ),
    "eval instruct": Command(
        "tinystories.eval.instruct:evaluate_instruct",
        "instruction following of an Instruct model: required words and sentence present, optional LLM judge",
    ),
    "serve": Command(
        "tinystories.serve:serve",
        "serve runs over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions), playground at /",
    ),
    "eval diversity": Command(
        "tinystories.eval.diversity:evaluate_diversity",
        "memorization and diversity: Rouge of completions of cut training stories vs. the original, each other and the corpus",
    ),
}


def _load(ref: str) -> typing.Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def _config_class(fn: typing.Any) -> type:
    hints = typing.get_type_hints(fn)
    hints.pop("return", None)
    return next(iter(hints.values()))


def _top_help() -> str:
    width = max(len(n) for n in COMMANDS)
    rows = "\n".join(f"  {name:<{width}}  {cmd.help}" for name, cmd in COMMANDS.items())
    return f"usage: tinystories COMMAND [options]\n\ncommands:\n{rows}\n\n`tinystories COMMAND --help` lists a command's options."


def _find_command(argv: list[str]) -> tuple[str, list[str]]:
    # Longest match first, so "eval loss" wins over a hypothetical "eval".
    for n in (2, 1):
        name = " ".join(argv[:n])
        if len(argv) >= n and name in COMMANDS:
            return name, argv[n:]
    raise UserError(f"unknown command {' '.join(argv[:2])!r}; see `tinystories --help`")


def run(argv: list[str]) -> typing.Any:
    """Parse `argv` (without the program name) and call the library function."""
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_help())
        return None
    name, rest = _find_command(argv)
    cmd = COMMANDS[name]
    if cmd.deprecated:
        print(f"tinystories: `{name}` is deprecated; use `tinystories {cmd.deprecated}`", file=sys.stderr)
    fn = _load(cmd.target)
    cls = _config_class(fn)
    parser = argparse.ArgumentParser(prog=f"tinystories {name}", description=cmd.help)
    add_options(parser, cls)
    over_cls = _load(cmd.overrides) if cmd.overrides else None
    if over_cls is not None:
        add_options(parser, over_cls, prefix=cmd.overrides_prefix, all_optional=True)
    ns = parser.parse_args(rest)
    cfg: typing.Any = build(cls, options_from(ns, cls))
    kwargs = {}
    if over_cls is not None:
        kwargs[cmd.overrides_kw] = options_from(ns, over_cls, prefix=cmd.overrides_prefix)
    return fn(cfg, **kwargs)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one-line errors and a non-zero exit for user mistakes."""
    try:
        result = run(sys.argv[1:] if argv is None else argv)
        if isinstance(result, dict):
            print(json.dumps(result, indent=2))
            sys.stdout.flush()
    except UserError as e:
        print(f"tinystories: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("tinystories: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away: stop quietly, as other shell tools do,
        # and keep Python from complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)


if __name__ == "__main__":
    main()
