// The tinystories playground: streams a completion token by token, shades each token by its
// probability, shows its alternatives on hover, and draws one head's attention over the text.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: {}, controller: null, text: "", prompt: "" };

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

function setStatus(text, error) {
  $("status").textContent = text;
  $("status").classList.toggle("error", !!error);
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    return (body.error && body.error.message) || resp.statusText;
  } catch (e) {
    return resp.status + " " + resp.statusText;
  }
}

function fillSelect(select, n) {
  const keep = select.value;
  select.textContent = "";
  for (let i = 0; i < n; i++) select.add(new Option(String(i), String(i)));
  if (keep && +keep < n) select.value = keep;
}

async function loadModels() {
  const resp = await fetch("v1/models", { headers: headers() });
  if (resp.status === 401) {
    document.querySelector(".key").hidden = false;
    setStatus("this server needs an API key: enter it above", true);
    return;
  }
  if (resp.status === 503) {
    setStatus("the models are loading…");
    setTimeout(loadModels, 1000);
    return;
  }
  if (!resp.ok) { setStatus(await errorText(resp), true); return; }
  const list = (await resp.json()).data;
  const select = $("model");
  select.textContent = "";
  for (const m of list) {
    state.models[m.id] = m;
    select.add(new Option(`${m.id} (${m.n_layer} layers, ${m.n_head} heads)`, m.id));
  }
  modelChanged();
  setStatus("ready");
}

function modelChanged() {
  const m = state.models[$("model").value];
  if (!m) return;
  fillSelect($("layer"), m.n_layer);
  fillSelect($("head"), m.n_head);
}

function numberOr(id, fallback) {
  const v = $(id).value.trim();
  return v === "" ? fallback : Number(v);
}

// --- writing ---------------------------------------------------------------------------------

function tokenSpan(text, logprob, top) {
  const span = document.createElement("span");
  span.className = "tok";
  span.textContent = text;
  const p = Math.exp(logprob);
  span.style.setProperty("--p", p.toFixed(3));
  span.dataset.p = String(p);
  span.dataset.top = JSON.stringify(top || {});
  span.tabIndex = 0;
  return span;
}

function addChunk(story, choice) {
  const lp = choice.logprobs;
  if (!choice.text) return;
  if (lp && lp.tokens.length && lp.tokens.join("") === choice.text) {
    lp.tokens.forEach((t, i) => story.appendChild(tokenSpan(t, lp.token_logprobs[i], lp.top_logprobs[i])));
  } else if (lp && lp.tokens.length) {  // a character split over tokens: one span for the piece
    story.appendChild(tokenSpan(choice.text, lp.token_logprobs[0], lp.top_logprobs[0]));
  } else {
    story.appendChild(document.createTextNode(choice.text));
  }
  state.text += choice.text;
}

async function write() {
  const story = $("story");
  hideTip();
  story.textContent = "";
  $("attn-view").hidden = true;
  const prompt = $("prompt").value;
  const promptSpan = document.createElement("span");
  promptSpan.className = "prompt";
  promptSpan.textContent = prompt;
  story.appendChild(promptSpan);
  state.prompt = prompt;
  state.text = "";
  const body = {
    model: $("model").value, prompt, stream: true, logprobs: 5,
    max_tokens: numberOr("max_tokens", 200), temperature: numberOr("temperature", 1),
    top_k: numberOr("top_k", 0), top_p: numberOr("top_p", 1),
  };
  const seed = numberOr("seed", null);
  if (seed !== null) body.seed = seed;

  state.controller = new AbortController();
  $("go").disabled = true;
  $("stop").disabled = false;
  $("attn").disabled = true;
  setStatus("writing…");
  let tokens = 0, finish = null;
  const t0 = performance.now();
  try {
    const resp = await fetch("v1/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: state.controller.signal,
    });
    if (!resp.ok) { setStatus(await errorText(resp), true); return; }
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") continue;
        const event = JSON.parse(data);
        if (event.error) { setStatus(event.error.message, true); continue; }
        for (const choice of event.choices) {
          addChunk(story, choice);
          tokens += choice.logprobs ? choice.logprobs.tokens.length : 0;
          if (choice.finish_reason) finish = choice.finish_reason;
        }
        setStatus(`writing… ${tokens} tokens`);
      }
    }
    const secs = (performance.now() - t0) / 1000;
    const why = finish === "stop" ? "the story ended" : "reached max tokens";
    setStatus(`${tokens} tokens in ${secs.toFixed(1)} s (${why})`);
  } catch (e) {
    if (e.name === "AbortError") setStatus(`stopped after ${tokens} tokens`);
    else setStatus(String(e), true);
  } finally {
    state.controller = null;
    $("go").disabled = false;
    $("stop").disabled = true;
    $("attn").disabled = !(state.prompt + state.text);
  }
}

// --- alternatives on hover -------------------------------------------------------------------

