"""`tinystories serve`: a real uvicorn server on 127.0.0.1 serving stories260K, driven over HTTP and the openai SDK."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import multiprocessing
import os
import socket
import threading
import time

import pytest
import torch

from conftest import import_s260k
from conftest import testdata_path as data_file

pytest.importorskip("starlette", reason="the [serve] extra (starlette, uvicorn) is not installed")
uvicorn = pytest.importorskip("uvicorn", reason="the [serve] extra (starlette, uvicorn) is not installed")

from tinystories.serve import ServeConfig  # noqa: E402
from tinystories.serve.api import build_app  # noqa: E402

KEY = "test-key-7f3a"
KEY_ENV = "TINYSTORIES_TEST_SERVE_KEY"
PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """llama2.c's stories260K imported as a run folder, as `tinystories convert` does."""
    return import_s260k(tmp_path_factory.mktemp("serve") / "s260k", tokenizer="llama2c/tok512.model")


@contextlib.contextmanager
def server(cfg: ServeConfig, wait: bool = True):
    """A uvicorn server on a free port of 127.0.0.1, in a thread; yields the port."""
    app = build_app(cfg)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 20
        while not srv.started and time.time() < deadline:
            time.sleep(0.02)
        while wait and request(port, "GET", "/health")[0] != 200 and time.time() < deadline:
            time.sleep(0.05)
        yield port
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
        sock.close()


