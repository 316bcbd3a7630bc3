"""The run report: every section present, "not run" lines for missing stages, and a real browser opens it."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from conftest import testdata_path as data_file
from tinystories.report import ReportConfig, report

SECTIONS = ("config", "training", "samples", "eval", "heads", "neurons")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bare_run(tmp_path_factory):
    """stories260K imported as a run folder: a config and a checkpoint, no other stage run."""
    from tinystories.convert.command import ConvertConfig, convert

    run = tmp_path_factory.mktemp("report") / "s260k"
    convert(ConvertConfig(source=str(data_file("llama2c/stories260K.bin")), out=str(run),
                          tokenizer=str(data_file("llama2c/tok512.bin"))))
    return run


@pytest.fixture(scope="module")
def full_run(bare_run, tmp_path_factory):
    """The same run with training metrics, samples, two evals and both interpretability stages."""
    from tinystories.interp.heads import HeadsConfig, interpret_heads
    from tinystories.interp.neurons import NeuronsConfig, interpret_neurons

    run = tmp_path_factory.mktemp("full") / "run"
    shutil.copytree(bare_run, run)
    with open(run / "metrics.jsonl", "w") as f:
        for step in range(0, 200, 10):
            row = {"step": step, "tokens": step * 4096, "loss": 5 * 0.99**step, "lr": 1e-3, "tokens_per_s": 1e4}
            if step % 50 == 0:
                row["val_loss"] = 5.1 * 0.99**step
            f.write(json.dumps(row) + "\n")
    (run / "samples").mkdir()
    (run / "samples" / "a.json").write_text(json.dumps(
        {"samples": [{"prompt": "Once upon a time", "completion": " there was a <dog> & a cat."}]}))
    (run / "eval").mkdir()
    (run / "eval" / "loss.json").write_text(json.dumps({"stories": 20, "per_story": {"loss": 1.3, "bpb": 0.6}}))
    (run / "eval" / "probes.json").write_text(json.dumps({
        "accuracy": 0.61, "by_category": {"fact": {"accuracy": 0.7}},
        "margins": [0.1, -0.2, 0.5, 0.3, 0.9, -0.1],
        "by_step": [{"step": s, "accuracy": 0.5 + s / 1000} for s in (0, 100, 200)]}))
    interpret_heads(HeadsConfig(run=str(run), stories=2, controls=False, png=False,
                                text="One day, Lucy asks Tom for a banana."))
    interpret_neurons(NeuronsConfig(run=str(run), stories=2, random_directions=100, protagonist_stories=2,
                                    examples=3))
    report(ReportConfig(run=str(run)))
    return run


def test_bare_run_says_not_run_for_each_missing_stage(bare_run):
    out = report(ReportConfig(run=str(bare_run)))
    page = Path(out["written"]).read_text()
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in page
    for what in ("training", "samples", "eval loss", "eval probes", "attention heads", "MLP neurons"):
        assert f"not run: {what}" in page, what
    assert "non-embedding parameters" in page


def test_full_run_shows_every_stage(full_run):
    page = (full_run / "report.html").read_text()
    assert page.count("not run:") == 2  # eval judge and eval diversity: stages this run has not had
    assert "&lt;dog&gt; &amp; a cat" in page  # samples are escaped
    assert 'id="eval-loss"' in page and 'id="eval-probes"' in page
    assert "by_step: curve over step" in page and "margins: histogram of 6 values" in page
    assert 'id="attn-data"' in page and "Layer 3, neuron 0" in page
    assert "data:image/png;base64," in page
    # Self-contained: nothing is fetched from anywhere.
    for bad in ("http://", "https://", "src=\"//"):
        assert bad not in page.replace("https://github.com", "")


def test_cli_writes_the_report(bare_run, tmp_path):
    out = tmp_path / "r.html"
    proc = subprocess.run([str(Path(sys.executable).parent / "tinystories"), "report", "--run", str(bare_run),
                           "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text().startswith("<!DOCTYPE html>")
    bad = subprocess.run([str(Path(sys.executable).parent / "tinystories"), "report", "--run",
                          str(tmp_path / "nope")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no run folder" in bad.stderr


# --- headless Chromium over the DevTools protocol (pipe transport: no extra packages) -------------


class Chromium:
    """A headless Chromium driven over --remote-debugging-pipe (fd 3: commands in, fd 4: events out)."""

    def __init__(self, exe: str, profile: str):
        import fcntl

        cmd_r, self._cmd_w = os.pipe()
        self._out_r, out_w = os.pipe()

        def wire():  # in the child: put the pipe ends on fds 3 and 4, where Chromium expects them
            a, b = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10), fcntl.fcntl(out_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-pipe",
                 "--window-size=1280,2000", "about:blank"]
        self.proc = subprocess.Popen([exe, *flags], preexec_fn=wire, pass_fds=(3, 4), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(cmd_r)
        os.close(out_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    def _read(self, deadline: float) -> dict:
        import select

        while b"\0" not in self._buf:
            left = deadline - time.time()
            if left <= 0 or not select.select([self._out_r], [], [], left)[0]:
                raise TimeoutError("no answer from Chromium")
            chunk = os.read(self._out_r, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 20) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            m = self._read(deadline)
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_event(self, name: str, timeout: float = 20) -> dict:
        deadline = time.time() + timeout
        for m in self.events:
            if m.get("method") == name:
                return m
        while True:
            m = self._read(deadline)
            self.events.append(m)
            if m.get("method") == name:
                return m

    def close(self):
        with contextlib.suppress(Exception):  # a browser that already went away is closed enough
            self.send("Browser.close", timeout=5)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._cmd_w)
        os.close(self._out_r)


def _errors(events: list[dict]) -> list[str]:
    out = []
    for m in events:
        p = m.get("params", {})
        if m.get("method") == "Runtime.exceptionThrown":
            out.append(json.dumps(p.get("exceptionDetails", {}))[:300])
        elif m.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append(json.dumps(p.get("args", []))[:300])
        elif m.get("method") == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            out.append(p["entry"].get("text", "")[:300])
    return out


def test_report_opens_in_headless_chromium(full_run, tmp_path):
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (Debian package `chromium`; .ci/run installs it when it can)")
    browser = Chromium(exe, tempfile.mkdtemp(dir=tmp_path))
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Emulation.setDeviceMetricsOverride",
                     {"width": 1280, "height": 2400, "deviceScaleFactor": 1, "mobile": False}, session=session)
        browser.send("Page.navigate", {"url": (full_run / "report.html").as_uri()}, session=session)
        browser.wait_event("Page.loadEventFired", timeout=30)
        check = ("JSON.stringify({ids: " + json.dumps(list(SECTIONS)) + ".filter(i => document.getElementById(i)),"
                 " ready: window.attnReady === true,"
                 " heads: document.getElementById('attn-head').options.length,"
                 " drawn: (() => { const c = document.getElementById('attn-canvas');"
                 " return c.width > 0 && c.getContext('2d').getImageData(1, c.height - 2, 1, 1).data[3] > 0; })()})")
        state = json.loads(browser.send("Runtime.evaluate", {"expression": check, "returnByValue": True},
                                        session=session)["result"]["value"])
        shot = browser.send("Page.captureScreenshot", {"format": "png"}, session=session, timeout=30)
        png = Path(os.environ.get("TINYSTORIES_SCREENSHOT_DIR", tmp_path)) / "report.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        png.write_bytes(base64.b64decode(shot["data"]))
        print(f"screenshot: {png}")
        errors = _errors(browser.events)
    finally:
        browser.close()
    assert errors == []
    assert state == {"ids": list(SECTIONS), "ready": True, "heads": 8, "drawn": True}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
