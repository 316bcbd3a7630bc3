"""The GPU path of the training loop, exercised on the CPU: every branch a GPU run takes.

bf16 and fp16 autocast (with the loss scaler), the scaler skipping a step whose
gradients overflow, torch.compile, the background batch loader, and device
`auto`. On a GPU machine `benchmarks/gpu.sh` runs the same code on CUDA.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import conftest
from test_train import MICRO, losses, make_dataset, micro_cfg, open_split, weights
from tinystories import rundir
from tinystories.data.loader import Layout, TrainBatches, to_device
from tinystories.train import BatchLoader, TrainConfig, optimizer_step, peak_flops, train
from tinystories.train_setup import compute_dtype, make_optimizer, make_scaler


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    stories = conftest.testdata_path("tinystories/TinyStories-valid.first201.txt")
    return make_dataset(tmp_path_factory.mktemp("gpu_path") / "data", stories)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_device_auto_picks_cuda_only_when_present(dataset: Path, tmp_path: Path) -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert rundir.resolve_device("auto").type == expected
    assert TrainConfig().device == "auto"
    assert compute_dtype("auto", torch.device("cpu")) == torch.float32
    train(micro_cfg(dataset, tmp_path / "auto", max_steps=1), MICRO)
    assert rundir.read_config(tmp_path / "auto").train.device == "auto"
    env = (tmp_path / "auto" / "env.json").read_text()
    assert f'"device": "{expected}' in env


def test_device_auto_is_the_default_of_every_model_command() -> None:
    from tinystories.eval.diversity import DiversityConfig
    from tinystories.eval.instruct import InstructEvalConfig
    from tinystories.eval.judge import JudgeConfig
    from tinystories.eval.loss import LossConfig
    from tinystories.eval.probes import ProbesConfig
    from tinystories.interp.heads import HeadsConfig
    from tinystories.interp.neurons import NeuronsConfig
    from tinystories.sample import SampleConfig
    from tinystories.serve import ServeConfig

    for cls in (SampleConfig, ServeConfig, DiversityConfig, InstructEvalConfig, JudgeConfig, LossConfig, ProbesConfig, HeadsConfig,
                NeuronsConfig):
        field = cls.__dataclass_fields__["device"]
        assert field.default == "auto", cls.__name__
    assert rundir.with_device(SampleConfig(run="x")).device in ("cpu", "cuda:0")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_autocast_training_follows_the_fp32_curve(dataset: Path, tmp_path: Path, dtype: str) -> None:
    ref = tmp_path / "fp32"
    train(micro_cfg(dataset, ref, max_steps=12), MICRO)
    run = tmp_path / dtype
    summary = train(micro_cfg(dataset, run, max_steps=12, dtype=dtype), MICRO)
    assert summary is not None and math.isfinite(summary["loss"])
    a, b = losses(ref), losses(run)
    assert a != b  # the low-precision run really ran in low precision
    # Same data and initialisation: the curves agree to low-precision rounding and both go down.
    assert max(abs(a[s] - b[s]) for s in a) < 0.05 * a[1], (a, b)
    assert b[12] < b[1] - 0.3
    state = rundir.read_state(rundir.latest_checkpoint(run))
    if dtype == "float16":
        assert state["scaler"]["scale"] > 0  # the scale is part of the trajectory: saved for resume
    else:
        assert "scaler" not in state


def test_fp16_resume_continues_the_exact_trajectory(dataset: Path, tmp_path: Path) -> None:
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train(micro_cfg(dataset, whole, max_steps=6, decay_steps=6, dtype="float16"), MICRO)
    train(micro_cfg(dataset, parts, max_steps=3, decay_steps=6, dtype="float16"), MICRO)
    train(micro_cfg(dataset, parts, max_steps=6, decay_steps=6, dtype="float16", resume=True), MICRO)
    assert losses(whole) == losses(parts)
    wa, wb = weights(whole), weights(parts)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_scaler_skips_a_step_with_an_inf_gradient_and_lowers_the_scale() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    cfg = TrainConfig(lr=1e-2)
    optimizer = make_optimizer(model, cfg, torch.device("cpu"))
    scaler = make_scaler(torch.device("cpu"))
    x = torch.randn(4, 8)

    # A normal step moves the weights and keeps the scale.
    scale0 = scaler.get_scale()
    scaler.scale(model(x).square().mean()).backward()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer_step(model, optimizer, scaler, grad_clip=1.0)
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert scaler.get_scale() == scale0

    # An overflowing gradient: no parameter or optimizer state changes, the scale halves.
    scaler.scale(model(x).square().mean()).backward()
    next(model.parameters()).grad[0, 0] = float("inf")
    before = [p.detach().clone() for p in model.parameters()]
    moments = [optimizer.state[p]["exp_avg"].clone() for p in model.parameters()]
    grad_norm = optimizer_step(model, optimizer, scaler, grad_clip=1.0)
    assert grad_norm is not None and not torch.isfinite(grad_norm)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert all(torch.equal(m, optimizer.state[p]["exp_avg"]) for m, p in zip(moments, model.parameters(), strict=True))
    assert scaler.get_scale() == scale0 * 0.5
    assert all(p.grad is None for p in model.parameters())


def _compiled_vs_eager(dataset: Path, tmp_path: Path) -> None:
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    train(micro_cfg(dataset, eager, max_steps=3), MICRO)
    train(micro_cfg(dataset, compiled, max_steps=3, compile=True), MICRO)
    a, b = losses(eager), losses(compiled)
    assert sorted(a) == sorted(b) == [1, 2, 3]
    # Compiled graphs (SDPA instead of the C attention kernel, fused elementwise) round differently.
    assert all(abs(a[s] - b[s]) < 1e-3 for s in a), (a, b)
    wa, wb = weights(eager), weights(compiled)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-4, rtol=0) for k in wa)


def test_compiled_training_matches_eager(dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--compile traced by dynamo through the real loop; the aot_eager backend keeps it within the time limit."""
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compile_(model, backend="aot_eager", **kw))
    _compiled_vs_eager(dataset, tmp_path)


