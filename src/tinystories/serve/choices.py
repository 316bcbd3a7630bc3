"""From token events to text: a choice's text as its tokens arrive, and its log-probabilities in OpenAI's shapes.

Text is never cut inside a UTF-8 character, and stop strings are held back
until they are decided.
"""

from __future__ import annotations

from typing import Any

from tinystories.sample import FINISH_STOP, IncrementalDecoder, StepEvent

_FINISH = {FINISH_STOP: "stop"}  # FINISH_LENGTH and FINISH_CONTEXT both read "length"


class Choice:
    """One choice's text as its tokens arrive: UTF-8 whole, stop strings cut, log-probabilities lined up."""

    def __init__(self, index: int, tokenizer: Any, prompt: list[int], stop: list[str], logprobs: bool):
        self.index = index
        self.tok = tokenizer
        self.decoder = IncrementalDecoder(tokenizer.decode, prompt)
        self.stop = stop
        self.want_logprobs = logprobs
        self.text = ""  # everything decoded so far (cut at a stop string once one is found)
        self.sent = 0  # characters of `text` handed out
        self.entries: list[tuple[int, str, float, list[tuple[str, float]]]] = []  # (offset, token, logprob, top)
        self.entries_sent = 0
        self.tokens = 0
        self.finish: str | None = None
        self.cut = False  # a stop string ended the text

    def _alternative(self, context: list[int], token: int) -> str:
        return self.tok.decode([*context, token])[len(self.tok.decode(context)):]

    def feed(self, events: list[StepEvent]) -> None:
        """The events of one slice, in order (the last one may end the sequence)."""
        if self.stop or self.want_logprobs:
            for ev in events:
                if self.finish is not None:
                    break  # a stop string ended the text: the rest is not counted
                self._feed_one(ev)
            return
        # Nothing to look at token by token: decode the slice's tokens at once.
        reason = events[-1].finish_reason
        self.tokens += len(events)
        pushed = events[:-1] if reason == FINISH_STOP else events  # end-of-text has no text
        piece = self.decoder.push_many([ev.token for ev in pushed]) if pushed else ""
        if reason is not None:
            piece += self.decoder.flush()
            self.finish = _FINISH.get(reason, "length")
        self.text += piece

    def _feed_one(self, ev: StepEvent) -> None:
        self.tokens += 1
        if ev.finish_reason == FINISH_STOP:
            piece = self.decoder.flush()
        else:
            if ev.logprobs is not None and self.want_logprobs:
                ctx = self.decoder.ids[-IncrementalDecoder.CONTEXT:]
                top = [(self._alternative(ctx, t), lp) for t, lp in ev.logprobs.top]
                self.entries.append((len(self.text), self._alternative(ctx, ev.token), ev.logprobs.logprob, top))
            piece = self.decoder.push(ev.token)
            if ev.finish_reason is not None:
                piece += self.decoder.flush()
        if ev.finish_reason is not None:
            self.finish = _FINISH.get(ev.finish_reason, "length")
        start = max(0, len(self.text) - max((len(s) for s in self.stop), default=0))
        self.text += piece
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.finish = "stop"
            self.cut = True

    def take(self) -> tuple[str, list[tuple[int, str, float, list[tuple[str, float]]]]]:
        """The text (and its tokens' log-probabilities) that can be handed out now."""
        end = len(self.text)
        if self.finish is None and self.stop:  # hold back a tail that may be the start of a stop string
            for s in self.stop:
                for k in range(min(len(s) - 1, end), 0, -1):
                    if self.text.endswith(s[:k]):
                        end = min(end, len(self.text) - k)
                        break
        out = self.text[self.sent : end]
        self.sent = max(self.sent, end)
        # A token belongs to the text it starts in; at the end, tokens of no text (end-of-text's
        # neighbours, a held-back byte) count too, unless a stop string cut them off.
        final = self.finish is not None and end == len(self.text)
        entries = []
        while self.entries_sent < len(self.entries):
            offset = self.entries[self.entries_sent][0]
            if not (offset < end or (final and offset == end and not self.cut)):
                break
            entries.append(self.entries[self.entries_sent])
            self.entries_sent += 1
        return out, entries


def completion_logprobs(entries: list, offset: int) -> dict[str, Any]:
    return {
        "tokens": [e[1] for e in entries],
        "token_logprobs": [e[2] for e in entries],
        "top_logprobs": [dict(e[3]) for e in entries],
        "text_offset": [offset + e[0] for e in entries],
    }


def chat_logprobs(entries: list) -> dict[str, Any]:
    def one(text: str, lp: float) -> dict[str, Any]:
        return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}

    return {"content": [{**one(e[1], e[2]), "top_logprobs": [one(t, lp) for t, lp in e[3]]} for e in entries]}
