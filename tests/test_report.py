"""The run report: a summary before the details of every stage, plots made for their data, a page that fits a
1280-pixel window and a phone, the comparison of runs, and rendering without matplotlib."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from browser import Chromium, chromium_or_skip, console_errors
from conftest import import_s260k
from conftest import testdata_path as data_file
from tinystories.report import ReportConfig, report

SECTIONS = ("headline", "config", "training", "samples", "eval", "heads", "neurons")
REAL = "tinystories/TinyStories-valid.first201.txt"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bare_run(tmp_path_factory):
    """stories260K imported as a run folder: a config and a checkpoint, no other stage run."""
    return import_s260k(tmp_path_factory.mktemp("report") / "s260k")


@pytest.fixture(scope="module")
def evaluated(bare_run, tmp_path_factory):
    """The same model after the eval stages: real loss on procedural and real text, probes, diversity against
    real stories; training metrics, samples with names, a consistency file and an eval file of a kind the
    report does not know are written by hand."""
    from tinystories.eval.diversity import DiversityConfig, evaluate_diversity
    from tinystories.eval.loss import LossConfig, evaluate_loss
    from tinystories.eval.probes import ProbesConfig, evaluate_probes
    from tinystories.synth.procedural import story_record

    run = tmp_path_factory.mktemp("full") / "run"
    shutil.copytree(bare_run, run)
    with open(run / "metrics.jsonl", "w") as f:
        for step in range(0, 200, 10):
            row = {"step": step, "tokens": step * 4096, "loss": 5 * 0.99**step, "lr": 1e-3, "tokens_per_s": 1e4}
            if step % 50 == 0:
                row["val_loss"] = 5.1 * 0.99**step
            f.write(json.dumps(row) + "\n")
    (run / "samples").mkdir()
    (run / "samples" / "a.json").write_text(json.dumps({"samples": [
        {"prompt": "Once upon a time", "completion": " there was a <dog> & a cat."},
        {"prompt": "One day, Lily", "completion": " met Tom. Lily and Tom played. Tommy watched.",
         "names": ["Lily", "Tom"]}]}))
    (run / "eval").mkdir()
    proc = run.parent / "procedural.txt"
    proc.write_text("\n<|endoftext|>\n".join(story_record(0, i)["story"] for i in range(4)))
    for name, text in (("procedural", proc), ("real", data_file(REAL))):
        result = evaluate_loss(LossConfig(run=str(run), data=(str(text),), max_stories=4, write=False))
        (run / "eval" / f"loss_{name}.json").write_text(json.dumps(result))
    evaluate_probes(ProbesConfig(run=str(run), sets="builtin,procedural", n=20, max_new_tokens=0))
    evaluate_diversity(DiversityConfig(run=str(run), data=(str(data_file(REAL)),), n=4, max_new_tokens=30,
                                       plot=False))
    (run / "eval" / "consistency.json").write_text(json.dumps({
        "median_distinct_names": 2.0, "protagonist_kept_share": 0.75, "said_once_share": 0.625, "n_samples": 4,
        "one_name_for_two_share": 0.375,
        "reference": {"median_distinct_names": 2.5, "said_once_share": 0.025, "one_name_for_two_share": 0.01,
                      "source": "real TinyStories"},
        "per_sample": [2, 2, 3, 1]}))
    (run / "eval" / "custom.json").write_text(json.dumps({
        "score": 0.61, "environment": {"host": "x"},
        "spread": {"histogram": {"edges": [0, 0.25, 0.5, 0.75, 1.0], "counts": [1, 4, 2, 1]}},
        "margins": [0.1, -0.2, 0.5, 0.3, 0.9, -0.1],
        "by_step": [{"step": s, "accuracy": 0.5 + s / 1000} for s in (0, 100, 200)]}))
    return run


@pytest.fixture(scope="module")
def full_run(evaluated):
    """The evaluated run after both interpretability stages too (fixtures of their own: on a busy machine
    the costs land on different tests)."""
    from tinystories.interp.heads import HeadsConfig, interpret_heads
    from tinystories.interp.neurons import NeuronsConfig, interpret_neurons

    run = evaluated
    interpret_heads(HeadsConfig(run=str(run), stories=2, controls=False, png=False,
                                text="One day, Lucy asks Tom for a banana."))
    interpret_neurons(NeuronsConfig(run=str(run), stories=2, random_directions=100, protagonist_stories=2,
                                    examples=3))
    return run


@pytest.fixture(scope="module")
def full_page(full_run):
    """The full run with its report.html written."""
    report(ReportConfig(run=(str(full_run),)))
    return full_run


def images(page: str) -> list[str]:
    """The titles (alt text) of the page's images."""
    return re.findall(r'<img alt="([^"]*)"', page)


