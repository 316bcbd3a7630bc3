"""The run report: every section present, "not run" lines for missing stages, and a real browser opens it."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from browser import Chromium, chromium_or_skip, console_errors
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


def test_report_opens_in_headless_chromium(full_run, tmp_path):
    browser = Chromium(chromium_or_skip(), tempfile.mkdtemp(dir=tmp_path))
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
        errors = console_errors(browser.events)
    finally:
        browser.close()
    assert errors == []
    assert state == {"ids": list(SECTIONS), "ready": True, "heads": 8, "drawn": True}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