def request(port: int, method: str, path: str, body: object = None, key: str | None = KEY,
            raw: bytes | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    conn.request(method, path, body=data, headers=headers)
    resp = conn.getresponse()
    text = resp.read()
    conn.close()
    return resp.status, json.loads(text) if text else {}


@contextlib.contextmanager
def serving(run_dir, engine: str):
    os.environ[KEY_ENV] = KEY
    cfg = ServeConfig(run=(str(run_dir),), api_key_env=KEY_ENV, max_streams=4, max_queue=16, max_n=4,
                      max_tokens=600, max_body_bytes=100_000, engine=engine)
    try:
        with server(cfg) as p:
            yield p
    finally:
        os.environ.pop(KEY_ENV, None)


@pytest.fixture(scope="module")
def port(run_dir):
    """The server as it runs by default: the model steps in an engine process of its own."""
    with serving(run_dir, "process") as p:
        yield p


@pytest.fixture(scope="module")
def inline_port(run_dir):
    """The server with the model stepping on its own event loop (--engine inline): tests can patch the sampler."""
    with serving(run_dir, "inline") as p:
        yield p


def greedy(port: int, prompt: str = PROMPT, max_tokens: int = 120, **extra) -> dict:
    status, body = request(port, "POST", "/v1/completions", {"model": "s260k", "prompt": prompt,
                                                             "max_tokens": max_tokens, "temperature": 0, **extra})
    assert status == 200, body
    return body


def sse(port: int, body: dict, key: str = KEY) -> list:
    """The events of a streamed request, [DONE] included, as parsed objects (or the string)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.request("POST", "/v1/completions" if "prompt" in body else "/v1/chat/completions",
                 body=json.dumps(body), headers={"Authorization": f"Bearer {key}"})
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("content-type").startswith("text/event-stream")
    events = []
    for line in resp.read().decode().split("\n\n"):
        if line.startswith("data: "):
            data = line[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    conn.close()
    return events


# --- the same greedy text everywhere ----------------------------------------------------------


def test_greedy_api_equals_sample_command_and_library(run_dir, port, tmp_path):
    from tinystories.cli import run
    from tinystories.rundir import load_run
    from tinystories.sample import SampleParams, complete, prompt_ids

    api = greedy(port, max_tokens=200)["choices"][0]
    events = sse(port, {"model": "s260k", "prompt": PROMPT, "max_tokens": 200, "temperature": 0, "stream": True})
    assert events[-1] == "[DONE]"
    streamed = "".join(e["choices"][0]["text"] for e in events[:-1])
    assert len(events) >= 3  # tokens arrived in several events (one per 20 ms slice), not as one answer

    out = tmp_path / "sample.json"
    with contextlib.redirect_stdout(None):
        run(["sample", "--run", str(run_dir), "--prompt", PROMPT, "--temperature", "0", "--max-new-tokens", "200",
             "--no-stream", "--out", str(out)])
    cli = json.loads(out.read_text())["samples"][0]

    loaded = load_run(run_dir)
    ids = prompt_ids(loaded.tokenizer, PROMPT)
    done = complete(loaded.model, [ids], SampleParams(temperature=0.0, max_new_tokens=200),
                    eot_id=loaded.tokenizer.eot_id)[0]
    library = loaded.tokenizer.decode(ids + done.tokens)[len(loaded.tokenizer.decode(ids)):]

    assert api["text"] == streamed == cli["completion"] == library
    assert len(api["text"]) > 100
    assert api["finish_reason"] == {"length": "length", "stop": "stop"}[cli["finish_reason"]]


def test_greedy_from_scratch_is_llama2c_golden_text(port):
    expected = data_file("llama2c/stories260K.expected.greedy-n200.txt").read_text(encoding="utf-8").rstrip("\n")
    assert greedy(port, prompt="", max_tokens=200)["choices"][0]["text"] == expected


def test_seeded_sampling_repeats_and_n_choices_differ(port):
    body = {"model": "s260k", "prompt": PROMPT, "max_tokens": 40, "temperature": 1.0, "top_p": 0.9,
            "seed": 7, "n": 3}
    a = request(port, "POST", "/v1/completions", body)[1]
    b = request(port, "POST", "/v1/completions", body)[1]
    texts = [c["text"] for c in a["choices"]]
    assert texts == [c["text"] for c in b["choices"]]
    assert len(set(texts)) == 3
    assert [c["index"] for c in a["choices"]] == [0, 1, 2]
    assert a["usage"]["completion_tokens"] >= 3


def test_logprobs_match_the_model(run_dir, port):
    from tinystories.rundir import load_run
    from tinystories.sample import prompt_ids

    c = greedy(port, max_tokens=8, logprobs=3)["choices"][0]
    lp = c["logprobs"]
    assert "".join(lp["tokens"]) == c["text"]
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(len(lp["tokens"]))]
    events = sse(port, {"model": "s260k", "prompt": PROMPT, "max_tokens": 8, "temperature": 0, "stream": True,
                        "logprobs": 3})
    streamed = [e["choices"][0]["logprobs"] for e in events[:-1]]
    for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
        assert [x for s in streamed for x in s[key]] == lp[key]
    loaded = load_run(run_dir)
    ids = prompt_ids(loaded.tokenizer, PROMPT)
    new = loaded.tokenizer.encode(PROMPT + c["text"])[len(ids) - 1:]
    with torch.no_grad():
        logits = loaded.model(torch.tensor([ids + new]), logits="all").logits[0].double()  # (T, V)
    ref = torch.log_softmax(logits, dim=-1)
    for i, (tok_lp, top) in enumerate(zip(lp["token_logprobs"], lp["top_logprobs"])):
        row = ref[len(ids) - 1 + i]
        assert tok_lp == pytest.approx(row.max().item(), abs=1e-4)  # greedy: the chosen token is the best
        assert len(top) == 3
        assert sorted(top.values(), reverse=True) == pytest.approx(row.topk(3).values.tolist(), abs=1e-4)


def test_stop_strings_and_echo(port):
    full = greedy(port, max_tokens=60)["choices"][0]["text"]
    stop = full[20:24]
    cut = greedy(port, max_tokens=60, stop=[stop])["choices"][0]
    assert cut["text"] == full[: full.index(stop)]
    assert cut["finish_reason"] == "stop"
    events = sse(port, {"model": "s260k", "prompt": PROMPT, "max_tokens": 60, "temperature": 0, "stream": True,
                        "stop": stop})
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == cut["text"]
    assert greedy(port, max_tokens=10, echo=True)["choices"][0]["text"].startswith(PROMPT)


def test_usage_chunk_when_asked(port):
    events = sse(port, {"model": "s260k", "prompt": PROMPT, "max_tokens": 12, "temperature": 0, "stream": True,
                        "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    usage = events[-2]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 12
    assert usage["usage"]["prompt_tokens"] == greedy(port, max_tokens=1)["usage"]["prompt_tokens"]
    assert events[-3]["choices"][0]["finish_reason"] == "length"


# --- the openai SDK, unchanged ----------------------------------------------------------------


def test_openai_sdk_streaming_and_not(port):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list().data] == ["s260k"]
    expected = greedy(port, max_tokens=50)["choices"][0]["text"]
    r = client.completions.create(model="s260k", prompt=PROMPT, max_tokens=50, temperature=0)
    assert r.choices[0].text == expected and r.usage.completion_tokens == 50
    stream = client.completions.create(model="s260k", prompt=PROMPT, max_tokens=50, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in stream) == expected

    chat = client.chat.completions.create(model="s260k", messages=[{"role": "user", "content": PROMPT}],
                                          max_tokens=50, temperature=0)
    assert chat.choices[0].message.content == expected
    pieces = client.chat.completions.create(model="s260k", messages=[{"role": "user", "content": PROMPT}],
                                            max_tokens=50, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in pieces if c.choices) == expected
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt=PROMPT, max_tokens=5)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", max_retries=0).models.list()


def test_chat_instruct_fields_become_an_instruct_prompt():
    from tinystories.serve.api import chat_prompt

    assert chat_prompt([{"role": "user", "content": "Lily went"}]) == "Lily went"
    msgs = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "Words: dog, ball\nSummary: x."}]
    assert chat_prompt(msgs) == "Words: dog, ball\nSummary: x.\nStory:"


# --- bad requests ------------------------------------------------------------------------------


BAD = [
    ("malformed JSON", b'{"model": "s260k", "prompt": ', 400, "invalid_json"),
    ("not an object", b"[1, 2]", 400, "invalid_json"),
    ("wrong type max_tokens", {"prompt": PROMPT, "max_tokens": "10"}, 400, None),
    ("wrong type temperature", {"prompt": PROMPT, "temperature": "hot"}, 400, None),
    ("wrong type prompt", {"prompt": 5}, 400, None),
    ("boolean as integer", {"prompt": PROMPT, "max_tokens": True}, 400, None),
    ("wrong type stream", {"prompt": PROMPT, "stream": "yes"}, 400, None),
    ("unknown field", {"prompt": PROMPT, "max_tokenz": 10}, 400, "unknown_field"),
    ("huge max_tokens", {"prompt": PROMPT, "max_tokens": 10**9}, 400, None),
    ("negative temperature", {"prompt": PROMPT, "temperature": -0.5}, 400, None),
    ("top_p zero", {"prompt": PROMPT, "top_p": 0}, 400, None),
    ("n over the limit", {"prompt": PROMPT, "n": 5}, 400, None),
    ("prompts x n over the limit", {"prompt": [PROMPT] * 3, "n": 2}, 400, None),
    ("logprobs over 5", {"prompt": PROMPT, "logprobs": 6}, 400, None),
    ("too many stop strings", {"prompt": PROMPT, "stop": ["a", "b", "c", "d", "e"]}, 400, None),
    ("unsupported penalty", {"prompt": PROMPT, "presence_penalty": 1.0}, 400, "unsupported_value"),
    ("token id out of range", {"prompt": [1, 99999]}, 400, None),
    ("unknown model", {"model": "nope", "prompt": PROMPT}, 404, "model_not_found"),
    ("prompt over the context", {"prompt": "the dog ran " * 400}, 400, "context_length_exceeded"),
    ("body over the limit", {"prompt": "x" * 200_000}, 413, "request_too_large"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_request_gets_openai_error(port, case):
    _, body, status, code = case
    if isinstance(body, dict):
        got, answer = request(port, "POST", "/v1/completions", {"model": "s260k", **body})
    else:
        got, answer = request(port, "POST", "/v1/completions", raw=body)
    assert got == status, answer
    err = answer["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code


def test_bad_chat_requests(port):
    url = "/v1/chat/completions"
    assert request(port, "POST", url, {"model": "s260k"})[0] == 400  # no messages
    assert request(port, "POST", url, {"model": "s260k", "messages": [{"role": "x", "content": "a"}]})[0] == 400
    assert request(port, "POST", url, {"model": "s260k", "messages": [{"role": "user", "content": 3}]})[0] == 400
    assert request(port, "POST", url, {"model": "s260k", "messages": [{"role": "system", "content": "a"}]})[0] == 400


def test_missing_or_wrong_key(port):
    for key in (None, "wrong"):
        status, body = request(port, "POST", "/v1/completions", {"model": "s260k", "prompt": PROMPT}, key=key)
        assert status == 401 and body["error"]["type"] == "authentication_error"
        assert request(port, "GET", "/v1/models", key=key)[0] == 401
    assert request(port, "GET", "/health", key=None)[0] == 200  # health and the page need no key
    assert request(port, "GET", "/nope")[0] == 404
    assert request(port, "GET", "/v1/completions")[0] == 405


def _hang_up_and_see_rows_freed(sock: socket.socket, port: int) -> float:
    """Close the client's socket; its rows must be free within 2 s. Returns when it hung up."""
    t0 = time.time()
    sock.close()
    while request(port, "GET", "/health")[1]["running"] and time.time() - t0 < 3:
        time.sleep(0.02)
    assert request(port, "GET", "/health")[1]["running"] == 0
    assert time.time() - t0 < 2
    return t0


def test_client_disconnecting_mid_stream_frees_its_row(inline_port, monkeypatch):
    from tinystories.sample import Sampler

    port = inline_port

    step = Sampler.step

    def slow_step(self):  # 500 tokens now take >= 5 s, so a freed row is told apart from a finished one
        time.sleep(0.01)
        return step(self)

    monkeypatch.setattr(Sampler, "step", slow_step)
    before = greedy(port, max_tokens=30)
    sock = socket.create_connection(("127.0.0.1", port))
    body = json.dumps({"model": "s260k", "prompt": PROMPT, "max_tokens": 500, "temperature": 0, "stream": True,
                       "stop": "no such stop"}).encode()
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: " + str(len(body)).encode()
                 + b"\r\n\r\n" + body)
    got = b""
    while b"data: " not in got:  # the headers, then the first tokens
        got += sock.recv(4096)
    assert request(port, "GET", "/health")[1]["running"] == 1
    t0 = _hang_up_and_see_rows_freed(sock, port)
    assert greedy(port, max_tokens=30)["choices"] == before["choices"]

    # The same for a client that waits for a whole (non-streamed) answer and gives up.
    sock = socket.create_connection(("127.0.0.1", port))
    body = json.dumps({"model": "s260k", "prompt": PROMPT, "max_tokens": 500, "temperature": 0, "n": 2,
                       "stop": "no such stop"}).encode()
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
                 + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    while request(port, "GET", "/health")[1]["running"] < 2:
        assert time.time() - t0 < 10
        time.sleep(0.02)
    _hang_up_and_see_rows_freed(sock, port)