def stages(page: str) -> list[tuple[str, str]]:
    """(id, html) of each stage block."""
    starts = [(m.start(), m.group(1)) for m in re.finditer(r'<div class="stage" id="([^"]+)">', page)]
    return [(sid, page[a:b]) for (a, sid), (b, _) in zip(starts, [*starts[1:], (len(page), "")])]


def test_bare_run_says_not_run_for_each_missing_stage(bare_run):
    out = report(ReportConfig(run=(str(bare_run),)))
    page = Path(out["written"]).read_text()
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in page
    for what in ("training", "samples", "eval loss", "eval probes", "attention heads", "MLP neurons"):
        assert f"not run: {what}" in page, what
    assert "non-embedding parameters" in page


def test_report_renders_without_matplotlib(evaluated, tmp_path, monkeypatch):
    from tinystories.errors import UserError
    from tinystories.report import pyplot

    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    out = report(ReportConfig(run=(str(evaluated),), out=str(tmp_path / "r.html")))
    page = Path(out["written"]).read_text()
    assert out["plots"] is False and images(page) == []
    assert "plots omitted: matplotlib is not installed (pip install &#x27;tinystories[report]&#x27;)" in page
    assert "Probe accuracy" not in page and "all items (n=" in page  # the figures stay, as tables
    with pytest.raises(UserError, match=r"tinystories\[report\]"):
        pyplot()


def test_every_stage_shows_its_summary_before_its_details(full_page):
    page = (full_page / "report.html").read_text()
    found = dict(stages(page))
    for sid in ("config-stage", "training-stage", "eval-loss", "eval-probes", "eval-diversity", "eval-consistency",
                "eval-custom", "heads-stage", "neurons-layer3"):
        assert sid in found, sid
        block = found[sid]
        assert block.count('<details class="stage-details">') <= 1, sid
        assert block.index('<div class="summary">') < block.find('<details class="stage-details">'), sid
        assert '<p class="read">' in block.split('<details class="stage-details">')[0], sid
    # Bookkeeping stays inside the details block: no environment row before it.
    for sid in ("eval-probes", "eval-diversity", "eval-custom"):
        summary, detail = found[sid].split('<details class="stage-details">')
        assert "environment" not in summary and "environment" in detail, sid
    # The headline figures come before any configuration row.
    assert page.index('id="headline"') < page.index('<details class="stage-details">')
    assert page.count("not run:") == 1  # eval judge: the one stage this run has not had


def test_loss_sits_in_one_table_and_the_figures_are_the_stage_files(full_page):
    page = (full_page / "report.html").read_text()
    block = dict(stages(page))["eval-loss"].split("<details")[0]
    assert block.count("<table") == 1 and "<th>procedural</th><th>real</th>" in block
    for name in ("procedural", "real"):
        data = json.loads((full_page / "eval" / f"loss_{name}.json").read_text())
        assert f"{data['per_story']['bits_per_byte']:,.4g}" in block
    probes = json.loads((full_page / "eval" / "probes.json").read_text())
    lo, hi = probes["ci95"]
    head = page[page.index('id="headline"'):page.index('id="config"')]
    assert f"{100 * probes['accuracy']:.1f}% ({100 * lo:.1f}-{100 * hi:.1f})" in head


def test_plots_are_made_for_their_data(full_page):
    page = (full_page / "report.html").read_text()
    titles = images(page)
    assert "Probe accuracy by set and category (95% Wilson intervals)" in titles
    memo = [t for t in titles if "(Fig. 1" in t]
    assert any("Fig. 14" in t for t in memo) and any("Fig. 16" in t for t in memo) and len(memo) >= 4
    assert "spread" in titles  # the unknown file's histogram: drawn over its bins, as one plot
    assert not [t for t in titles if "edges" in t or "counts" in t]
    assert "Loss during training" in titles and "Judge" not in " ".join(titles)
    # Self-contained: nothing is fetched from anywhere.
    for bad in ("http://", "https://", 'src="//'):
        assert bad not in page


def test_names_and_character_consistency(full_page):
    page = (full_page / "report.html").read_text()
    assert "&lt;dog&gt; &amp; a cat" in page  # samples are escaped
    assert page.count('<mark class="name">Lily</mark>') == 2 and page.count('<mark class="name">Tom</mark>') == 2
    assert "Tommy" in page and '<mark class="name">Tommy' not in page  # whole words only
    block = dict(stages(page))["eval-consistency"].split("<details")[0]
    assert "Character consistency" in block and "75.0%" in block and "2.5" in block and "real TinyStories" in block
    assert "name someone only once" in block and "62.5%" in block and "2.5%" in block
    assert "give two characters one name" in block and "37.5%" in block and "1.0%" in block



