"""The sections of a run's page: configuration, training, samples, attention heads, neurons, findings."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tinystories.interp.summary import (
    Example,
    Head,
    HeadCounts,
    Interp,
    Neuron,
    NeuronsResult,
    RandomInitControl,
    ShuffledControl,
)
from tinystories.plotting import optional_pyplot
from tinystories.report import plots
from tinystories.report.html import Raw, esc, fmt, how_to_read, not_run, stage, table
from tinystories.rundir import RunConfig
from tinystories.summaries import ModelSizes, Samples, TrainSummary

# --- configuration --------------------------------------------------------------------------------


def size_rows(cfg: RunConfig, sizes: ModelSizes) -> list[list[Any]]:
    """Parameter counts and shape of the run's model."""
    m = cfg.model
    return [["parameters", sizes.params], ["non-embedding parameters", sizes.non_embedding],
            ["training FLOPs per token", sizes.flops_per_token],
            ["layers x heads", f"{m.n_layer} x {m.n_head}"],
            ["d_model / d_ff / head_dim", f"{m.d_model} / {m.ff_dim} / {m.head_dim}"],
            ["vocabulary / context", f"{m.vocab_size:,} / {m.max_seq_len:,}"]]


ENV_KEYS = ("time", "hostname", "platform", "python", "torch", "device", "threads", "world_size", "gpu", "cpu_kernels")


def section_config(train: TrainSummary) -> str:
    cfg = train.config
    if cfg is None:
        return f"<p class='notrun'>{esc(train.config_error)}</p>"
    sizes = train.sizes
    summary = table(size_rows(cfg, sizes)) if sizes else "<p>sizes unavailable: the config does not build a model</p>"
    if train.converted_from is not None:
        summary += "<p>imported with <code>tinystories convert</code>: " + esc(train.converted_from) + "</p>"
    summary += how_to_read("Non-embedding parameters are what the paper's model sizes count; FLOPs per token "
                           "set the cost of training on a token budget.")
    detail = "<h4>model</h4>" + table([[k, v] for k, v in asdict(cfg.model).items()], cls="kv")
    if cfg.train is not None:
        detail += "<h4>train</h4>" + table([[k, v] for k, v in asdict(cfg.train).items()], cls="kv")
    if cfg.data:
        detail += "<h4>data</h4>" + table([[k, v] for k, v in cfg.data.items()], cls="kv")
    env = train.environment
    if env is not None:
        rows = [[k, getattr(env, k)] for k in ENV_KEYS if getattr(env, k) is not None]
        if isinstance(env.git, dict):
            rows.append(["git", f"{env.git.get('sha', '')}{' (dirty)' if env.git.get('dirty') else ''}"])
        detail += "<h4>environment</h4>" + table(rows, cls="kv")
    return stage("config-stage", "", summary, detail)


# --- training -------------------------------------------------------------------------------------


