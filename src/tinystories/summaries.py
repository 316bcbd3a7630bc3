"""Typed summaries of what each stage wrote into a run folder, and one reader for each.

The report (`tinystories.report`) and the pipeline's closing note read the
stages' files only through these. Each dataclass names the keys a stage file
holds that a reader shows; a reader fills it from the file by field name and
lists in `missing` every declared key the file lacked or held as another type
(nested keys dotted: `reference.source`). A key a stage writes only in some
runs (a judge's file, a control that can be switched off) is declared with
`metadata=OPTIONAL` and is not missing when absent. Readers never raise on an
odd file: what they could not read keeps its default, so a page still renders;
a test on a real run asserts that nothing is missing, so a renamed key fails
a test instead of emptying a section.

    train      config.toml, env.json, convert.json, metrics.jsonl   TrainSummary
    sample     samples/*.json, samples/*.txt                         Samples
    eval       eval/loss*.json                                        LossResult
               eval/probes.json                                       ProbesResult
               eval/diversity.json                                    DiversityResult
               eval/judge.json                                        JudgeResult
               eval/consistency.json                                  ConsistencyResult
    interpret  interp/heads.json, interp/neurons_layer*.json         (tinystories.interp.summary)
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin

from tinystories.errors import UserError
from tinystories.flops import count_params, flops_per_token
from tinystories.model import ModelConfig
from tinystories.rundir import ENV_FILE, METRICS_FILE, RunConfig, read_config

T = TypeVar("T")

OPTIONAL = {"optional": True}
"""Metadata of a key that a stage writes only in some runs: its absence is not a missing key."""

_NOT_READ = {"read": False}  # filled by the reader, not from the file

Histogram = dict[str, Any]
"""A histogram a stage binned: {"edges": [n + 1 numbers], "counts": [n numbers]}."""


def read_json(path: Path) -> tuple[Any, str | None]:
    """(the file's JSON, None), or (None, a one-line reason it could not be read)."""
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        return None, f"{path.name} could not be read ({str(e).splitlines()[0] if str(e) else type(e).__name__})"


@dataclass
class StageFile:
    """What every summary of one stage file carries besides its figures."""

    name: str = field(default="", metadata=_NOT_READ)
    """The file's name without .json (e.g. `loss_real`)."""
    raw: dict[str, Any] = field(default_factory=dict, metadata=_NOT_READ)
    """The file as written, for the report's details block (bookkeeping: settings, environment, timings)."""
    missing: list[str] = field(default_factory=list, metadata=_NOT_READ)
    """Declared keys the file lacked, or held as another type."""


S = TypeVar("S", bound=StageFile)


# --- filling a dataclass from JSON ---------------------------------------------------------------------------


def _fill(cls: type[T], data: dict[str, Any], path: str, missing: list[str]) -> T:
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.metadata.get("read") is False:
            continue
        key = f.metadata.get("key", f.name)
        if key not in data:
            if not f.metadata.get("optional"):
                missing.append(path + key)
            continue
        ok, value = _convert(hints[f.name], data[key], f"{path}{key}.", missing, f.metadata.get("entries_with"))
        if ok:
            values[f.name] = value
        else:
            missing.append(f"{path}{key} (a {type(data[key]).__name__})")
    return cls(**values)


def _convert(tp: Any, value: Any, path: str, missing: list[str], entries_with: str | None = None) -> tuple[bool, Any]:
    """(True, value as `tp`) or (False, None) when it is not of that type; values are kept as written."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None:
            return type(None) in args, None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, path, missing, entries_with) if len(inner) == 1 else (True, value)
    if tp is Any:
        return True, value
    if dataclasses.is_dataclass(tp):
        return (True, _fill(tp, value, path, missing)) if isinstance(value, dict) else (False, None)  # type: ignore[arg-type]
    if origin is list:
        if not isinstance(value, list):
            return False, None
        out = []
        for i, v in enumerate(value):
            ok, x = _convert(args[0], v, f"{path}{i}.", missing)
            if ok:
                out.append(x)
            else:
                missing.append(f"{path}{i} (a {type(v).__name__})")
        return True, out
    if origin is dict:
        if not isinstance(value, dict):
            return False, None
        kept = {}
        for k, v in value.items():
            if entries_with is not None and not (isinstance(v, dict) and entries_with in v):
                continue  # not an entry: other information beside them (e.g. what the entries measure)
            ok, x = _convert(args[1], v, f"{path}{k}.", missing)
            if ok:
                kept[k] = x
            else:
                missing.append(f"{path}{k} (a {type(v).__name__})")
        return True, kept
    if tp is float:
        return (True, value) if isinstance(value, int | float) and not isinstance(value, bool) else (False, None)
    if tp is int:
        return (True, value) if isinstance(value, int) and not isinstance(value, bool) else (False, None)
    return (True, value) if isinstance(value, tp) else (False, None)


def summary_of(cls: type[S], name: str, data: Any) -> S:
    """`cls` read from a stage file's JSON (a non-object is read as an empty one)."""
    missing: list[str] = []
    obj = data if isinstance(data, dict) else {}
    out = _fill(cls, obj, "", missing)
    out.name, out.raw, out.missing = name, obj, missing
    return out


# --- train: config.toml, env.json, convert.json, metrics.jsonl ------------------------------------------------


@dataclass
class ModelSizes:
    """Sizes of a run's model, counted from its config (the training stage does not write them)."""

    params: int
    non_embedding: int
    flops_per_token: float
    """Training FLOPs per token at the model's context length."""


def model_sizes(cfg: ModelConfig) -> ModelSizes:
    """Parameter and FLOP counts of the model `cfg` describes (counted from the config: no model is built)."""
    return ModelSizes(count_params(cfg), count_params(cfg, True), flops_per_token(cfg))


@dataclass
class Environment:
    """env.json: what produced the run (shown in the details block)."""

    time: str | None = field(default=None, metadata=OPTIONAL)
    hostname: str | None = field(default=None, metadata=OPTIONAL)
    platform: str | None = field(default=None, metadata=OPTIONAL)
    python: str | None = field(default=None, metadata=OPTIONAL)
    torch: str | None = field(default=None, metadata=OPTIONAL)
    device: str | None = field(default=None, metadata=OPTIONAL)
    threads: int | None = field(default=None, metadata=OPTIONAL)
    world_size: int | None = field(default=None, metadata=OPTIONAL)
    gpu: str | None = field(default=None, metadata=OPTIONAL)
    cpu_kernels: bool | None = field(default=None, metadata=OPTIONAL)
    git: dict[str, Any] | None = field(default=None, metadata=OPTIONAL)
    """{"sha", "dirty"} when the code ran from a git checkout."""


@dataclass
class MetricsRow:
    """One line of metrics.jsonl."""

    step: int | None = None
    tokens: int | None = None
    loss: float | None = None
    lr: float | None = None
    tokens_per_s: float | None = None
    elapsed_s: float | None = None
    val_loss: float | None = field(default=None, metadata=OPTIONAL)
    """Only on the rows where training validated."""
    raw: dict[str, Any] = field(default_factory=dict, metadata=_NOT_READ)
    """The row as written (the report shows the last one in full)."""


@dataclass
class TrainSummary:
    """The training stage's run folder: its config, the model's sizes, environment and metrics."""

    config: RunConfig | None
    """None when config.toml is missing or does not read (`config_error` says why)."""
    config_error: str | None
    sizes: ModelSizes | None
    """None when the config does not build a model."""
    environment: Environment | None
    converted_from: str | None
    """Where `tinystories convert` imported the checkpoint from (convert.json), else None."""
    metrics: list[MetricsRow]
    missing: list[str] = field(default_factory=list)


def read_metrics(run: Path) -> list[MetricsRow]:
    """The rows of metrics.jsonl (lines that are not JSON objects skipped; none when there is no file)."""
    return _metrics(run, [])


def _metrics(run: Path, missing: list[str]) -> list[MetricsRow]:
    path = run / METRICS_FILE
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if isinstance(data, dict):
                row = _fill(MetricsRow, data, "metrics.", missing)
                row.raw = data
                rows.append(row)
    return rows


def read_train(run: Path) -> TrainSummary:
    """The training stage's summary of `run` (an imported run has a config and no metrics)."""
    missing: list[str] = []
    config, error, sizes = None, None, None
    try:
        config = read_config(run)
    except UserError as e:
        error = str(e)
    if config is not None:
        try:
            sizes = model_sizes(config.model)
        except Exception:  # a config that no longer builds still gets its tables in the details
            sizes = None
    env, _ = read_json(run / ENV_FILE)
    environment = _fill(Environment, env, "env.", missing) if isinstance(env, dict) else None
    conv, _ = read_json(run / "convert.json")
    converted = str(conv.get("source", conv.get("from", ""))) if isinstance(conv, dict) else None
    rows = _metrics(run, missing)
    return TrainSummary(config, error, sizes, environment, converted, rows, list(dict.fromkeys(missing)))


# --- sample: samples/*.json and *.txt ---------------------------------------------------------------------------


@dataclass
class Sample:
    prompt: str = ""
    completion: str = ""
    names: list[str] | None = field(default=None, metadata=OPTIONAL)
    """The character names in prompt + completion (the pipeline adds them)."""


@dataclass
class SampleFile(StageFile):
    samples: list[Sample] = field(default_factory=list)


@dataclass
class Samples:
    """Every sample file of a run, in file order (.json files, then .txt ones as one completion each)."""

    items: list[tuple[str, Sample]]
    """(file name, sample)."""
    files: int
    """Sample files found, unreadable ones included."""
    errors: list[str]
    """Why a file could not be read, one line each."""
    missing: list[str]


def read_samples_file(path: Path) -> SampleFile:
    """One samples JSON file (`tinystories sample --out`); no samples when it is unreadable."""
    data, err = read_json(path)
    return summary_of(SampleFile, path.stem, data if err is None else {})


def read_samples(run: Path) -> Samples:
    folder = run / "samples"
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    items, errors, missing = [], [], []
    for f in files:
        data, err = read_json(f)
        if err:
            errors.append(err)
            continue
        if isinstance(data, dict):
            s = summary_of(SampleFile, f.stem, data)
            items += [(f.name, x) for x in s.samples]
            missing += [f"{f.name}: {m}" for m in s.missing]
    txt = sorted(folder.glob("*.txt")) if folder.is_dir() else []
    for f in txt:
        items.append((f.name, Sample("", f.read_text(encoding="utf-8", errors="replace"))))
    return Samples(items, len(files) + len(txt), errors, missing)


# --- eval: eval/*.json ------------------------------------------------------------------------------------------


@dataclass
class LossFigures:
    loss: float | None = None
    """Mean loss per token (nats)."""
    bits_per_byte: float | None = None
    perplexity: float | None = None


@dataclass
class LossResult(StageFile):
    """eval/loss*.json (`tinystories eval loss`; the pipeline writes loss_procedural and loss_real)."""

    per_story: LossFigures | None = None
    """Each story scored alone."""
    stream: LossFigures | None = None
    """The stories joined, in windows, as training's validation loss."""
    stories: int | None = None
    tokens: int | None = None
    bytes_per_token: float | None = None
    dataset: str | None = field(default=None, metadata=OPTIONAL)
    split: str | None = field(default=None, metadata=OPTIONAL)
    files: list[str] = field(default_factory=list, metadata=OPTIONAL)

    @property
    def label(self) -> str:
        """'procedural' / 'real' for the pipeline's files, else where the text came from."""
        if self.name.startswith("loss_"):
            return self.name[len("loss_"):]
        if self.dataset:
            return f"{Path(self.dataset).name} ({self.split or ''})"
        return Path(str(self.files[0])).name if self.files else self.name


@dataclass
class Accuracy:
    """Accuracy over a set of probe items with its 95% interval and chance level."""

    n: int | None = None
    accuracy: float | None = None
    ci95: list[float] | None = None
    chance: float | None = None
    significant: bool | None = None


@dataclass
class ProbesResult(Accuracy, StageFile):
    """eval/probes.json: all items, then by set, by category and by procedural kind."""

    by_source: dict[str, Accuracy] = field(default_factory=dict)
    by_category: dict[str, Accuracy] = field(default_factory=dict)
    by_kind: dict[str, Accuracy] = field(default_factory=dict)
    byte_normalised: Accuracy | None = None
    greedy: Accuracy | None = field(default=None, metadata=OPTIONAL)
    baselines: dict[str, Accuracy] = field(default_factory=dict, metadata=OPTIONAL)
    """Context-only rules scored on the same items."""
    curve: list[dict[str, Any]] | None = field(default=None, metadata=OPTIONAL)
    """Per checkpoint: {"step", "log_likelihood": {"accuracy", <category>: {"accuracy"}}}."""
    items: list[Any] | None = field(default=None, metadata=OPTIONAL)


@dataclass
class Spread:
    """A per-completion measure: its mean, median and histogram."""

    mean: float | None = None
    median: float | None = None
    histogram: Histogram | None = None


@dataclass
class Measured(Spread):
    reference: Spread | None = None
    """The same measure on the true continuations."""


@dataclass
class Closest(Measured):
    closest_is_source: int | None = field(default=None, metadata=OPTIONAL)
    """Completions whose closest training story is the one they were cut from."""
    n: int | None = None


@dataclass
class KGramsReference:
    never_share: float | None = None
    """Share of distinct k-grams that never occur in the corpus."""
    histogram: Histogram | None = None


@dataclass
class KGrams(KGramsReference):
    reference: KGramsReference | None = None


@dataclass
class DiversitySampling:
    stories: int | None = None
    """Training stories cut and completed."""


@dataclass
class DiversityResult(StageFile):
    """eval/diversity.json: the memorization and diversity measures, each beside the true continuations'."""

    completion_vs_original: Spread | None = None
    between_generations: Measured | None = None
    closest_training_story: dict[str, Closest] = field(default_factory=dict, metadata={"entries_with": "histogram"})
    """By measure (rouge2, rouge3, ...)."""
    kgrams_in_corpus: dict[str, KGrams] = field(default_factory=dict, metadata={"entries_with": "histogram"})
    """By k ("2" .. "5")."""
    sampling: DiversitySampling | None = None
    items: list[Any] | None = field(default=None, metadata=OPTIONAL)


@dataclass
class JudgeScore:
    mean: float | None = None
    ci95: list[float] | None = None
    n: int | None = None
    groups: int | None = None
    """Story beginnings the interval resamples."""


@dataclass
class JudgeParse:
    graded: int | None = None
    missing: int | None = None
    """Answers the judge gave that could not be read."""
    failure_rate: float | None = None


@dataclass
class JudgeSettings:
    model: str | None = None


@dataclass
class JudgeResult(StageFile):
    """eval/judge.json: the LLM judge's mean scores with bootstrap intervals."""

    scores: dict[str, JudgeScore | None] = field(default_factory=dict)
    parse: JudgeParse | None = None
    judge: JudgeSettings | None = None
    not_comparable: Any = field(default=None, metadata=OPTIONAL)
    """Why the scores are not comparable with the paper's, when they are not."""
    completions: list[Any] | None = field(default=None, metadata=OPTIONAL)


@dataclass
class NameFigures:
    median_distinct_names: float | None = None
    protagonist_kept_share: float | None = None
    said_once_share: float | None = field(default=None, metadata=OPTIONAL)
    """The share of stories that name someone only once (a stranger, or a dropped hero)."""
    one_name_for_two_share: float | None = field(default=None, metadata=OPTIONAL)
    """The share of stories that give one name to two characters ("Tom had a best friend named Tom")."""


@dataclass
class NamesReference(NameFigures):
    source: str | None = None
    n_stories: int | None = None


@dataclass
class ConsistencyResult(NameFigures, StageFile):
    """eval/consistency.json: character names per sample, beside real stories (the pipeline's sample stage)."""

    n_samples: int | None = None
    reference: NamesReference | None = field(default=None, metadata=OPTIONAL)
    """The same on real stories, when the recipe scores some."""


EVAL_FILES: dict[str, type[StageFile]] = {
    "probes": ProbesResult, "diversity": DiversityResult, "judge": JudgeResult, "consistency": ConsistencyResult,
}
"""Eval files with a typed summary, by name (loss files: `is_loss`)."""


def is_loss(name: str) -> bool:
    return name == "loss" or name.startswith("loss_")


@dataclass
class EvalFile:
    """One file of eval/: its typed summary when it is a known one, else its data as written."""

    file: str
    data: Any
    error: str | None
    summary: StageFile | None

    @property
    def name(self) -> str:
        return Path(self.file).stem


def read_eval_file(path: Path) -> EvalFile:
    data, err = read_json(path)
    cls = LossResult if is_loss(path.stem) else EVAL_FILES.get(path.stem)
    summary = summary_of(cls, path.stem, data) if cls is not None and err is None and isinstance(data, dict) else None
    return EvalFile(path.name, data, err, summary)


def read_evals(run: Path) -> list[EvalFile]:
    """Every eval/*.json of `run`, sorted by name."""
    folder = run / "eval"
    return [read_eval_file(f) for f in (sorted(folder.glob("*.json")) if folder.is_dir() else [])]


def read_eval(run: Path, cls: type[S], name: str) -> S | None:
    """eval/<name>.json of `run` as `cls`, or None when it is absent, unreadable or empty."""
    f = read_eval_file(run / "eval" / f"{name}.json")
    return f.summary if isinstance(f.summary, cls) and f.summary.raw else None


def read_losses(run: Path) -> list[LossResult]:
    """eval/loss*.json of `run`, sorted by name."""
    return [f.summary for f in read_evals(run) if isinstance(f.summary, LossResult)]
