"""Word count as map / shuffle / reduce: mapper tasks send partial counts to reducer tasks.

    clustervm run -n 4 examples/wordcount.py examples/data/corpus/*.txt --mappers 3 --reducers 2

Main spawns R reducers and M mappers and gives each mapper a share of the
files (largest first, to the least loaded mapper). A mapper reads its files,
counts their words, and sends each reducer the counts of the words it owns
(word -> reducer by CRC-32, the same on every node), one message per reducer,
empty or not, so a reducer knows it is done after M messages. Each reducer
adds up what it gets and returns its totals and its top words; main merges
the reducers' tops (their words are disjoint, so the global top T is among
them).

Prints ``wordcount: words=W distinct=D top=word:count,word:count,...``
(ties broken alphabetically).
"""
import argparse
import glob
import os
import re
import time
import zlib
from collections import Counter

SHUFFLE = 1
WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)*")
CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "corpus", "*.txt")


def words(text: str) -> list[str]:
    """Lower-case words; inner apostrophes kept (don't, keeper's)."""
    return WORD.findall(text.lower())


def owner(word: str, reducers: int) -> int:
    return zlib.crc32(word.encode()) % reducers


def top(counts: dict, n: int) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda wc: (-wc[1], wc[0]))[:n]


def mapper(ctx, paths: list[str], reducers: list[int]) -> int:
    counts: Counter = Counter()
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                counts.update(words(line))
    shares: list[dict] = [{} for _ in reducers]
    for word, c in counts.items():
        shares[owner(word, len(reducers))][word] = c
    for tid, share in zip(reducers, shares):
        ctx.send(tid, SHUFFLE, share)
    return sum(counts.values())


def reducer(ctx, mappers: int, n_top: int) -> dict:
    counts: Counter = Counter()
    for _ in range(mappers):
        counts.update(ctx.recv(tag=SHUFFLE).data)
    return {"words": sum(counts.values()), "distinct": len(counts), "top": top(counts, n_top)}


def main(vm) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="*", help=f"text files (default: {CORPUS})")
    p.add_argument("--mappers", type=int, default=3)
    p.add_argument("--reducers", type=int, default=2)
    p.add_argument("--top", type=int, default=10)
    a = p.parse_args(vm.argv[1:])
    files = a.files or sorted(glob.glob(CORPUS))
    missing = [f for f in files if not os.path.isfile(f)]
    if missing or not files:
        p.error(f"no such file: {', '.join(missing)}" if missing else "no input files")
    if a.mappers < 1 or a.reducers < 1 or a.top < 1:
        p.error("--mappers, --reducers and --top must be at least 1")
    t0 = time.perf_counter()
    shares: list[list[str]] = [[] for _ in range(a.mappers)]
    load = [0] * a.mappers
    for f in sorted(files, key=lambda f: (-os.path.getsize(f), f)):
        i = load.index(min(load))
        shares[i].append(os.path.abspath(f))
        load[i] += os.path.getsize(f)
    reducers = vm.spawn(reducer, a.mappers, a.top, count=a.reducers)
    mappers = [vm.spawn(mapper, share, reducers)[0] for share in shares]
    mapped = sum(vm.join(t) for t in mappers)
    results = [vm.join(t) for t in reducers]
    total = sum(r["words"] for r in results)
    assert total == mapped, f"reducers counted {total} words, mappers sent {mapped}"
    best = top(dict(wc for r in results for wc in r["top"]), a.top)
    print(f"wordcount: words={total} distinct={sum(r['distinct'] for r in results)} "
          f"top={','.join(f'{w}:{c}' for w, c in best)}")
    print(f"wordcount: {len(files)} files, {a.mappers} mappers, {a.reducers} reducers, "
          f"{time.perf_counter() - t0:.2f} s", flush=True)