def test_partial_and_odd_stage_files_still_render(bare_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(bare_run, run)
    (run / "eval").mkdir()
    (run / "eval" / "consistency.json").write_text(json.dumps({"median_distinct_names": 3.0}))
    (run / "eval" / "probes.json").write_text(json.dumps({"accuracy": "n/a", "by_category": [1, 2]}))
    (run / "eval" / "judge.json").write_text(json.dumps({"scores": {"grammar": {"mean": 6.5, "ci95": [6.1, 6.9]}}}))
    (run / "eval" / "broken.json").write_text("{not json")
    (run / "samples").mkdir()
    (run / "samples" / "s.json").write_text(json.dumps({"samples": [{"completion": "Tom ran.", "names": None}]}))
    page = Path(report(ReportConfig(run=(str(run),)))["written"]).read_text()
    block = dict(stages(page))["eval-consistency"]
    assert "3.0" in block and "<td class=\"n\">-</td>" in block  # the missing figures show as "-"
    assert "6.50 (6.10-6.90)" in dict(stages(page))["eval-judge"]
    assert "eval-probes" in dict(stages(page)) and "broken.json could not be read" in page
    assert "Tom ran." in page and '<mark class="name">' not in page


def test_cli_writes_the_report(bare_run, tmp_path):
    exe = str(Path(sys.executable).parent / "tinystories")
    out = tmp_path / "r.html"
    proc = subprocess.run([exe, "report", "--run", str(bare_run), "--out", str(out)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text().startswith("<!DOCTYPE html>")
    bad = subprocess.run([exe, "report", "--run", str(tmp_path / "nope")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no run folder" in bad.stderr


def test_cli_compares_runs_side_by_side(evaluated, bare_run, tmp_path):
    from tinystories.eval.probes import ProbesConfig, evaluate_probes

    exe = str(Path(sys.executable).parent / "tinystories")
    other = tmp_path / "other"
    shutil.copytree(bare_run, other)
    evaluate_probes(ProbesConfig(run=str(other), sets="fact", max_new_tokens=0))
    cmp = tmp_path / "compare.html"
    proc = subprocess.run([exe, "report", "--run", str(evaluated), "--run", str(other), "--out", str(cmp)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    page = cmp.read_text()
    assert "<th>figure</th><th>run</th><th>other</th>" in page
    row = page[page.index("<td>probes: all items</td>"):].split("</tr>")[0]
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", row)[1:]
    assert len(cells) == 2
    for run, cell in zip((evaluated, other), cells):
        acc = json.loads((run / "eval" / "probes.json").read_text())["accuracy"]
        assert cell.startswith(f"{100 * acc:.1f}%")
    assert cells[0] != cells[1]
    assert "Probe accuracy, runs side by side" in images(page)


def _open(browser: Chromium, path: Path, width: int) -> str:
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Runtime", "Log", "Page"):
        browser.send(f"{domain}.enable", session=session)
    browser.send("Emulation.setDeviceMetricsOverride",
                 {"width": width, "height": 1600, "deviceScaleFactor": 1, "mobile": width < 600}, session=session)
    browser.events.clear()
    browser.send("Page.navigate", {"url": path.as_uri()}, session=session)
    browser.wait_event("Page.loadEventFired", timeout=30)
    return session


def _eval(browser: Chromium, session: str, expr: str):
    return json.loads(browser.send("Runtime.evaluate", {"expression": f"JSON.stringify({expr})",
                                                        "returnByValue": True}, session=session)["result"]["value"])


def test_report_opens_in_headless_chromium_and_fits_1280_and_390(full_page, bare_run, tmp_path):
    from tinystories.report.headline import compare_page

    cmp = tmp_path / "compare.html"
    cmp.write_text(compare_page([full_page, bare_run]))
    browser = Chromium(chromium_or_skip(), tempfile.mkdtemp(dir=tmp_path))
    widths, errors = {}, []
    try:
        session = _open(browser, full_page / "report.html", 1280)
        state = _eval(browser, session, "{ids: " + json.dumps(list(SECTIONS)) + ".filter(i => document.getElementById(i)),"
                      " ready: window.attnReady === true,"
                      " heads: document.getElementById('attn-head').options.length,"
                      " drawn: (() => { const c = document.getElementById('attn-canvas');"
                      " return c.width > 0 && c.getContext('2d').getImageData(1, c.height - 2, 1, 1).data[3] > 0; })()}")
        shot = browser.send("Page.captureScreenshot", {"format": "png"}, session=session, timeout=30)
        png = Path(os.environ.get("TINYSTORIES_SCREENSHOT_DIR", tmp_path)) / "report.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        png.write_bytes(base64.b64decode(shot["data"]))
        for page, width in ((full_page / "report.html", 1280), (full_page / "report.html", 390), (cmp, 1280),
                            (cmp, 390)):
            session = _open(browser, page, width)
            widths[(page.name, width)] = _eval(browser, session, "[document.documentElement.scrollWidth, innerWidth]")
            errors += console_errors(browser.events)
    finally:
        browser.close()
    assert errors == []
    assert state == {"ids": list(SECTIONS), "ready": True, "heads": 8, "drawn": True}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    for key, (scroll, inner) in widths.items():
        assert inner == key[1] and scroll <= inner, (key, scroll)
