"""A fake OpenAI-compatible server for fault tests and the synth benchmark (127.0.0.1 only).

It answers `/v1/chat/completions` and `/v1/completions` with a story that uses
the three words named in the prompt, with `usage`, after `delay` seconds. A
test injects faults by queueing names in `faults` (one per request, then
"ok"): "429" (with Retry-After), "500", "hang" (never answers in time),
"malformed" (a body that is not JSON), "truncate" (a cut story with
finish_reason "length"), "meta" ("Sure! Here is a story"), "nowords" (a story
without the required words), "status:NNN" (an error status). Every request is logged with its time.

Run alone for the benchmark: `python tests/fake_llm_server.py --delay 1`
prints `PORT <n>` once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import sys
import threading
import time

_WORDS = re.compile(r'verb "([^"]+)", the noun "([^"]+)" and the adjective "([^"]+)"')


def story_for(prompt: str, n: int) -> str:
    """About 700 characters of simple story using the prompt's verb, noun and adjective."""
    m = _WORDS.search(prompt)
    verb, noun, adj = m.groups() if m else ("play", "ball", "happy")
    names = ("Lily", "Tom", "Sue", "Ben", "Mia", "Max", "Zoe", "Sam")
    name = names[n % len(names)]
    return (
        f"Once upon a time, there was a little child named {name}. {name} had a {adj} {noun} that "
        f"was very special. Every day, {name} liked to {verb} with the {noun} in the big green park.\n\n"
        f'One day, {name} saw a friend and said, "Do you want to {verb} with me?" The friend smiled '
        f"and said yes. They played all day long and the sun was warm on their faces. Story number {n} "
        f"had many fun parts, and the birds sang in the tall trees.\n\n"
        f"When it was time to go home, {name} was tired but happy. {name} hugged the {noun} and said "
        f'"Thank you for a good day." Then {name} went to sleep and had sweet dreams about the park.'
    )


class FakeServer:
    """The server; `start()` runs it in a daemon thread and returns its base URL."""

    def __init__(self, delay: float = 0.0, retry_after: str = "1", hang: float = 30.0):
        self.delay, self.retry_after, self.hang = delay, retry_after, hang
        self.faults: collections.deque[str] = collections.deque()
        self.log: list[tuple[float, str, str]] = []  # (time, path, fault)
        self.count = 0
        self.headers: dict[str, str] = {}  # of the last request, names in lower case
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None

    # --- HTTP ---

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.headers = headers
                status, extra, payload = await self._respond(method, path, body)
                out = (
                    f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(payload)}\r\nConnection: keep-alive\r\n{extra}\r\n"
                ).encode() + payload
                writer.write(out)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        except asyncio.CancelledError:
            writer.close()
            raise
        finally:
            writer.close()

    async def _respond(self, method: str, path: str, body: bytes) -> tuple[str, str, bytes]:
        if path.endswith("/models"):
            return (
                "200 OK",
                "",
                json.dumps({"object": "list", "data": [{"id": "fake", "object": "model"}]}).encode(),
            )
        n = self.count
        self.count += 1
        fault = self.faults.popleft() if self.faults else "ok"
        self.log.append((time.monotonic(), path, fault))
        if fault == "429":
            err = {"error": {"message": "rate limited", "type": "rate_limit"}}
            return "429 Too Many Requests", f"Retry-After: {self.retry_after}\r\n", json.dumps(err).encode()
        if fault.startswith("status:"):  # any other status, e.g. "status:401"
            code = int(fault.split(":")[1])
            return f"{code} Error", "", json.dumps({"error": {"message": f"status {code}"}}).encode()
        if fault == "500":
            return "500 Internal Server Error", "", b'{"error": {"message": "boom"}}'
        if fault == "hang":
            await asyncio.sleep(self.hang)
        if self.delay:
            await asyncio.sleep(self.delay)
        if fault == "malformed":
            return "200 OK", "", b'{"id": "x", "choices": [{"mess'
        req = json.loads(body or b"{}")
        chat = "messages" in req
        prompt = req["messages"][-1]["content"] if chat else req.get("prompt", "")
        story, finish = story_for(prompt, n), "stop"
        if prompt.startswith("Summarize"):
            story = f"A child plays in the park with a friend (story {n}) and goes home happy."
        if fault == "truncate":
            story, finish = story[:120], "length"
        elif fault == "meta":
            story = "Sure! Here is a story for you.\n\n" + story
        elif fault == "nowords":
            story = story_for("", n).replace("ball", "kite").replace("play", "run").replace("happy", "glad")
        usage = {
            "prompt_tokens": len(prompt.split()) * 4 // 3,
            "completion_tokens": len(story.split()) * 4 // 3,
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        choice = {"index": 0, "finish_reason": finish, "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": story}
        else:
            choice["text"] = story
        resp = {
            "id": f"cmpl-{n}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": req.get("model", "fake"),
            "choices": [choice],
            "usage": usage,
        }
        return "200 OK", "", json.dumps(resp).encode()

    # --- running ---

    async def serve(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    def start(self) -> str:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self.serve())
            ready.set()
            self._loop.run_forever()
            self._loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        if self._loop is None:
            return

        async def shutdown() -> None:
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--delay", type=float, default=1.0)
    args = ap.parse_args()
    server = FakeServer(delay=args.delay)

    async def run() -> None:
        await server.serve(args.port)
        print(f"PORT {server.port}", flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