function showTip(span) {
  const tip = $("tip");
  const top = JSON.parse(span.dataset.top);
  const chosen = span.textContent;
  tip.textContent = "";
  const head = document.createElement("div");
  head.className = "head";
  head.textContent = `chose ${JSON.stringify(chosen)}: p = ${(100 * Number(span.dataset.p)).toFixed(1)}%; the top 5:`;
  tip.appendChild(head);
  for (const [text, lp] of Object.entries(top)) {
    const p = Math.exp(lp);
    const row = document.createElement("div");
    row.className = "row alt" + (text === chosen ? " chosen" : "");
    const code = document.createElement("code");
    code.textContent = JSON.stringify(text);
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${Math.max(2, 100 * p)}%`;
    const num = document.createElement("span");
    num.className = "num";
    num.textContent = `${(100 * p).toFixed(1)}%`;
    row.append(code, bar, num);
    tip.appendChild(row);
  }
  tip.hidden = false;
  const r = span.getBoundingClientRect();
  const width = tip.offsetWidth;
  const left = Math.min(window.scrollX + r.left, window.scrollX + document.documentElement.clientWidth - width - 8);
  tip.style.left = `${Math.max(window.scrollX + 4, left)}px`;
  tip.style.top = `${window.scrollY + r.bottom + 6}px`;
  document.querySelectorAll(".tok.active").forEach((s) => s.classList.remove("active"));
  span.classList.add("active");
}

function hideTip() {
  $("tip").hidden = true;
  document.querySelectorAll(".tok.active").forEach((s) => s.classList.remove("active"));
}

// --- attention -------------------------------------------------------------------------------

async function showAttention() {
  const view = $("attn-view");
  const body = {
    model: $("model").value, text: state.prompt + state.text,
    layer: Number($("layer").value), head: Number($("head").value),
  };
  $("attn-hint").textContent = "computing…";
  const resp = await fetch("v1/attention", { method: "POST", headers: headers(), body: JSON.stringify(body) });
  if (!resp.ok) { $("attn-hint").textContent = await errorText(resp); return; }
  const data = await resp.json();
  view.textContent = "";
  data.tokens.forEach((t, i) => {
    const span = document.createElement("span");
    span.className = i === 0 ? "a start" : "a";
    span.textContent = t;
    span.dataset.i = String(i);
    view.appendChild(span);
  });
  view.hidden = false;
  state.attention = data.attention;
  selectAttention(data.tokens.length - 1);
}

function selectAttention(i) {
  const row = state.attention[i];
  const spans = $("attn-view").querySelectorAll(".a");
  const peak = Math.max(...row.slice(0, i), 1e-9);
  spans.forEach((s, j) => {
    s.classList.toggle("sel", j === i);
    s.classList.toggle("after", j > i);
    // weights scaled to the strongest other token, so a token that mostly looks at itself still shows its pattern
    s.style.setProperty("--w", j < i ? Math.min(1, row[j] / peak).toFixed(3) : "0");
    s.title = j <= i ? `attention ${(100 * row[j]).toFixed(1)}%` : "";
  });
  const best = row.map((w, j) => [w, j]).filter(([, j]) => j !== i).sort((a, b) => b[0] - a[0]).slice(0, 3);
  const names = best.map(([w, j]) => `${JSON.stringify(spans[j].textContent)} ${(100 * w).toFixed(0)}%`);
  $("attn-hint").textContent = `layer ${$("layer").value}, head ${$("head").value}: token ` +
    `${JSON.stringify(spans[i].textContent)} looks most at ${names.join(", ") || "itself"} (tap a token to choose it)`;
}

// --- wiring ----------------------------------------------------------------------------------

$("go").addEventListener("click", write);
$("stop").addEventListener("click", () => state.controller && state.controller.abort());
$("model").addEventListener("change", modelChanged);
$("key").addEventListener("change", loadModels);
$("attn").addEventListener("click", showAttention);
for (const id of ["layer", "head"]) {
  $(id).addEventListener("change", () => { if (!$("attn-view").hidden) showAttention(); });
}
$("attn-view").addEventListener("click", (e) => {
  const span = e.target.closest(".a");
  if (span) selectAttention(Number(span.dataset.i));
});
const story = $("story");
story.addEventListener("mouseover", (e) => { const t = e.target.closest(".tok"); if (t) showTip(t); });
story.addEventListener("mouseout", (e) => { if (e.target.closest(".tok")) hideTip(); });
story.addEventListener("click", (e) => { const t = e.target.closest(".tok"); if (t) showTip(t); });
story.addEventListener("focusin", (e) => { const t = e.target.closest(".tok"); if (t) showTip(t); });
document.addEventListener("keydown", (e) => { if (e.key === "Escape") hideTip(); });
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && !$("go").disabled) write();
});
loadModels().catch((e) => setStatus(String(e), true));