def section_training(train: TrainSummary, run: Path) -> str:
    rows = train.metrics
    if not rows:
        return not_run("training (no metrics.jsonl; imported checkpoints have none)",
                       f"tinystories train --run {run} --data DATASET")
    x = "tokens" if all(r.tokens is not None for r in rows) else "step"
    loss = [(getattr(r, x), r.loss) for r in rows if r.loss is not None]
    val = [(getattr(r, x), r.val_loss) for r in rows if r.val_loss is not None]
    lr = [(getattr(r, x), r.lr) for r in rows if r.lr is not None]
    tps = [(getattr(r, x), r.tokens_per_s) for r in rows if r.tokens_per_s is not None]
    last = rows[-1]
    speeds = sorted(v for _, v in tps)
    figures: list[list[Any]] = [["steps", last.step], ["tokens", last.tokens],
               ["last train loss (nats / token)", loss[-1][1] if loss else None],
               ["last validation loss (nats / token)", val[-1][1] if val else None],
               ["median tokens / s", speeds[len(speeds) // 2] if speeds else None],
               ["time (s)", last.elapsed_s]]
    summary = table([r for r in figures if r[1] is not None], cls="fig")
    plot_loss = plots.line_plot({"train loss": loss, "validation loss": val}, "Loss during training", x,
                                "loss (nats / token)")
    small = [plots.line_plot({"learning rate": lr}, "Learning rate", x, "lr", size=(4.8, 2.6)),
             plots.line_plot({"tokens / s": tps}, "Throughput", x, "tokens / s", size=(4.8, 2.6))]
    summary += plot_loss + (f'<div class="plots">{"".join(small)}</div>' if any(small) else "")
    summary += how_to_read("Validation loss that flattens while training loss keeps falling is the model starting "
                           "to memorise; throughput shows whether the machine was busy.")
    detail = "<h4>last logged row</h4>" + table([[k, v] for k, v in last.raw.items()], cls="kv")
    return stage("training-stage", "", summary, detail)


# --- samples -------------------------------------------------------------------------------------


def mark_names(text: str, names: list[Any]) -> str:
    """`text` escaped, with each whole-word occurrence of `names` in <mark class="name">."""
    names = sorted({n for n in names if isinstance(n, str) and n.strip()}, key=len, reverse=True)
    if not names:
        return esc(text)
    pattern = re.compile(r"(?<!\w)(" + "|".join(re.escape(n) for n in names) + r")(?!\w)")
    out, pos = [], 0
    for m in pattern.finditer(text):
        out.append(esc(text[pos:m.start()]) + f'<mark class="name">{esc(m.group(0))}</mark>')
        pos = m.end()
    return "".join(out) + esc(text[pos:])


def section_samples(samples: Samples, run: Path, limit: int) -> str:
    items = samples.items
    if not items:
        return not_run("samples", f"tinystories sample --run {run} --out {run}/samples/samples.json") + "".join(
            f"<p>{esc(n)}</p>" for n in samples.errors)
    named = any(s.names is not None for _, s in items)
    out = [f"<p>{len(items)} samples from {samples.files} file(s); {min(limit, len(items))} shown; "
           "the prompt in bold.</p>"]
    if named:
        out.append(how_to_read("Character names are highlighted: a consistent story keeps the same few names."))
    for name, s in items[:limit]:
        names = s.names or []
        out.append(f'<div class="sample"><span class="src">{esc(name)}</span>'
                   f"<b>{mark_names(s.prompt, names)}</b>"
                   f"{mark_names(s.completion, names)}</div>")
    return "".join(out)


# --- heads ---------------------------------------------------------------------------------------


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
    var s = canvas.width / r.width;  // the canvas shrinks with the page on a narrow screen
    var k = Math.floor((e.clientX - r.left) * s / cell), q = Math.floor((e.clientY - r.top) * s / cell);
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


def head_map(heads: list[Head]) -> str:
    """Layers x heads grid coloured by class, each cell its positional, semantic and induction score."""
    by = {(h.layer, h.head): h for h in heads}
    layers = sorted({h.layer for h in heads})
    n_head = max(h.head for h in heads) + 1
    rows = []
    for layer in layers:
        cells = []
        for hd in range(n_head):
            h = by.get((layer, hd))
            if h is None:
                cells.append("<td></td>")
                continue
            tip = f"head {layer}.{hd}: {h.kind}, positional {h.positional:.2f}, semantic {h.semantic:.3f}"
            if h.induction is not None:
                tip += f", induction {h.induction:.2f}"
            short = {"induction": "ind", "distance": "dist", "semantic": "sem"}.get(h.kind, "·")
            cells.append(f'<td class="k-{esc(h.kind)}" title="{esc(tip)}">{short}</td>')
        rows.append(f"<tr><th>layer {layer}</th>{''.join(cells)}</tr>")
    head = "".join(f"<th>{i}</th>" for i in range(n_head))
    return (f'<div class="scroll"><table class="headmap"><thead><tr><th>head</th>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def head_scatter(heads: list[Head], th: dict[str, float]) -> str:
    plt = optional_pyplot()
    if plt is None:
        return ""
    fig, ax = plt.subplots(figsize=(5.6, 3.4))
    colors = {"induction": "tab:green", "distance": "tab:blue", "semantic": "tab:red", "other": "tab:gray"}
    for kind, col in colors.items():
        hs = [h for h in heads if h.kind == kind]
        ax.scatter([max(h.positional, -0.5) for h in hs], [h.semantic for h in hs], c=col, label=kind, s=18)
    ax.axvline(th.get("positional", 0.5), ls="--", c="k", lw=0.7)
    ax.axhline(th.get("semantic", 0.05), ls="--", c="k", lw=0.7)
    ax.set_xlabel("positional score (R², clipped at -0.5)")
    ax.set_ylabel("semantic score (excess attention)")
    ax.set_title("Heads by positional and semantic score (dashed: thresholds)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return plots.png(fig, "Heads by positional and semantic score")


def _or_dash(v: Any) -> Any:
    return "-" if v is None else v


def _count(counts: HeadCounts | None, kind: str, default: Any = None) -> Any:
    value = getattr(counts, kind) if counts is not None else None
    return default if value is None else value


def section_heads(interp: Interp, run: Path) -> str:
    data = interp.heads
    if data is None:
        if interp.heads_error is None:
            return not_run("attention heads", f"tinystories interpret heads --run {run}")
        return f"<p class='notrun'>{esc(interp.heads_error)}</p>"
    heads, th, c = data.heads, data.thresholds, data.counts
    # Files written before the induction test have no induction count: say nothing rather than "0".
    induction = "" if _count(c, "induction") is None else f"<b>{_count(c, 'induction')}</b> induction, "
    copying = ""
    if data.copy_loss is not None:
        copying = (f" On random tokens repeated twice, the loss is {fmt(data.copy_loss.first)} nats/token on the "
                   f"first copy and {fmt(data.copy_loss.second)} on the second (a model that copies from context "
                   f"predicts the second copy).")
    summary = [f"<p>{induction}<b>{_count(c, 'distance', 0)}</b> distance-based, "
               f"<b>{_count(c, 'semantic', 0)}</b> semantic and {_count(c, 'other', 0)} other heads, over "
               f"{fmt(data.stories)} stories ({fmt(data.tokens)} tokens).{copying}</p>", head_map(heads),
               how_to_read(f"Green heads are induction heads (on repeated random tokens, attention from a token's "
                           f"second copy to the token after its first ≥ {fmt(th.get('induction'))}), "
                           f"blue ones attend by distance (positional score R² ≥ {fmt(th.get('positional'))}), "
                           f"red ones to earlier copies of related words (semantic excess ≥ "
                           f"{fmt(th.get('semantic'))}), grey dots are none of these; hover a cell for its scores."),
               head_scatter(heads, th)]
    ctl = data.controls
    if ctl:
        ri, sh = ctl.random_init or RandomInitControl(), ctl.shuffled or ShuffledControl()
        rand_loss = ri.copy_loss
        summary.append(table([
            ["random-init copy: induction heads", _or_dash(_count(ri.counts, "induction"))],
            ["random-init copy: largest induction score", _or_dash(ri.max_induction)],
            ["random-init copy: loss on the first / second copy",
             "-" if rand_loss is None else f"{fmt(rand_loss.first)} / {fmt(rand_loss.second)}"],
            ["random-init copy: semantic heads", _count(ri.counts, "semantic")],
            ["random-init copy: largest semantic score", ri.max_semantic],
            ["shuffled tokens: correlation of positional scores (all heads)", sh.correlation_all],
            ["shuffled tokens: correlation over distance heads", _or_dash(sh.correlation_distance)],
            ["shuffled tokens: semantic heads left", _count(sh.counts, "semantic")],
        ], ["control", "value"], "fig"))
    rows = [[f"{h.layer}.{h.head}", Raw(f'<span class="k-{esc(h.kind)}">{esc(h.kind)}</span>'),
             _or_dash(h.induction), _or_dash(h.duplicate),
             h.positional, h.semantic, h.semantic_same_word, h.semantic_entity,
             h.mean_distance, h.norm_entropy, h.first_token,
             ", ".join(f"{d}:{w:.2f}" for d, w in h.offsets)] for h in heads]
    summary.append("<details><summary>all heads</summary>" + table(
        rows, ["head", "class", "induction", "duplicate", "positional", "semantic", "same word", "entity",
               "mean distance", "norm. entropy", "first token", "top offsets: weight"], "num") + "</details>")
    text = data.text
    if text is not None and text.patterns_u8:
        payload = {"tokens": text.tokens, "shape": text.shape, "patterns_u8": text.patterns_u8,
                   "kinds": {f"{h.layer}.{h.head}": h.kind for h in heads}}
        blob = json.dumps(payload).replace("</", "<\\/")
        summary.append(
            "<h4>Attention maps</h4><p>Rows are queries, columns keys (viridis: 0 dark, 1 yellow), as the paper's "
            "Figures 19-20. Hover the map or the tokens below to see where a token looks.</p>"
            '<p><select id="attn-layer"></select> <select id="attn-head"></select> <span id="attn-info"></span></p>'
            '<canvas id="attn-canvas"></canvas><div id="attn-tokens"></div>'
            f'<script type="application/json" id="attn-data">{blob}</script>')
    detail = table([["source", data.source], ["stories", data.stories], ["tokens", data.tokens],
                    *[[f"threshold: {k}", v] for k, v in th.items()]], cls="kv")
    return stage("heads-stage", "Head classification", "".join(summary), detail)


# --- neurons --------------------------------------------------------------------------------------


def highlighted(ex: Example) -> str:
    s, (a, b) = ex.sentence, ex.span
    if a == b:  # a token outside any sentence (a line break): show the token itself
        return f"<mark>{esc(str(ex.token or '').replace(chr(10), '↵'))}</mark> <span class='act'>(between " \
            "sentences)</span>"
    hit = s[a:b].replace("\n", "↵") if s[a:b].strip() == "" else s[a:b]  # a newline stays visible
    return f"{esc(s[:a])}<mark>{esc(hit)}</mark>{esc(s[b:])}"


def render_neuron(title: str, label: str, facts: list[tuple[str, Any]], examples: list[Example]) -> str:
    """One neuron's card: its label, the facts that are known (name, value) and its top-activating sentences."""
    exs = "".join(f"<li><span class='act'>{ex.activation:.2f}</span> {highlighted(ex)}</li>" for ex in examples)
    shown = []
    for name, value in facts:
        if value is not None:
            shown.append(f"percentile among random directions <b>{fmt(value)}</b>" if name == "percentile"
                         else f"{name} {fmt(value)}")
    return (f"<div class='neuron'><h4>{esc(title)}: {esc(label)}</h4>"
            f"<p>{', '.join(shown)}</p><ol>{exs}</ol></div>")


def neuron_card(n: Neuron, title: str) -> str:
    return render_neuron(title, n.label, [("score", n.score), ("word share", n.word_share),
                                          ("class share", n.class_share), ("percentile", n.percentile),
                                          ("max activation", n.max_activation)], n.examples)


def neurons_layer(data: NeuronsResult) -> str:
    s, layer = data.summary, data.layer
    ns = data.neurons
    top = sorted((n for n in ns if n.percentile >= 95), key=lambda n: -n.percentile)
    summary = [f"<p><b>{s.above_random_p95}</b> of {s.neurons} neurons score above the 95th percentile of "
               f"{data.random.directions} random directions (median neuron percentile "
               f"{fmt(s.median_percentile)}).</p>"]
    if top:
        shown = 12
        summary.append(table([[n.neuron, n.label, n.percentile, n.score] for n in top[:shown]],
                             ["neuron", "label", "percentile", "score"], "fig")
                       + (f"<p>{len(top) - shown} more at or above the 95th percentile under all neurons.</p>"
                          if len(top) > shown else ""))
    summary.append(how_to_read("A neuron's percentile says how many random directions in the same layer it beats "
                               "at tying its strongest activations to one word or word class: 95 and above means a "
                               "clearer role than chance gives."))
    figs = [plots.value_histogram([n.score for n in ns], f"Layer {layer}: neuron scores vs random directions",
                                  "score (share of top activations on one word / class)", data.random.scores,
                                  "random directions", "neurons")]
    labels = table([[k, v] for k, v in s.labels.items()], ["label", "neurons"], "fig")
    summary.append(f'<div class="plots">{"".join(figs)}<div>{labels}</div></div>')
    cards = []
    for idx in data.shown:
        n = ns[idx]
        tag = " (largest activation)" if n.strongest else ""
        cards.append(neuron_card(n, f"Layer {layer}, neuron {idx}{tag}"))
    summary.append(f'<div class="cards">{"".join(cards)}</div>')
    p = data.protagonist
    if p:
        best = [[b.neuron, b.average_precision, b.percentile, b.precision, b.recall, b.fires] for b in p.best]
        summary.append(f"<h4>Protagonist's first mention ({esc(p.source)})</h4>"
                       f"<p>{p.positives} of {p.tokens} tokens are the protagonist's first mention "
                       f"(base rate {p.base_rate:.4f}); random directions: median AP {p.random_ap.median:.4f}, "
                       f"99th percentile {p.random_ap.p99:.4f}. Precision / recall: the neuron fires when it "
                       "reaches half its largest activation.</p>"
                       + table(best, ["neuron", "average precision", "percentile", "precision", "recall", "fires"],
                               "fig"))
        if p.best and p.best[0].examples:
            b = p.best[0]
            summary.append(render_neuron(f"Layer {layer}, neuron {b.neuron}", "best protagonist detector",
                                         [("average precision", b.average_precision), ("percentile", b.percentile)],
                                         b.examples))
    rows = [[n.neuron, n.label, n.score, n.percentile] for n in ns]
    summary.append("<details><summary>all neurons</summary>" + table(rows, ["neuron", "label", "score", "percentile"],
                                                                       "num") + "</details>")
    detail = table([["site", data.site], ["source", data.source], ["stories", data.stories],
                    ["tokens", data.tokens], ["score over the top activations", data.top_k],
                    ["random directions", data.random.directions]], cls="kv")
    return stage(f"neurons-layer{layer}", f"Layer {layer} neurons ({data.site})", "".join(summary), detail)


def section_neurons(interp: Interp, run: Path) -> str:
    if not interp.neuron_files:
        return not_run("MLP neurons", f"tinystories interpret neurons --run {run}")
    return "".join(f"<p class='notrun'>{esc(f)}</p>" if isinstance(f, str) else neurons_layer(f)
                   for f in interp.neuron_files)


# --- findings ----------------------------------------------------------------------------------


def findings(interp: Interp) -> str:
    """What the interpretability stages found, next to what the paper observed."""
    heads, neurons = interp.heads, interp.neurons
    if heads is None and not neurons:
        return not_run("interpretability findings", "tinystories interpret heads / neurons")
    items = []
    if heads is not None:
        hs = heads.heads
        dist = [h for h in hs if h.kind == "distance"]
        sem = [h for h in hs if h.kind == "semantic"]
        ind = [h for h in hs if h.kind == "induction"]
        offs = ", ".join(map(str, sorted({h.offsets[0][0] for h in dist if h.offsets}))) or "-"
        dist_names = ", ".join(f"{h.layer}.{h.head}" for h in dist) or "none"
        sem_names = ", ".join(f"{h.layer}.{h.head}" for h in sem) or "none"
        ind_names = ", ".join(f"{h.layer}.{h.head}" for h in ind) or "none"
        txt = (f"{len(dist)} of {len(hs)} heads are distance-based ({dist_names}; preferred offsets {offs}), "
               f"{len(sem)} semantic ({sem_names})")
        if heads.copy_loss is not None:
            txt += (f", {len(ind)} induction ({ind_names}): on random tokens repeated twice the loss goes from "
                    f"{fmt(heads.copy_loss.first)} on the first copy to {fmt(heads.copy_loss.second)} nats/token on "
                    f"the second")
        txt += "."
        ctl = heads.controls
        if ctl and ctl.random_init and ctl.shuffled:
            rand_ind = _count(ctl.random_init.counts, "induction")
            txt += (f" Controls: the random-init copy has {_count(ctl.random_init.counts, 'semantic')} semantic "
                    + ("" if rand_ind is None else f"and {rand_ind} induction ")
                    + f"heads; shuffling tokens keeps positional scores (r = {fmt(ctl.shuffled.correlation_all)}) "
                    f"and leaves {_count(ctl.shuffled.counts, 'semantic')} semantic heads.")
        txt += (" The paper (1-layer, 16-head model) saw several distance heads with different distances and three "
                "semantic heads (the/a to 'banana', to 'park', to the names).")
        items.append(txt)
    for n in neurons:
        s = n.summary
        top = [x for x in n.neurons if x.percentile >= 95][:6]
        roles = ", ".join(f"neuron {x.neuron} ({x.label}, {x.percentile:.0f}th)" for x in top) or "none"
        labels = ", ".join(f"{k} {v}" for k, v in list(s.labels.items())[:6])
        txt = (f"Layer {n.layer}: {s.above_random_p95} of {s.neurons} neurons beat 95% of random "
               f"directions; clear roles: {roles}. Labels: {labels}.")
        p = n.protagonist
        if p and p.best:
            b = p.best[0]
            txt += (f" Best protagonist-first-mention neuron: {b.neuron} (AP {b.average_precision:.3f} vs random "
                    f"p99 {p.random_ap.p99:.3f}, precision {b.precision:.2f}, recall {b.recall:.2f}).")
        txt += (" The paper (1M model, penultimate layer) found neurons for subject pronouns, actions, adjectives "
                "and the protagonist's first mention.")
        items.append(txt)
    return "<ul>" + "".join(f"<li>{esc(t)}</li>" for t in items) + "</ul>"