async def _post(port: int, body: dict) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = json.dumps(body).encode()
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer "
                 + KEY.encode() + b"\r\nContent-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return int(answer.split(b" ", 2)[1])


@pytest.fixture(params=["process", "inline"])
def either_port(request):
    """Each engine's server in turn."""
    return request.getfixturevalue("port" if request.param == "process" else "inline_port")


def test_200_requests_against_a_queue_of_16(either_port):
    port = either_port
    before = greedy(port)

    async def flood() -> list[int]:
        bodies = [{"model": "s260k", "prompt": f"Tom had {i} apples", "max_tokens": 40, "seed": i,
                   "stream": i % 2 == 0} for i in range(200)]
        return await asyncio.gather(*(_post(port, b) for b in bodies))

    codes = asyncio.run(flood())
    assert set(codes) <= {200, 429}
    assert codes.count(429) > 0 and codes.count(200) >= 16
    assert request(port, "GET", "/health")[1]["waiting"] == 0
    assert greedy(port)["choices"] == before["choices"]


def test_health_503_while_loading(run_dir, monkeypatch):
    import tinystories.rundir

    gate = threading.Event()
    load = tinystories.rundir.load_run

    def slow_load(*a, **k):
        gate.wait(10)
        return load(*a, **k)

    monkeypatch.setattr(tinystories.rundir, "load_run", slow_load)
    with server(ServeConfig(run=(str(run_dir),)), wait=False) as p:
        status, body = request(p, "GET", "/health")
        assert status == 503 and body["status"] == "loading"
        status, body = request(p, "POST", "/v1/completions", {"model": "s260k", "prompt": PROMPT})
        assert status == 503 and body["error"]["code"] == "loading"
        gate.set()
        deadline = time.time() + 10
        while request(p, "GET", "/health")[0] != 200 and time.time() < deadline:
            time.sleep(0.05)
        assert request(p, "POST", "/v1/completions", {"model": "s260k", "prompt": PROMPT, "max_tokens": 3})[0] == 200


