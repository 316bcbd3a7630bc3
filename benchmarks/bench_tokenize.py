"""Pretokenizing speed: ours versus llama2.c's SentencePiece pool and HF `tokenizers`.

The corpus is the 201 real validation stories repeated to about 20 MB. Every
method uses a vocabulary of (up to) 4096 trained on those 201 stories, and 2
workers (the CI machine has 2 cores):

- ours, full path: `tinystories tokenize` with that tokenizer (read the .txt,
  split, encode, write shards + index + meta).
- ours, raw encoder: `Tokenizer.encode_documents` on the list of stories (the
  `[eot] + tokens` stream a dataset stores, in memory).
- llama2.c's method: a SentencePiece BPE (llama2.c's trainer settings),
  stories in JSON shards, each shard encoded story by story with BOS in a
  2-process `multiprocessing.Pool`, written as uint16 .bin files.
- HF `tokenizers` `encode_batch` with the same tokenizer as ours.

Writes `benchmarks/results/tokenize.json` and prints a markdown table.
Usage: python benchmarks/bench_tokenize.py [--mb 20] [--repeats 2]
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("TINYSTORIES_TESTDATA", ROOT.parent / "shared" / "data"))
STORIES = DATA / "tinystories" / "TinyStories-valid.first201.txt"
WORKERS = 2
VOCAB = 4096


def _sp_encode_shard(args: tuple[str, str, str]) -> int:
    """One pool task, as llama2.c's pretokenize does it: load, encode story by story, write."""
    import sentencepiece as spm

    shard, model, out = args
    sp = spm.SentencePieceProcessor(model_file=model)
    bos = sp.bos_id()
    with open(shard, encoding="utf-8") as f:
        data = json.load(f)
    all_tokens: list[int] = []
    for example in data:
        text = example["story"].strip()
        all_tokens.extend([bos, *sp.encode(text)])
    arr = np.array(all_tokens, dtype=np.uint16)
    with open(out, "wb") as f:
        f.write(arr.tobytes())
    return len(arr)


def _train_sentencepiece(stories: list[str], prefix: str) -> str:
    import sentencepiece as spm

    # llama2.c's train_vocab settings.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(stories),
        model_prefix=prefix,
        model_type="bpe",
        vocab_size=VOCAB,
        self_test_sample_size=0,
        input_format="text",
        character_coverage=1.0,
        num_threads=WORKERS,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        byte_fallback=True,
        unk_surface=r" \342\201\207 ",
        normalization_rule_name="identity",
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return prefix + ".model"


def _best(fn, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=20.0, help="corpus size in MB")
    parser.add_argument("--repeats", type=int, default=2, help="runs per method; the fastest counts")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "tokenize.json"))
    args = parser.parse_args()

    from tokenizers import __version__ as hf_version

    from tinystories.data.stories import iter_stories
    from tinystories.data.tokenize import TokenizeConfig, tokenize
    from tinystories.data.tokenizer import train_bpe

    unique = list(iter_stories(STORIES))
    unique_bytes = sum(len(s.encode()) for s in unique)
    copies = max(1, round(args.mb * 1e6 / unique_bytes))
    stories = unique * copies
    n_bytes = unique_bytes * copies
    rows: list[dict] = []

    def row(method: str, seconds: float, tokens: int, vocab: int, note: str = "") -> None:
        rows.append(
            {
                "method": method,
                "seconds": round(seconds, 3),
                "mb_per_s": round(n_bytes / seconds / 1e6, 2),
                "tokens_per_s": round(tokens / seconds),
                "tokens": tokens,
                "vocab_size": vocab,
                "note": note,
            }
        )
        print(f"  {method}: {seconds:.2f} s", file=sys.stderr)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        txt = tmp / "stories.txt"
        with open(txt, "w", encoding="utf-8") as f:
            for s in stories:
                f.write(s + "\n<|endoftext|>\n")

        t = time.perf_counter()
        ours = train_bpe(unique, VOCAB)
        train_s = time.perf_counter() - t
        ours.save(tmp / "ours")
        print(f"trained ours ({ours.vocab_size} tokens) in {train_s:.2f} s", file=sys.stderr)

        # Ours: full `tokenize` path with the trained tokenizer.
        run = iter(range(1000))

        def full_path() -> dict:
            cfg = TokenizeConfig(
                data=(str(txt),),
                out=str(tmp / f"ds{next(run)}"),
                tokenizer=str(tmp / "ours"),
                workers=WORKERS,
            )
            return tokenize(cfg)

        seconds, summary = _best(full_path, args.repeats)
        tokens = summary["train"]["tokens"] + summary["val"]["tokens"]  # type: ignore[index]
        row(
            "ours: tokenize (read .txt, encode, write dataset)",
            seconds,
            tokens,
            ours.vocab_size,
            "tiktoken core",
        )

        seconds, (flat, _) = _best(lambda: ours.encode_documents(stories), args.repeats)
        row("ours: raw encoder (encode_documents, 1 process)", seconds, len(flat), ours.vocab_size)
        del flat

        # llama2.c's method.
        t = time.perf_counter()
        model = _train_sentencepiece(unique, str(tmp / "sp"))
        sp_train_s = time.perf_counter() - t
        import sentencepiece as spm

        sp_vocab = spm.SentencePieceProcessor(model_file=model).vocab_size()
        n_shards = 8
        shards = []
        for i in range(n_shards):
            path = tmp / f"data{i:02d}.json"
            path.write_text(json.dumps([{"story": s} for s in stories[i::n_shards]]), encoding="utf-8")
            shards.append(str(path))

        def sp_pool() -> int:
            tasks = [(s, model, s.replace(".json", ".bin")) for s in shards]
            with multiprocessing.get_context("fork").Pool(WORKERS) as pool:
                return sum(pool.map(_sp_encode_shard, tasks))

        seconds, tokens = _best(sp_pool, args.repeats)
        row(
            "llama2.c: SentencePiece BPE, 2-process Pool",
            seconds,
            tokens,
            sp_vocab,
            "reads JSON shards, BOS per story",
        )  # type: ignore[arg-type]

        # HF tokenizers, same vocabulary as ours.
        from tokenizers import Tokenizer as HFTokenizer

        hf = HFTokenizer.from_file(str(tmp / "ours" / "tokenizer.json"))
        seconds, encs = _best(lambda: hf.encode_batch(stories, add_special_tokens=False), args.repeats)
        row("HF tokenizers encode_batch", seconds, sum(len(e.ids) for e in encs), ours.vocab_size)  # type: ignore[union-attr]
        del encs

    result = {
        "benchmark": f"pretokenize ~{n_bytes / 1e6:.0f} MB of TinyStories text ({len(unique)} real stories x {copies})",
        "bytes": n_bytes,
        "stories": len(stories),
        "workers": WORKERS,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "tokenizers": hf_version,
        "tiktoken": __import__("tiktoken").__version__,
        "sentencepiece": __import__("sentencepiece").__version__,
        "train_seconds": {"ours_bpe": round(train_s, 3), "sentencepiece": round(sp_train_s, 3)},
        "repeats": args.repeats,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

    table = io.StringIO()
    table.write(f"{result['benchmark']}, {WORKERS} workers\n\n")
    table.write("| method | vocab | seconds | MB/s | tokens/s |\n|---|---:|---:|---:|---:|\n")
    for r in rows:
        table.write(
            f"| {r['method']} | {r['vocab_size']} | {r['seconds']:.2f} | {r['mb_per_s']:.2f} | {r['tokens_per_s']:,} |\n"
        )
    print(table.getvalue())


if __name__ == "__main__":
    main()
