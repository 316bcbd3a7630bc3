"""The sections of a run's page: configuration, training, samples, attention heads, neurons, findings."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tinystories.errors import UserError
from tinystories.report import plots
from tinystories.report.evals import read_json
from tinystories.report.html import Raw, esc, fmt, how_to_read, not_run, stage, table

# --- configuration --------------------------------------------------------------------------------


def model_sizes(run: Path) -> list[list[Any]] | None:
    """Parameter counts and shape of the run's model (counted from its config: no weights are built)."""
    from tinystories.flops import count_params, flops_per_token
    from tinystories.rundir import read_config

    try:
        cfg = read_config(run)
        return [["parameters", count_params(cfg.model)], ["non-embedding parameters", count_params(cfg.model, True)],
                ["training FLOPs per token", flops_per_token(cfg.model)],
                ["layers x heads", f"{cfg.model.n_layer} x {cfg.model.n_head}"],
                ["d_model / d_ff / head_dim", f"{cfg.model.d_model} / {cfg.model.ff_dim} / {cfg.model.head_dim}"],
                ["vocabulary / context", f"{cfg.model.vocab_size:,} / {cfg.model.max_seq_len:,}"]]
    except Exception:  # a config that no longer builds still gets its tables in the details
        return None


def section_config(run: Path) -> str:
    from tinystories.rundir import read_config

    try:
        cfg = read_config(run)
    except UserError as e:
        return f"<p class='notrun'>{esc(e)}</p>"
    sizes = model_sizes(run)
    summary = table(sizes) if sizes else "<p>sizes unavailable: the config does not build a model</p>"
    conv, _ = read_json(run / "convert.json")
    if isinstance(conv, dict):
        summary += ("<p>imported with <code>tinystories convert</code>: "
                    + esc(conv.get("source", conv.get("from", ""))) + "</p>")
    summary += how_to_read("Non-embedding parameters are what the paper's model sizes count; FLOPs per token "
                           "set the cost of training on a token budget.")
    detail = "<h4>model</h4>" + table([[k, v] for k, v in asdict(cfg.model).items()], cls="kv")
    if cfg.train is not None:
        detail += "<h4>train</h4>" + table([[k, v] for k, v in asdict(cfg.train).items()], cls="kv")
    if cfg.data:
        detail += "<h4>data</h4>" + table([[k, v] for k, v in cfg.data.items()], cls="kv")
    env, _ = read_json(run / "env.json")
    if isinstance(env, dict):
        keys = ("time", "hostname", "platform", "python", "torch", "device", "threads", "world_size", "gpu",
                "cpu_kernels")
        rows = [[k, env[k]] for k in keys if k in env]
        if isinstance(env.get("git"), dict):
            rows.append(["git", f"{env['git'].get('sha', '')}{' (dirty)' if env['git'].get('dirty') else ''}"])
        detail += "<h4>environment</h4>" + table(rows, cls="kv")
    return stage("config-stage", "", summary, detail)


# --- training -------------------------------------------------------------------------------------


def read_metrics(run: Path) -> list[dict[str, Any]]:
    path = run / "metrics.jsonl"
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


