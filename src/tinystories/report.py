"""`tinystories report`: one self-contained HTML page that shows a run.

The report only renders what stages wrote into the run folder; it computes
nothing about the model. Sections (their HTML ids): `config` (config.toml and
sizes), `training` (metrics.jsonl curves), `samples` (samples/*.json from
`tinystories sample --out`), `eval` (every eval/*.json: tables of its numbers,
histograms of its number lists, curves of its per-step lists), `heads`
(interp/heads.json) and `neurons` (interp/neurons_layer*.json), then
`findings`, a closing note that reads the interpretability results against the
paper's observations. A stage with no output yet gets a "not run" line with
the command that makes it. Plots are matplotlib PNGs embedded as data URIs and
the attention maps are drawn by a few lines of inline script, so the file opens
anywhere with no network.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinystories.errors import UserError


@dataclass
class ReportConfig:
    """`tinystories report`: render a run folder into one HTML file."""

    run: str = ""
    """Run folder to report on."""
    out: str = ""
    """Output file; default: <run>/report.html."""
    max_samples: int = 12
    """Samples shown at most."""


EVAL_STAGES = {
    "loss": "tinystories eval loss --run {run}",
    "probes": "tinystories eval probes --run {run}",
    "judge": "tinystories eval judge --run {run}",
    "diversity": "tinystories eval diversity --run {run}",
}
"""Evaluations the report knows by name (any other eval/*.json is shown too)."""


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _read_json(path: Path) -> tuple[Any, str | None]:
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        return None, f"{path.name} could not be read ({str(e).splitlines()[0] if str(e) else type(e).__name__})"


def not_run(what: str, command: str) -> str:
    return f'<p class="notrun">not run: {esc(what)} — <code>{esc(command)}</code></p>'


def fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return esc(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return esc(v)
        return f"{v:,.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"
    if isinstance(v, int):
        return f"{v:,}"
    return esc(v)


def table(rows: list[list[Any]], header: list[str] | None = None, cls: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header) if header else ""
    body = "".join("<tr>" + "".join(f"<td>{c if isinstance(c, Raw) else fmt(c)}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f'<table class="{cls}">' + (f"<thead><tr>{head}</tr></thead>" if head else "") + f"<tbody>{body}</tbody></table>"


class Raw(str):
    """HTML that `table` inserts as is."""


# --- plots ---------------------------------------------------------------------------------------


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display), or a clear error when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        raise UserError("plots need matplotlib: pip install 'tinystories[report]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(fig: Any) -> str:
    """A matplotlib figure as an <img> with a data URI (the figure is closed)."""
    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode("ascii")}">'


def line_plot(xs: list[float], series: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str,
              logy: bool = False) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for name, pts in series.items():
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name, marker="." if len(pts) < 30 else None)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    return png(fig)


def histogram(values: list[float], title: str, reference: list[float] | None = None, ref_label: str = "") -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.0))
    bins = 30
    if reference:
        ax.hist(reference, bins=bins, alpha=0.5, density=True, label=ref_label)
    ax.hist(values, bins=bins, alpha=0.6, density=bool(reference), label=title if reference else None)
    ax.set_title(title, fontsize=10)
    if reference:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return png(fig)


# --- sections ---------------------------------------------------------------------------------------


def section_config(run: Path) -> str:
    from tinystories.run import read_config

    try:
        cfg = read_config(run)
    except UserError as e:
        return f"<p class='notrun'>{esc(e)}</p>"
    from dataclasses import asdict

    from tinystories.model import GPT

    parts = []
    try:
        import torch

        with torch.device("meta"):
            model = GPT(cfg.model)
        sizes = [["parameters", model.num_params()], ["non-embedding parameters", model.num_params(True)],
                 ["training FLOPs per token", model.flops_per_token()],
                 ["layers x heads", f"{cfg.model.n_layer} x {cfg.model.n_head}"],
                 ["d_model / d_ff / head_dim", f"{cfg.model.d_model} / {cfg.model.ff_dim} / {cfg.model.head_dim}"]]
        parts.append("<h3>Sizes</h3>" + table(sizes))
    except Exception as e:  # a config that no longer builds still gets its table below
        parts.append(f"<p>sizes unavailable: {esc(e)}</p>")
    parts.append("<details><summary>model</summary>" + table([[k, v] for k, v in asdict(cfg.model).items()]) + "</details>")
    if cfg.train is not None:
        parts.append("<details><summary>train</summary>" + table([[k, v] for k, v in asdict(cfg.train).items()])
                     + "</details>")
    if cfg.data:
        parts.append("<details><summary>data</summary>" + table([[k, v] for k, v in cfg.data.items()]) + "</details>")
    env, _ = _read_json(run / "env.json")
    if isinstance(env, dict):
        keys = ("time", "hostname", "platform", "python", "torch", "device", "threads", "world_size", "gpu")
        rows = [[k, env[k]] for k in keys if k in env]
        if isinstance(env.get("git"), dict):
            rows.append(["git", f"{env['git'].get('sha', '')}{' (dirty)' if env['git'].get('dirty') else ''}"])
        parts.append("<details><summary>environment</summary>" + table(rows) + "</details>")
    conv, _ = _read_json(run / "convert.json")
    if isinstance(conv, dict):
        parts.append("<p>imported with <code>tinystories convert</code>: "
                     + esc(conv.get("source", conv.get("from", ""))) + "</p>")
    return "".join(parts)


def section_training(run: Path) -> str:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return not_run("training (no metrics.jsonl; imported checkpoints have none)",
                       f"tinystories train --run {run} --data DATASET")
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    if not rows:
        return not_run("training (metrics.jsonl is empty)", f"tinystories train --run {run}")
    x = "tokens" if all("tokens" in r for r in rows) else "step"
    loss = [(r[x], r["loss"]) for r in rows if "loss" in r]
    val = [(r[x], r["val_loss"]) for r in rows if "val_loss" in r]
    out = [line_plot([], {"train loss": loss, "val loss": val}, x, "loss (nats / token)")]
    lr = [(r[x], r["lr"]) for r in rows if "lr" in r]
    tps = [(r[x], r["tokens_per_s"]) for r in rows if "tokens_per_s" in r]
    if lr:
        out.append(line_plot([], {"learning rate": lr}, x, "lr"))
    if tps:
        out.append(line_plot([], {"tokens / s": tps}, x, "tokens / s"))
    last = rows[-1]
    out.append(table([[k, v] for k, v in last.items()], ["last logged", ""]))
    return "".join(out)


def section_samples(run: Path, limit: int) -> str:
    files = sorted((run / "samples").glob("*.json")) if (run / "samples").is_dir() else []
    items, notes = [], []
    for f in files:
        data, err = _read_json(f)
        if err:
            notes.append(err)
            continue
        for s in data.get("samples", []) if isinstance(data, dict) else []:
            items.append((f.name, s))
    txt = sorted((run / "samples").glob("*.txt")) if (run / "samples").is_dir() else []
    for f in txt:
        items.append((f.name, {"prompt": "", "completion": f.read_text(encoding="utf-8", errors="replace")}))
    if not items:
        return not_run("samples", f"tinystories sample --run {run} --out {run}/samples/samples.json") + "".join(
            f"<p>{esc(n)}</p>" for n in notes)
    out = [f"<p>{len(items)} samples from {len(files) + len(txt)} file(s); {min(limit, len(items))} shown.</p>"]
    for name, s in items[:limit]:
        out.append(f'<div class="sample"><span class="src">{esc(name)}</span><b>{esc(s.get("prompt", ""))}</b>'
                   f'{esc(s.get("completion", ""))}</div>')
    return "".join(out)


def _flatten(obj: Any, prefix: str = "") -> tuple[list[list[Any]], dict[str, list[float]], dict[str, list[dict]]]:
    """Scalars as (key, value) rows, lists of numbers, and lists of per-step records, by dotted key."""
    scalars: list[list[Any]] = []
    numbers: dict[str, list[float]] = {}
    curves: dict[str, list[dict]] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            s, n, c = _flatten(v, f"{prefix}{k}.")
            scalars += s
            numbers.update(n)
            curves.update(c)
    elif isinstance(obj, list):
        key = prefix.rstrip(".")
        if obj and all(isinstance(v, int | float) and not isinstance(v, bool) for v in obj):
            if len(obj) >= 5:
                numbers[key] = [float(v) for v in obj]
            else:
                scalars.append([key, ", ".join(fmt(v) for v in obj)])
        elif obj and all(isinstance(v, dict) and ("step" in v or "tokens" in v) for v in obj):
            curves[key] = obj
        elif obj and all(isinstance(v, str | int | float | bool) for v in obj):
            scalars.append([key, ", ".join(str(v) for v in obj[:20]) + (" ..." if len(obj) > 20 else "")])
        elif obj:
            scalars.append([key, f"{len(obj)} records"])
    else:
        scalars.append([prefix.rstrip("."), obj])
    return scalars, numbers, curves


def render_eval(name: str, data: Any) -> str:
    scalars, numbers, curves = _flatten(data)
    out = [f'<h3 id="eval-{esc(name)}">{esc(name)}</h3>']
    if scalars:
        shown = scalars[:150]
        out.append(table(shown, ["key", "value"], "kv"))
        if len(scalars) > len(shown):
            out.append(f"<p>{len(scalars) - len(shown)} more values in the file.</p>")
    for key, values in list(numbers.items())[:6]:
        out.append(f"<p>{esc(key)}: histogram of {len(values)} values</p>" + histogram(values, key))
    for key, recs in list(curves.items())[:4]:
        x = "step" if all("step" in r for r in recs) else "tokens"
        metrics = [k for k, v in recs[0].items() if k != x and isinstance(v, int | float) and not isinstance(v, bool)]
        series = {m: [(r[x], r[m]) for r in recs if isinstance(r.get(m), int | float)] for m in metrics[:6]}
        out.append(f"<p>{esc(key)}: curve over {esc(x)}</p>" + line_plot([], series, x, "value"))
    return "".join(out)


def section_eval(run: Path) -> str:
    folder = run / "eval"
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    present = {f.stem for f in files}
    out = []
    for f in files:
        data, err = _read_json(f)
        out.append(f"<p class='notrun'>{esc(err)}</p>" if err else render_eval(f.stem, data))
    for stage, cmd in EVAL_STAGES.items():
        if stage not in present:
            out.append(not_run(f"eval {stage}", cmd.format(run=run)))
    return "".join(out)


# --- heads -------------------------------------------------------------------------------------


MAP_SCRIPT = r"""
(function () {
  var box = document.getElementById('attn-data');
  if (!box) { return; }
  var d = JSON.parse(box.textContent);
  var raw = atob(d.patterns_u8), n = raw.length, bytes = new Uint8Array(n);
  for (var i = 0; i < n; i++) { bytes[i] = raw.charCodeAt(i); }
  var L = d.shape[0], H = d.shape[1], T = d.shape[2];
  var layerSel = document.getElementById('attn-layer'), headSel = document.getElementById('attn-head');
  var canvas = document.getElementById('attn-canvas'), info = document.getElementById('attn-info');
  var toks = document.getElementById('attn-tokens');
  for (var l = 0; l < L; l++) { layerSel.add(new Option('layer ' + l, l)); }
  for (var h = 0; h < H; h++) { headSel.add(new Option('head ' + h, h)); }
  function relabel() {
    for (var h = 0; h < H; h++) {
      var k = d.kinds[layerSel.value + '.' + h];
      headSel.options[h].text = 'head ' + h + (k ? ': ' + k : '');
    }
  }
  var cell = Math.max(2, Math.min(8, Math.floor(560 / T)));
  canvas.width = canvas.height = cell * T;
  function viridis(t) {
    var stops = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
    var x = Math.min(0.9999, Math.max(0, t)) * (stops.length - 1), i = Math.floor(x), f = x - i;
    var a = stops[i], b = stops[i + 1];
    return 'rgb(' + Math.round(a[0] + f * (b[0] - a[0])) + ',' + Math.round(a[1] + f * (b[1] - a[1])) + ','
      + Math.round(a[2] + f * (b[2] - a[2])) + ')';
  }
  function at(l, h, q, k) { return bytes[((l * H + h) * T + q) * T + k] / 255; }
  function draw() {
    var ctx = canvas.getContext('2d'), l = +layerSel.value, h = +headSel.value;
    for (var q = 0; q < T; q++) {
      for (var k = 0; k < T; k++) { ctx.fillStyle = viridis(at(l, h, q, k)); ctx.fillRect(k * cell, q * cell, cell, cell); }
    }
  }
  var spans = [];
  d.tokens.forEach(function (t, i) {
    var s = document.createElement('span'); s.textContent = t; s.className = 'tok';
    s.addEventListener('mouseenter', function () { showRow(i); });
    toks.appendChild(s); spans.push(s);
  });
  function showRow(q) {
    var l = +layerSel.value, h = +headSel.value;
    spans.forEach(function (s, k) {
      var w = k <= q ? at(l, h, q, k) : 0;
      s.style.background = k === q ? '#ffd54f' : 'rgba(220, 40, 40,' + w + ')';
    });
  }
  canvas.addEventListener('mousemove', function (e) {
    var r = canvas.getBoundingClientRect();
    var k = Math.floor((e.clientX - r.left) / cell), q = Math.floor((e.clientY - r.top) / cell);
    if (q < 0 || k < 0 || q >= T || k >= T) { return; }
    info.textContent = 'query ' + q + ' ' + JSON.stringify(d.tokens[q]) + ' -> key ' + k + ' '
      + JSON.stringify(d.tokens[k]) + ': ' + at(+layerSel.value, +headSel.value, q, k).toFixed(3);
    showRow(q);
  });
  layerSel.addEventListener('change', function () { relabel(); draw(); });
  headSel.addEventListener('change', draw);
  relabel(); draw();
  window.attnReady = true;
})();
"""


def section_heads(run: Path) -> tuple[str, dict[str, Any] | None]:
    path = run / "interp" / "heads.json"
    if not path.is_file():
        return not_run("attention heads", f"tinystories interpret heads --run {run}"), None
    data, err = _read_json(path)
    if err or not isinstance(data, dict) or "heads" not in data:
        return f"<p class='notrun'>{esc(err or 'interp/heads.json has no heads')}</p>", None
    heads = data["heads"]
    th = data.get("thresholds", {})
    c = data.get("counts", {})
    out = [f"<p>{fmt(data.get('stories'))} stories ({fmt(data.get('tokens'))} tokens) from {esc(data.get('source'))}. "
           f"<b>{c.get('distance', 0)}</b> distance-based, <b>{c.get('semantic', 0)}</b> semantic, "
           f"{c.get('other', 0)} other heads. Thresholds: positional score (R²) ≥ {fmt(th.get('positional'))}; "
           f"semantic excess ≥ {fmt(th.get('semantic'))}; heads with normalised entropy above "
           f"{fmt(th.get('max_entropy'))} count as other.</p>"]
    ctl = data.get("controls")
    if ctl:
        ri, sh = ctl.get("random_init", {}), ctl.get("shuffled", {})
        out.append(table([
            ["random-init copy: semantic heads", ri.get("counts", {}).get("semantic")],
            ["random-init copy: largest semantic score", ri.get("max_semantic")],
            ["shuffled tokens: correlation of positional scores (all heads)", sh.get("correlation_all")],
            ["shuffled tokens: correlation over distance heads", sh.get("correlation_distance")],
            ["shuffled tokens: semantic heads left", sh.get("counts", {}).get("semantic")],
        ], ["control", "value"]))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    colors = {"distance": "tab:blue", "semantic": "tab:red", "other": "tab:gray"}
    for kind, col in colors.items():
        hs = [h for h in heads if h["kind"] == kind]
        ax.scatter([max(h["positional"], -0.5) for h in hs], [h["semantic"] for h in hs], c=col, label=kind, s=18)
    ax.axvline(th.get("positional", 0.5), ls="--", c="k", lw=0.7)
    ax.axhline(th.get("semantic", 0.05), ls="--", c="k", lw=0.7)
    ax.set_xlabel("positional score (R², clipped at -0.5)")
    ax.set_ylabel("semantic score (excess attention)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    out.append(png(fig))
    rows = [[f"{h['layer']}.{h['head']}", Raw(f'<span class="k-{esc(h["kind"])}">{esc(h["kind"])}</span>'),
             h["positional"], h["semantic"], h.get("semantic_same_word"), h.get("semantic_entity"),
             h["mean_distance"], h["norm_entropy"], h.get("first_token"),
             ", ".join(f"{d}:{w:.2f}" for d, w in h.get("offsets", []))] for h in heads]
    out.append("<details open><summary>all heads</summary>" + table(
        rows, ["head", "class", "positional", "semantic", "same word", "entity", "mean distance",
               "norm. entropy", "first token", "top offsets: weight"], "num") + "</details>")
    text = data.get("text")
    if isinstance(text, dict) and "patterns_u8" in text:
        payload = {"tokens": text["tokens"], "shape": text["shape"], "patterns_u8": text["patterns_u8"],
                   "kinds": {f"{h['layer']}.{h['head']}": h["kind"] for h in heads}}
        blob = json.dumps(payload).replace("</", "<\\/")
        out.append(
            "<h3>Attention maps</h3><p>Rows are queries, columns keys (viridis: 0 dark, 1 yellow), as the paper's "
            "Figures 19-20. Hover the map or the tokens below to see where a token looks.</p>"
            '<p><select id="attn-layer"></select> <select id="attn-head"></select> <span id="attn-info"></span></p>'
            '<canvas id="attn-canvas"></canvas><div id="attn-tokens"></div>'
            f'<script type="application/json" id="attn-data">{blob}</script>')
    return "".join(out), data


# --- neurons --------------------------------------------------------------------------------


def highlighted(ex: dict[str, Any]) -> str:
    s, (a, b) = ex["sentence"], ex["span"]
    return f"{esc(s[:a])}<mark>{esc(s[a:b])}</mark>{esc(s[b:])}"


def render_neuron(n: dict[str, Any], title: str) -> str:
    exs = "".join(f"<li><span class='act'>{ex['activation']:.2f}</span> {highlighted(ex)}</li>"
                  for ex in n.get("examples", []))
    return (f"<div class='neuron'><h4>{esc(title)}: {esc(n.get('label', ''))}</h4>"
            f"<p>score {fmt(n.get('score'))} (word share {fmt(n.get('word_share'))}, class share "
            f"{fmt(n.get('class_share'))}), percentile among random directions <b>{fmt(n.get('percentile'))}</b>, "
            f"max activation {fmt(n.get('max_activation'))}</p><ol>{exs}</ol></div>")


def section_neurons(run: Path) -> tuple[str, list[dict[str, Any]]]:
    files = sorted((run / "interp").glob("neurons_layer*.json")) if (run / "interp").is_dir() else []
    if not files:
        return not_run("MLP neurons", f"tinystories interpret neurons --run {run}"), []
    out, found = [], []
    for f in files:
        data, err = _read_json(f)
        if err or not isinstance(data, dict) or "neurons" not in data:
            out.append(f"<p class='notrun'>{esc(err or f.name + ' has no neurons')}</p>")
            continue
        found.append(data)
        s, layer = data["summary"], data["layer"]
        out.append(f"<h3>Layer {layer} ({esc(data.get('site'))})</h3>"
                   f"<p>{fmt(data.get('stories'))} stories, {fmt(data.get('tokens'))} tokens from {esc(data.get('source'))}; "
                   f"score over the top {data.get('top_k')} activations. {s['above_random_p95']} of {s['neurons']} "
                   f"neurons score above the 95th percentile of {data['random']['directions']} random directions "
                   f"(median neuron percentile {fmt(s['median_percentile'])}).</p>")
        out.append(histogram([n["score"] for n in data["neurons"]], "neurons", data["random"]["scores"],
                             "random directions"))
        out.append(table([[k, v] for k, v in s["labels"].items()], ["label", "neurons"]))
        for idx in data.get("shown", []):
            n = data["neurons"][idx]
            tag = " (largest activation)" if n.get("strongest") else ""
            out.append(render_neuron(n, f"Layer {layer}, neuron {idx}{tag}"))
        p = data.get("protagonist")
        if p:
            rows = [[b["neuron"], b["average_precision"], b["percentile"], b["precision"], b["recall"], b["fires"]]
                    for b in p["best"]]
            out.append(f"<h4>Protagonist's first mention ({esc(p.get('source'))})</h4>"
                       f"<p>{p['positives']} of {p['tokens']} tokens are the protagonist's first mention "
                       f"(base rate {p['base_rate']:.4f}); random directions: median AP {p['random_ap']['median']:.4f}, "
                       f"99th percentile {p['random_ap']['p99']:.4f}. Precision / recall: the neuron fires when it "
                       "reaches half its largest activation.</p>"
                       + table(rows, ["neuron", "average precision", "percentile", "precision", "recall", "fires"]))
            if p["best"] and p["best"][0].get("examples"):
                out.append(render_neuron({"label": "best protagonist detector", **p["best"][0]},
                                         f"Layer {layer}, neuron {p['best'][0]['neuron']}"))
        rows = [[n["neuron"], n["label"], n["score"], n["percentile"]] for n in data["neurons"]]
        out.append("<details><summary>all neurons</summary>" + table(rows, ["neuron", "label", "score", "percentile"],
                                                                       "num") + "</details>")
    return "".join(out), found


# --- findings ----------------------------------------------------------------------------------


def findings(heads: dict[str, Any] | None, neurons: list[dict[str, Any]]) -> str:
    """What the interpretability stages found, next to what the paper observed."""
    if heads is None and not neurons:
        return not_run("interpretability findings", "tinystories interpret heads / neurons")
    items = []
    if heads is not None:
        hs = heads["heads"]
        dist = [h for h in hs if h["kind"] == "distance"]
        sem = [h for h in hs if h["kind"] == "semantic"]
        offs = ", ".join(map(str, sorted({h["offsets"][0][0] for h in dist if h.get("offsets")}))) or "-"
        dist_names = ", ".join(f"{h['layer']}.{h['head']}" for h in dist) or "none"
        sem_names = ", ".join(f"{h['layer']}.{h['head']}" for h in sem) or "none"
        txt = (f"{len(dist)} of {len(hs)} heads are distance-based ({dist_names}; preferred offsets {offs}), "
               f"{len(sem)} semantic ({sem_names}).")
        ctl = heads.get("controls")
        if ctl:
            txt += (f" Controls: the random-init copy has {ctl['random_init']['counts']['semantic']} semantic heads; "
                    f"shuffling tokens keeps positional scores (r = {fmt(ctl['shuffled']['correlation_all'])}) and "
                    f"leaves {ctl['shuffled']['counts']['semantic']} semantic heads.")
        txt += (" The paper (1-layer, 16-head model) saw several distance heads with different distances and three "
                "semantic heads (the/a to 'banana', to 'park', to the names).")
        items.append(txt)
    for n in neurons:
        s = n["summary"]
        top = [x for x in n["neurons"] if x["percentile"] >= 95][:6]
        roles = ", ".join(f"neuron {x['neuron']} ({x['label']}, {x['percentile']:.0f}th)" for x in top) or "none"
        labels = ", ".join(f"{k} {v}" for k, v in list(s["labels"].items())[:6])
        txt = (f"Layer {n['layer']}: {s['above_random_p95']} of {s['neurons']} neurons beat 95% of random "
               f"directions; clear roles: {roles}. Labels: {labels}.")
        p = n.get("protagonist")
        if p and p["best"]:
            b = p["best"][0]
            txt += (f" Best protagonist-first-mention neuron: {b['neuron']} (AP {b['average_precision']:.3f} vs random "
                    f"p99 {p['random_ap']['p99']:.3f}, precision {b['precision']:.2f}, recall {b['recall']:.2f}).")
        txt += (" The paper (1M model, penultimate layer) found neurons for subject pronouns, actions, adjectives "
                "and the protagonist's first mention.")
        items.append(txt)
    return "<ul>" + "".join(f"<li>{esc(t)}</li>" for t in items) + "</ul>"


# --- the page ---------------------------------------------------------------------------------


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; font-size: 13px; margin: .5em 0; }
td, th { border: 1px solid #ddd; padding: 2px 6px; text-align: left; vertical-align: top; }
table.num td { font-variant-numeric: tabular-nums; }
.notrun { color: #8a5a00; background: #fff6e0; padding: .3em .6em; border-left: 3px solid #e0a000; }
.sample { white-space: pre-wrap; border: 1px solid #ddd; padding: .5em; margin: .5em 0; font-size: 14px; }
.sample .src { float: right; color: #888; font-size: 11px; }
mark { background: #ff6b6b; color: #000; }
.neuron ol { font-size: 14px; } .act { color: #888; font-size: 11px; }
.k-distance { color: #1f77b4; } .k-semantic { color: #d62728; font-weight: bold; } .k-other { color: #777; }
#attn-tokens { line-height: 1.9; margin: .5em 0; } .tok { white-space: pre; border-radius: 2px; }
#attn-canvas { image-rendering: pixelated; border: 1px solid #ccc; }
nav a { margin-right: 1em; }
"""


def render(run: Path, cfg: ReportConfig) -> str:
    heads_html, heads = section_heads(run)
    neurons_html, neurons = section_neurons(run)
    sections = [
        ("config", "Configuration and sizes", section_config(run)),
        ("training", "Training", section_training(run)),
        ("samples", "Samples", section_samples(run, cfg.max_samples)),
        ("eval", "Evaluations", section_eval(run)),
        ("heads", "Attention heads", heads_html),
        ("neurons", "MLP neurons", neurons_html),
        ("findings", "Findings", findings(heads, neurons)),
    ]
    nav = "".join(f'<a href="#{sid}">{esc(title)}</a>' for sid, title, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{esc(title)}</h2>{content}</section>' for sid, title, content in sections)
    script = f"<script>{MAP_SCRIPT}</script>" if heads is not None and "attn-data" in heads_html else ""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>tinystories report: {esc(run.name)}'
            f"</title><style>{STYLE}</style></head><body><h1>Run <code>{esc(run)}</code></h1><nav>{nav}</nav>"
            f"{body}{script}</body></html>")


def report(cfg: ReportConfig) -> dict[str, Any]:
    """Write the run's HTML report (default <run>/report.html)."""
    from tinystories.io import atomic_write_text

    if not cfg.run:
        raise UserError("--run is required: the run folder to report on")
    run = Path(cfg.run)
    if not run.is_dir():
        raise UserError(f"no run folder at {run}")
    page = render(run, cfg)
    out = Path(cfg.out) if cfg.out else run / "report.html"
    atomic_write_text(out, page)
    return {"written": os.fspath(out), "bytes": len(page.encode("utf-8"))}
