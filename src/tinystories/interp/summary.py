"""Typed summaries of what the interpretability stage wrote: interp/heads.json and interp/neurons_layer*.json.

Read as `tinystories.summaries` reads every stage file: by field name, with
declared keys the file lacks listed in `missing`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from tinystories.summaries import OPTIONAL, StageFile, read_json, summary_of

# --- interpret: interp/heads.json, interp/neurons_layer*.json ---------------------------------------------------


@dataclass
class Head:
    layer: int = 0
    head: int = 0
    kind: str = "other"
    """induction, distance, semantic or other."""
    positional: float = math.nan
    semantic: float = math.nan
    semantic_same_word: float | None = None
    semantic_entity: float | None = None
    mean_distance: float = math.nan
    norm_entropy: float = math.nan
    first_token: float | None = None
    offsets: list[list[float]] = field(default_factory=list)
    """[offset, mean attention] of the head's three most attended offsets."""
    induction: float | None = field(default=None, metadata=OPTIONAL)
    """Mean attention to the token after the query's earlier copy, on repeated random tokens (files before the
    induction test lack it, as they lack every induction field below)."""
    duplicate: float | None = field(default=None, metadata=OPTIONAL)
    """Mean attention to the query's earlier copy, on repeated random tokens."""


@dataclass
class HeadCounts:
    induction: int | None = field(default=None, metadata=OPTIONAL)
    distance: int | None = None
    semantic: int | None = None
    other: int | None = None


@dataclass
class CopyLoss:
    """Mean loss (nats/token) on the first and on the second copy of repeated random tokens."""

    first: float = math.nan
    second: float = math.nan


@dataclass
class RandomInitControl:
    counts: HeadCounts | None = None
    max_semantic: float | None = None
    max_induction: float | None = field(default=None, metadata=OPTIONAL)
    copy_loss: CopyLoss | None = field(default=None, metadata=OPTIONAL)


@dataclass
class ShuffledControl:
    correlation_all: float | None = None
    correlation_distance: float | None = None
    counts: HeadCounts | None = None


@dataclass
class HeadControls:
    random_init: RandomInitControl | None = None
    shuffled: ShuffledControl | None = None


@dataclass
class AttentionText:
    """The attention maps of one text: every layer's and head's pattern as uint8, base64."""

    tokens: list[str] = field(default_factory=list)
    shape: list[int] = field(default_factory=list)
    patterns_u8: str = ""


@dataclass
class HeadsResult(StageFile):
    """interp/heads.json: every head's scores and class, the controls and the attention maps."""

    source: str | None = None
    stories: int | None = None
    tokens: int | None = None
    thresholds: dict[str, float] = field(default_factory=dict)
    counts: HeadCounts | None = None
    heads: list[Head] = field(default_factory=list)
    copy_loss: CopyLoss | None = field(default=None, metadata=OPTIONAL)
    """The induction test's loss on each copy; None in files written before it."""
    controls: HeadControls | None = field(default=None, metadata=OPTIONAL)
    text: AttentionText | None = None


@dataclass
class Example:
    activation: float = math.nan
    token: str | None = None
    sentence: str = ""
    span: list[int] = field(default_factory=lambda: [0, 0])
    """Character span of the token in `sentence`."""


@dataclass
class Neuron:
    neuron: int = 0
    label: str = ""
    score: float = math.nan
    percentile: float = math.nan
    word_share: float | None = None
    class_share: float | None = None
    max_activation: float | None = None
    examples: list[Example] = field(default_factory=list, metadata=OPTIONAL)
    """Only for the neurons shown in full."""
    strongest: bool = field(default=False, metadata=OPTIONAL)


@dataclass
class Detector:
    """A neuron scored as a detector of the protagonist's first mention."""

    neuron: int = 0
    average_precision: float = math.nan
    percentile: float = math.nan
    precision: float = math.nan
    recall: float = math.nan
    fires: int = 0
    examples: list[Example] = field(default_factory=list, metadata=OPTIONAL)


@dataclass
class RandomAP:
    median: float = math.nan
    p99: float = math.nan


@dataclass
class Protagonist:
    source: str | None = None
    positives: int = 0
    tokens: int = 0
    base_rate: float = math.nan
    random_ap: RandomAP = field(default_factory=RandomAP)
    best: list[Detector] = field(default_factory=list)


@dataclass
class NeuronCounts:
    neurons: int = 0
    above_random_p95: int = 0
    median_percentile: float = math.nan
    labels: dict[str, int] = field(default_factory=dict)
    """Neurons per label, the most common first."""


@dataclass
class RandomDirections:
    directions: int | None = None
    scores: list[float] = field(default_factory=list)


@dataclass
class NeuronsResult(StageFile):
    """interp/neurons_layer{L}.json: one layer's MLP neurons, labelled and scored against random directions."""

    layer: int = 0
    site: str | None = None
    source: str | None = None
    stories: int | None = None
    tokens: int | None = None
    top_k: int | None = None
    summary: NeuronCounts = field(default_factory=NeuronCounts)
    random: RandomDirections = field(default_factory=RandomDirections)
    shown: list[int] = field(default_factory=list)
    """Indices of the neurons shown in full."""
    neurons: list[Neuron] = field(default_factory=list)
    protagonist: Protagonist | None = None


@dataclass
class Interp:
    """The interpretability stage's files of a run."""

    heads: HeadsResult | None
    """None when interp/heads.json is absent or cannot be shown (`heads_error` then says why)."""
    heads_error: str | None
    neuron_files: list[NeuronsResult | str]
    """Each interp/neurons_layer*.json in name order: its summary, or why it cannot be shown."""

    @property
    def neurons(self) -> list[NeuronsResult]:
        return [f for f in self.neuron_files if isinstance(f, NeuronsResult)]

    @property
    def missing(self) -> list[str]:
        files = [*([self.heads] if self.heads else []), *self.neurons]
        return [f"{f.name}: {m}" for f in files for m in f.missing]


def read_interp(run: Path) -> Interp:
    folder = run / "interp"
    heads, heads_error = None, None
    if (folder / "heads.json").is_file():
        data, err = read_json(folder / "heads.json")
        if err or not isinstance(data, dict) or not data.get("heads"):
            heads_error = err or "interp/heads.json has no heads"
        else:
            heads = summary_of(HeadsResult, "heads", data)
    files: list[NeuronsResult | str] = []
    for f in sorted(folder.glob("neurons_layer*.json")) if folder.is_dir() else []:
        data, err = read_json(f)
        if err or not isinstance(data, dict) or "neurons" not in data:
            files.append(err or f.name + " has no neurons")
        else:
            files.append(summary_of(NeuronsResult, f.stem, data))
    return Interp(heads, heads_error, files)