def section_training(run: Path) -> str:
    rows = read_metrics(run)
    if not rows:
        return not_run("training (no metrics.jsonl; imported checkpoints have none)",
                       f"tinystories train --run {run} --data DATASET")
    x = "tokens" if all("tokens" in r for r in rows) else "step"
    loss = [(r[x], r["loss"]) for r in rows if "loss" in r]
    val = [(r[x], r["val_loss"]) for r in rows if "val_loss" in r]
    lr = [(r[x], r["lr"]) for r in rows if "lr" in r]
    tps = [(r[x], r["tokens_per_s"]) for r in rows if "tokens_per_s" in r]
    last = rows[-1]
    speeds = sorted(v for _, v in tps)
    figures = [["steps", last.get("step")], ["tokens", last.get("tokens")],
               ["last train loss (nats / token)", loss[-1][1] if loss else None],
               ["last validation loss (nats / token)", val[-1][1] if val else None],
               ["median tokens / s", speeds[len(speeds) // 2] if speeds else None],
               ["time (s)", last.get("elapsed_s")]]
    summary = table([r for r in figures if r[1] is not None], cls="fig")
    plot_loss = plots.line_plot({"train loss": loss, "validation loss": val}, "Loss during training", x,
                                "loss (nats / token)")
    small = [plots.line_plot({"learning rate": lr}, "Learning rate", x, "lr", size=(4.8, 2.6)),
             plots.line_plot({"tokens / s": tps}, "Throughput", x, "tokens / s", size=(4.8, 2.6))]
    summary += plot_loss + (f'<div class="plots">{"".join(small)}</div>' if any(small) else "")
    summary += how_to_read("Validation loss that flattens while training loss keeps falling is the model starting "
                           "to memorise; throughput shows whether the machine was busy.")
    detail = "<h4>last logged row</h4>" + table([[k, v] for k, v in last.items()], cls="kv")
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


def section_samples(run: Path, limit: int) -> str:
    folder = run / "samples"
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    items, notes = [], []
    for f in files:
        data, err = read_json(f)
        if err:
            notes.append(err)
            continue
        for s in data.get("samples", []) if isinstance(data, dict) else []:
            if isinstance(s, dict):
                items.append((f.name, s))
    txt = sorted(folder.glob("*.txt")) if folder.is_dir() else []
    for f in txt:
        items.append((f.name, {"prompt": "", "completion": f.read_text(encoding="utf-8", errors="replace")}))
    if not items:
        return not_run("samples", f"tinystories sample --run {run} --out {run}/samples/samples.json") + "".join(
            f"<p>{esc(n)}</p>" for n in notes)
    named = any(isinstance(s.get("names"), list) for _, s in items)
    out = [f"<p>{len(items)} samples from {len(files) + len(txt)} file(s); {min(limit, len(items))} shown; "
           "the prompt in bold.</p>"]
    if named:
        out.append(how_to_read("Character names are highlighted: a consistent story keeps the same few names."))
    for name, s in items[:limit]:
        names: list[Any] = s["names"] if isinstance(s.get("names"), list) else []
        out.append(f'<div class="sample"><span class="src">{esc(name)}</span>'
                   f'<b>{mark_names(str(s.get("prompt", "")), names)}</b>'
                   f'{mark_names(str(s.get("completion", "")), names)}</div>')
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


def head_map(heads: list[dict[str, Any]]) -> str:
    """Layers x heads grid coloured by class, each cell its positional and semantic score."""
    by = {(h["layer"], h["head"]): h for h in heads}
    layers = sorted({h["layer"] for h in heads})
    n_head = max(h["head"] for h in heads) + 1
    rows = []
    for layer in layers:
        cells = []
        for hd in range(n_head):
            h = by.get((layer, hd))
            if h is None:
                cells.append("<td></td>")
                continue
            tip = f"head {layer}.{hd}: {h['kind']}, positional {h['positional']:.2f}, semantic {h['semantic']:.3f}"
            short = {"distance": "dist", "semantic": "sem"}.get(h["kind"], "·")
            cells.append(f'<td class="k-{esc(h["kind"])}" title="{esc(tip)}">{short}</td>')
        rows.append(f"<tr><th>layer {layer}</th>{''.join(cells)}</tr>")
    head = "".join(f"<th>{i}</th>" for i in range(n_head))
    return (f'<div class="scroll"><table class="headmap"><thead><tr><th>head</th>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def head_scatter(heads: list[dict[str, Any]], th: dict[str, Any]) -> str:
    plt = plots.optional_pyplot()
    if plt is None:
        return ""
    fig, ax = plt.subplots(figsize=(5.6, 3.4))
    colors = {"distance": "tab:blue", "semantic": "tab:red", "other": "tab:gray"}
    for kind, col in colors.items():
        hs = [h for h in heads if h["kind"] == kind]
        ax.scatter([max(h["positional"], -0.5) for h in hs], [h["semantic"] for h in hs], c=col, label=kind, s=18)
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


def section_heads(run: Path) -> tuple[str, dict[str, Any] | None]:
    path = run / "interp" / "heads.json"
    if not path.is_file():
        return not_run("attention heads", f"tinystories interpret heads --run {run}"), None
    data, err = read_json(path)
    if err or not isinstance(data, dict) or not data.get("heads"):
        return f"<p class='notrun'>{esc(err or 'interp/heads.json has no heads')}</p>", None
    heads = data["heads"]
    th = data.get("thresholds", {})
    c = data.get("counts", {})
    summary = [f"<p><b>{c.get('distance', 0)}</b> distance-based, <b>{c.get('semantic', 0)}</b> semantic and "
               f"{c.get('other', 0)} other heads, over {fmt(data.get('stories'))} stories "
               f"({fmt(data.get('tokens'))} tokens).</p>", head_map(heads),
               how_to_read(f"Blue heads attend by distance (positional score R² ≥ {fmt(th.get('positional'))}), "
                           f"red ones to earlier copies of related words (semantic excess ≥ "
                           f"{fmt(th.get('semantic'))}), grey dots are neither; hover a cell for its scores."),
               head_scatter(heads, th)]
    ctl = data.get("controls")
    if ctl:
        ri, sh = ctl.get("random_init", {}), ctl.get("shuffled", {})
        summary.append(table([
            ["random-init copy: semantic heads", ri.get("counts", {}).get("semantic")],
            ["random-init copy: largest semantic score", ri.get("max_semantic")],
            ["shuffled tokens: correlation of positional scores (all heads)", sh.get("correlation_all")],
            ["shuffled tokens: correlation over distance heads", _or_dash(sh.get("correlation_distance"))],
            ["shuffled tokens: semantic heads left", sh.get("counts", {}).get("semantic")],
        ], ["control", "value"], "fig"))
    rows = [[f"{h['layer']}.{h['head']}", Raw(f'<span class="k-{esc(h["kind"])}">{esc(h["kind"])}</span>'),
             h["positional"], h["semantic"], h.get("semantic_same_word"), h.get("semantic_entity"),
             h["mean_distance"], h["norm_entropy"], h.get("first_token"),
             ", ".join(f"{d}:{w:.2f}" for d, w in h.get("offsets", []))] for h in heads]
    summary.append("<details><summary>all heads</summary>" + table(
        rows, ["head", "class", "positional", "semantic", "same word", "entity", "mean distance",
               "norm. entropy", "first token", "top offsets: weight"], "num") + "</details>")
    text = data.get("text")
    if isinstance(text, dict) and "patterns_u8" in text:
        payload = {"tokens": text["tokens"], "shape": text["shape"], "patterns_u8": text["patterns_u8"],
                   "kinds": {f"{h['layer']}.{h['head']}": h["kind"] for h in heads}}
        blob = json.dumps(payload).replace("</", "<\\/")
        summary.append(
            "<h4>Attention maps</h4><p>Rows are queries, columns keys (viridis: 0 dark, 1 yellow), as the paper's "
            "Figures 19-20. Hover the map or the tokens below to see where a token looks.</p>"
            '<p><select id="attn-layer"></select> <select id="attn-head"></select> <span id="attn-info"></span></p>'
            '<canvas id="attn-canvas"></canvas><div id="attn-tokens"></div>'
            f'<script type="application/json" id="attn-data">{blob}</script>')
    detail = table([["source", data.get("source")], ["stories", data.get("stories")], ["tokens", data.get("tokens")],
                    *[[f"threshold: {k}", v] for k, v in th.items()]], cls="kv")
    return stage("heads-stage", "Head classification", "".join(summary), detail), data


# --- neurons --------------------------------------------------------------------------------------


def highlighted(ex: dict[str, Any]) -> str:
    s, (a, b) = ex["sentence"], ex["span"]
    if a == b:  # a token outside any sentence (a line break): show the token itself
        return f"<mark>{esc(str(ex.get('token', '')).replace(chr(10), '↵'))}</mark> <span class='act'>(between " \
            "sentences)</span>"
    hit = s[a:b].replace("\n", "↵") if s[a:b].strip() == "" else s[a:b]  # a newline stays visible
    return f"{esc(s[:a])}<mark>{esc(hit)}</mark>{esc(s[b:])}"


def render_neuron(n: dict[str, Any], title: str) -> str:
    exs = "".join(f"<li><span class='act'>{ex['activation']:.2f}</span> {highlighted(ex)}</li>"
                  for ex in n.get("examples", []))
    facts = [f"{name} {fmt(n[key])}" for name, key in (("score", "score"), ("word share", "word_share"),
                                                         ("class share", "class_share"),
                                                         ("average precision", "average_precision"))
             if n.get(key) is not None]
    if n.get("percentile") is not None:
        facts.append(f"percentile among random directions <b>{fmt(n['percentile'])}</b>")
    if n.get("max_activation") is not None:
        facts.append(f"max activation {fmt(n['max_activation'])}")
    return (f"<div class='neuron'><h4>{esc(title)}: {esc(n.get('label', ''))}</h4>"
            f"<p>{', '.join(facts)}</p><ol>{exs}</ol></div>")


def neurons_layer(data: dict[str, Any]) -> str:
    s, layer = data["summary"], data["layer"]
    ns = data["neurons"]
    top = sorted((n for n in ns if n.get("percentile", 0) >= 95), key=lambda n: -n["percentile"])
    summary = [f"<p><b>{s['above_random_p95']}</b> of {s['neurons']} neurons score above the 95th percentile of "
               f"{data['random']['directions']} random directions (median neuron percentile "
               f"{fmt(s['median_percentile'])}).</p>"]
    if top:
        shown = 12
        summary.append(table([[n["neuron"], n["label"], n["percentile"], n["score"]] for n in top[:shown]],
                             ["neuron", "label", "percentile", "score"], "fig")
                       + (f"<p>{len(top) - shown} more at or above the 95th percentile under all neurons.</p>"
                          if len(top) > shown else ""))
    summary.append(how_to_read("A neuron's percentile says how many random directions in the same layer it beats "
                               "at tying its strongest activations to one word or word class: 95 and above means a "
                               "clearer role than chance gives."))
    figs = [plots.value_histogram([n["score"] for n in ns], f"Layer {layer}: neuron scores vs random directions",
                                  "score (share of top activations on one word / class)", data["random"]["scores"],
                                  "random directions", "neurons")]
    labels = table([[k, v] for k, v in s["labels"].items()], ["label", "neurons"], "fig")
    summary.append(f'<div class="plots">{"".join(figs)}<div>{labels}</div></div>')
    cards = []
    for idx in data.get("shown", []):
        n = ns[idx]
        tag = " (largest activation)" if n.get("strongest") else ""
        cards.append(render_neuron(n, f"Layer {layer}, neuron {idx}{tag}"))
    summary.append(f'<div class="cards">{"".join(cards)}</div>')
    p = data.get("protagonist")
    if p:
        rows = [[b["neuron"], b["average_precision"], b["percentile"], b["precision"], b["recall"], b["fires"]]
                for b in p["best"]]
        summary.append(f"<h4>Protagonist's first mention ({esc(p.get('source'))})</h4>"
                       f"<p>{p['positives']} of {p['tokens']} tokens are the protagonist's first mention "
                       f"(base rate {p['base_rate']:.4f}); random directions: median AP {p['random_ap']['median']:.4f}, "
                       f"99th percentile {p['random_ap']['p99']:.4f}. Precision / recall: the neuron fires when it "
                       "reaches half its largest activation.</p>"
                       + table(rows, ["neuron", "average precision", "percentile", "precision", "recall", "fires"],
                               "fig"))
        if p["best"] and p["best"][0].get("examples"):
            summary.append(render_neuron({"label": "best protagonist detector", **p["best"][0]},
                                         f"Layer {layer}, neuron {p['best'][0]['neuron']}"))
    rows = [[n["neuron"], n["label"], n["score"], n["percentile"]] for n in ns]
    summary.append("<details><summary>all neurons</summary>" + table(rows, ["neuron", "label", "score", "percentile"],
                                                                       "num") + "</details>")
    detail = table([["site", data.get("site")], ["source", data.get("source")], ["stories", data.get("stories")],
                    ["tokens", data.get("tokens")], ["score over the top activations", data.get("top_k")],
                    ["random directions", data["random"].get("directions")]], cls="kv")
    return stage(f"neurons-layer{layer}", f"Layer {layer} neurons ({data.get('site')})", "".join(summary), detail)


def section_neurons(run: Path) -> tuple[str, list[dict[str, Any]]]:
    files = sorted((run / "interp").glob("neurons_layer*.json")) if (run / "interp").is_dir() else []
    if not files:
        return not_run("MLP neurons", f"tinystories interpret neurons --run {run}"), []
    out, found = [], []
    for f in files:
        data, err = read_json(f)
        if err or not isinstance(data, dict) or "neurons" not in data:
            out.append(f"<p class='notrun'>{esc(err or f.name + ' has no neurons')}</p>")
            continue
        found.append(data)
        out.append(neurons_layer(data))
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
