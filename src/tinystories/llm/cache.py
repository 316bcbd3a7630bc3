"""On-disk answer cache (sqlite), so a re-run pays for nothing already answered.

The key is a hash of (namespace, item, attempt, request): a job asks item i's
first attempt once, and a retry after a rejected story is a new attempt with a
new key, so a rejected answer is never replayed as if it were new. sqlite in
WAL mode survives `kill -9` with every committed answer intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

from tinystories.llm.base import Completion, Request


def cache_key(namespace: dict[str, Any], item: int, attempt: int, request: Request) -> str:
    """Hex sha256 of everything that decides the answer (namespace: model, endpoint, seed...)."""
    blob = json.dumps([namespace, item, attempt, request.key()], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class AnswerCache:
    """A key -> Completion table in one sqlite file."""

    def __init__(self, path: str | os.PathLike):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a commit is durable against a process kill (not a power cut), without an fsync each.
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, value TEXT NOT NULL)")

    def get(self, key: str) -> Completion | None:
        row = self.db.execute("SELECT value FROM answers WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        d = json.loads(row[0])
        return Completion(**d, cached=True)

    def put(self, key: str, c: Completion) -> None:
        value = {
            "text": c.text,
            "finish_reason": c.finish_reason,
            "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens,
            "model": c.model,
        }
        self.db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?)", (key, json.dumps(value)))

    def token_totals(self) -> tuple[int, int]:
        """Prompt and completion tokens of every cached answer (what was paid for, in all runs)."""
        row = self.db.execute(
            "SELECT COALESCE(SUM(json_extract(value, '$.prompt_tokens')), 0),"
            " COALESCE(SUM(json_extract(value, '$.completion_tokens')), 0) FROM answers"
        ).fetchone()
        return int(row[0]), int(row[1])

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        self.db.close()