def test_attention_endpoint_rows_are_distributions(port):
    status, body = request(port, "POST", "/v1/attention", {"model": "s260k", "text": PROMPT, "layer": 2, "head": 3})
    assert status == 200
    rows = body["attention"]
    assert len(rows) == len(body["tokens"]) and [len(r) for r in rows] == list(range(1, len(rows) + 1))
    assert all(abs(sum(r) - 1) < 1e-2 for r in rows)
    assert "".join(body["tokens"][1:]) == PROMPT
    assert request(port, "POST", "/v1/attention", {"model": "s260k", "text": "a", "layer": 9})[0] == 400


def test_missing_extra_is_a_one_line_error(run_dir, monkeypatch):
    import sys

    from tinystories.errors import UserError
    from tinystories.serve import serve

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if the [serve] extra were not installed
    with pytest.raises(UserError, match=r"\[serve\] extra"):
        serve(ServeConfig(run=(str(run_dir),)))


def test_config_errors(run_dir, tmp_path):
    from tinystories.cli import run
    from tinystories.errors import UserError

    with pytest.raises(UserError, match="--run is required"):
        build_app(ServeConfig())
    with pytest.raises(UserError, match="no run folder"):
        build_app(ServeConfig(run=(str(tmp_path / "none"),)))
    with pytest.raises(UserError, match="NO_SUCH_VAR"):
        build_app(ServeConfig(run=(str(run_dir),), api_key_env="NO_SUCH_VAR"))
    with pytest.raises(UserError, match="two runs"):
        build_app(ServeConfig(run=(str(run_dir), str(run_dir))))
    with pytest.raises(UserError, match="two runs"):  # --run repeated collects both
        run(["serve", "--run", str(run_dir), "--run", str(run_dir)])