def test_compile_without_a_cpp_compiler_runs_eager(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Inductor builds its CPU kernels with a C++ compiler; without one the run stays eager instead of failing."""
    model = torch.nn.Linear(2, 2)
    monkeypatch.setattr(rundir.shutil, "which", lambda name: None)
    assert rundir.compiled(model, torch.device("cpu")) is model
    assert "no C++ compiler" in capsys.readouterr().err
    monkeypatch.setattr(rundir.shutil, "which", lambda name: "/usr/bin/" + name)
    assert rundir.compiled(model, torch.device("cpu")) is not model


@pytest.mark.slow
def test_compiled_training_matches_eager_with_inductor(dataset: Path, tmp_path: Path) -> None:
    """The same with the default backend (inductor generates and builds C++ on the CPU: ~30 s cold)."""
    _compiled_vs_eager(dataset, tmp_path)


@pytest.mark.parametrize("grad_accum", [1, 3])
def test_background_loader_gives_the_synchronous_batches_bitwise(dataset: Path, grad_accum: int) -> None:
    split = open_split(dataset, "train")
    layout = Layout(micro_batch=2, grad_accum=grad_accum, world_size=2)
    cpu = torch.device("cpu")
    # A small stream, so the loader wraps into later epochs (reshuffled windows) within the test.
    batches_sync, batches_async = TrainBatches(split, 64, seed=3), TrainBatches(split, 64, seed=3)
    epochs = 2 * batches_sync.windows_per_epoch // layout.global_batch + 1
    start = 5
    loader = BatchLoader(batches_async, layout, rank=1, start_step=start, device=cpu, threaded=True)
    try:
        assert loader.thread is not None and loader.thread.is_alive()
        for step in range(start, start + epochs):
            for micro in range(grad_accum):
                x, y = loader.get(step, micro)
                ex, ey = to_device(batches_sync.batch(step, layout, 1, micro), cpu)
                assert x.dtype == ex.dtype == torch.long and x.shape == (2, 64)
                assert torch.equal(x, ex) and torch.equal(y, ey)
    finally:
        loader.close()
    assert loader.thread is None
    assert not any(t.name == "tinystories-batches" for t in threading.enumerate())


def test_background_loader_raises_the_reading_error() -> None:
    class Broken:
        def batch(self, *args: object) -> np.ndarray:
            raise OSError("disk went away")

    loader = BatchLoader(Broken(), Layout(2, 1), 0, 0, torch.device("cpu"), threaded=True)  # type: ignore[arg-type]
    try:
        with pytest.raises(OSError, match="disk went away"):
            loader.get(0, 0)
    finally:
        loader.close()


def test_peak_is_measured_for_the_device() -> None:
    peak = peak_flops(torch.device("cpu"))
    assert peak is not None and 1e8 < peak < 1e14
    if torch.cuda.is_available():
        bf16 = peak_flops(torch.device("cuda"), torch.bfloat16)
        assert bf16 is not None and bf16 > 1e12