# --- the playground in headless Chromium --------------------------------------------------------


def test_playground_in_headless_chromium(run_dir, tmp_path, monkeypatch):
    import base64
    import tempfile
    from pathlib import Path

    from browser import Chromium, chromium_or_skip, console_errors
    from tinystories.sample import Sampler

    exe = chromium_or_skip()
    step = Sampler.step

    def slow_step(self):  # ~5 ms a token, so the page visibly receives the story piece by piece
        time.sleep(0.005)
        return step(self)

    monkeypatch.setattr(Sampler, "step", slow_step)
    shots = Path(os.environ.get("TINYSTORIES_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    # Inline: the patched step runs in this process (the page is the same with either engine).
    with server(ServeConfig(run=(str(run_dir),), engine="inline")) as port:
        browser = Chromium(exe, tempfile.mkdtemp(dir=tmp_path))
        try:
            target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

            def js(expr: str):
                got = browser.send("Runtime.evaluate", {"expression": expr, "returnByValue": True,
                                                        "awaitPromise": True}, session=session)
                assert "exceptionDetails" not in got, got
                return got["result"].get("value")

            def until(expr: str, timeout: float = 15):
                deadline = time.time() + timeout
                while not js(expr):
                    assert time.time() < deadline, f"timed out waiting for {expr}"
                    time.sleep(0.05)

            def shot(name: str) -> Path:
                data = browser.send("Page.captureScreenshot", {"format": "png"}, session=session, timeout=30)
                path = shots / f"serve-{name}.png"
                path.write_bytes(base64.b64decode(data["data"]))
                print(f"screenshot: {path}")
                return path

            for domain in ("Runtime", "Log", "Page"):
                browser.send(f"{domain}.enable", session=session)
            browser.send("Emulation.setDeviceMetricsOverride",
                         {"width": 1100, "height": 1000, "deviceScaleFactor": 1, "mobile": False}, session=session)
            browser.send("Page.navigate", {"url": f"http://127.0.0.1:{port}/"}, session=session)
            browser.wait_event("Page.loadEventFired", timeout=30)
            until("document.getElementById('model').options.length === 1")
            assert js("document.getElementById('head').options.length") == 8

            # Type a beginning and write; count the token spans at every change of the story.
            js("document.getElementById('prompt').value = ''; document.getElementById('prompt').focus()")
            browser.send("Input.insertText", {"text": "Lily found a red ball in the garden."}, session=session)
            js("document.getElementById('seed').value = '5'; document.getElementById('max_tokens').value = '150'")
            js("window.seen = []; new MutationObserver(() => window.seen.push("
               "document.querySelectorAll('#story .tok').length)).observe(document.getElementById('story'),"
               " {childList: true}); document.getElementById('go').click()")
            until("!document.getElementById('go').disabled && document.querySelectorAll('#story .tok').length > 0")
            seen = js("window.seen")
            n_tokens = js("document.querySelectorAll('#story .tok').length")
            assert len(set(seen)) >= 5, seen  # the text arrived in many pieces, not at once
            assert n_tokens > 20
            assert js("document.getElementById('story').textContent").startswith("Lily found a red ball")
            assert "tokens in" in js("document.getElementById('status').textContent")

            # Hover a token: its alternatives appear.
            box = js("(() => { const r = document.querySelectorAll('#story .tok')[6].getBoundingClientRect();"
                     " return [r.left + r.width / 2, r.top + r.height / 2]; })()")
            browser.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": box[0], "y": box[1]},
                         session=session)
            until("!document.getElementById('tip').hidden")
            assert js("document.querySelectorAll('#tip .alt').length") >= 2
            assert "p = " in js("document.getElementById('tip').textContent")
            shot("hover")

            # The attention view, for layer 2 head 1, of a chosen token.
            browser.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": 5, "y": 5}, session=session)
            js("const l = document.getElementById('layer'); l.value = '2';"
               " const h = document.getElementById('head'); h.value = '1'; document.getElementById('attn').click()")
            until("document.querySelectorAll('#attn-view .a').length > 20")
            js("document.querySelectorAll('#attn-view .a')[12].click()")
            assert js("document.querySelector('#attn-view .a.sel').dataset.i") == "12"
            weights = js("[...document.querySelectorAll('#attn-view .a')].slice(0, 12)"
                         ".map(s => Number(s.style.getPropertyValue('--w')))")
            assert max(weights) == 1.0 and all(0 <= w <= 1 for w in weights)
            assert "looks most at" in js("document.getElementById('attn-hint').textContent")
            js("document.querySelector('.attention').scrollIntoView()")
            shot("attention")

            # Phone width: nothing wider than the screen.
            browser.send("Emulation.setDeviceMetricsOverride",
                         {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}, session=session)
            js("window.scrollTo(0, 0)")
            time.sleep(0.3)
            assert js("document.documentElement.scrollWidth") <= 390
            shot("phone")
            errors = console_errors(browser.events)
        finally:
            browser.close()
    assert errors == []


def test_text_chunks_are_the_events_sse_writes():
    from tinystories.serve.api import _sse, _TextChunks

    meta = {"id": "cmpl-1", "created": 7, "model": 'a "b"\u00e9'}
    for kind, obj in (("completion", "text_completion"), ("chat", "chat.completion.chunk")):
        chunks = _TextChunks(meta, obj, kind)
        for text, finish in (("", None), ('Lily said "hi"\n\u00e9\u4e16 \U0001f600\\', None), ("x", "stop"),
                             ("", "length")):
            if kind == "completion":
                choice = {"index": 3, "text": text, "logprobs": None, "finish_reason": finish}
            else:
                delta = {"content": text} if text or finish is None else {}
                choice = {"index": 3, "delta": delta, "logprobs": None, "finish_reason": finish}
            assert chunks(3, text, finish) == _sse({**meta, "object": obj, "choices": [choice]})


# --- the worker's slices ----------------------------------------------------------------------


@pytest.mark.parametrize("slice_s, max_events_per_s, expected", [
    (10.0, 1e9, [1, 29]),  # a long slice: the first token at once, the rest with the last
    (0.0, 1.0, [1, 29]),  # a short slice grown by the event budget (2 live jobs at 1 event/s: 2 s)
    (0.0, 1e9, [1] * 30),  # neither: every step's token goes out after its step
])
def test_worker_sends_the_first_token_at_once_and_slices_grow_with_live_jobs(
        run_dir, slice_s, max_events_per_s, expected):
    from tinystories.rundir import load_run
    from tinystories.sample import SampleParams, Sampler
    from tinystories.serve.engine import Job, Worker

    loaded = load_run(run_dir)
    prompt = loaded.tokenizer.encode(PROMPT)
    params = SampleParams(max_new_tokens=30, temperature=0.0, stop_at_eot=False)

    async def run() -> list[list[int]]:
        worker = Worker({"m": Sampler(loaded.model, 2)}, max_queue=4, slice_s=slice_s,
                        max_events_per_s=max_events_per_s)
        worker.start()
        sizes: list[list[int]] = [[], []]
        done = asyncio.Event()

        def deliver(i: int, events) -> None:
            assert not isinstance(events, BaseException)
            sizes[i].append(len(events))
            if sum(sizes[0]) == sum(sizes[1]) == 30:
                done.set()

        worker.submit("m", [Job(prompt, params, lambda ev, i=i: deliver(i, ev)) for i in range(2)])
        await asyncio.wait_for(done.wait(), timeout=20)
        worker.stop()
        return sizes

    assert asyncio.run(run()) == [expected, expected]


# --- the engine process -------------------------------------------------------------------------


def test_engine_process_dying_fails_its_streams_and_health(run_dir):
    """A crashed engine: a live stream ends with an error event, then /health and new requests say 503."""
    before = set(multiprocessing.active_children())
    with serving(run_dir, "process") as port:
        engines = [p for p in set(multiprocessing.active_children()) - before if p.name == "tinystories-engine"]
        assert len(engines) == 1
        sock = socket.create_connection(("127.0.0.1", port))
        body = json.dumps({"model": "s260k", "prompt": PROMPT, "max_tokens": 500, "n": 4, "stream": True,
                           "stop": "no such stop"}).encode()  # 4 x 500 tokens: far longer than the kill takes
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer "
                     + KEY.encode() + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        got = b""
        while b"data: " not in got:
            got += sock.recv(65536)
        engines[0].kill()
        while chunk := sock.recv(65536):
            got += chunk
        sock.close()
        assert b"engine process exited" in got and b"data: [DONE]\n\n" in got  # then the end of the chunked body
        status, health = request(port, "GET", "/health")
        assert status == 503 and "engine process exited" in health["error"]
        status, answer = request(port, "POST", "/v1/completions", {"model": "s260k", "prompt": PROMPT})
        assert status == 503 and "engine process exited" in answer["error"]["message"]


def test_engine_inline_and_process_give_the_same_tokens(port, inline_port):
    for body in ({"temperature": 0}, {"temperature": 1.0, "top_p": 0.9, "seed": 5, "n": 3, "logprobs": 2}):
        answers = [request(p, "POST", "/v1/completions", {"model": "s260k", "prompt": PROMPT, "max_tokens": 40,
                                                        **body})[1]["choices"] for p in (port, inline_port)]
        assert answers[0] == answers[1]
