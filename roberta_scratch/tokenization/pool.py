"""Encoding many texts on several processes: one strategy, described here once.

Workers are forked (on Linux) with the tokenizer, its warm word cache included, so nothing is
pickled on the way in; ids come back as one flat int32 array and the lengths, cheap to send.
Below `PARALLEL_MIN_CHARS` characters a batch stays in this process (unless num_workers is given):
starting workers and sending the ids back costs ~0.1 s, and one process encodes ~10 MB/s once warm.
Many short documents make it plainer. Measured on 2 cores (one busy with another job, so +-20%)
on 7,226 stdlib docstrings (1.4 MB, ~200 bytes each), roberta-base, a fresh tokenizer: one process
takes ~0.3 s, two thirds of it BPE on the 15,373 distinct words. Two processes each meet most of
the frequent words anew (20,445 words encoded in all, a third more), starting and stopping a pool
costs 20-40 ms, unpickling half the rows ~20 ms, and the worker waits 10-15 ms for this process
to take each chunk's results (the pool's reading thread needs the interpreter lock this process
is encoding with). Measured on two quiet cores (tok(texts), fresh tokenizers, medians of 5;
2026-12-07): on the first 0.19 / 0.38 / 0.74 / 1.41 MB of those docstrings two processes ran
at 0.67x / 0.83x / 1.00x / 1.16x the speed of one when cold, and at 0.23x-0.73x when warm (the
same text again: ~30 ms a call beyond the pool's 5-10 ms start, probably the worker's pages
copied on write as it touches the inherited cache); 1.5-2x slower where the second core is busy. So
`tok(docs)` below PARALLEL_MIN_CHARS stays in this process; an explicit num_workers is obeyed.

Who encodes depends on whether the input is whole or a stream, and the reason is the same in both:
this process must never keep the workers waiting.

- A list known whole (`encode_list`, behind `Tokenizer.encode_batch`): every chunk is handed out
  at once, so nothing needs this process until the end, and it encodes an equal share itself
  meanwhile: one process fewer to start and one share fewer to send back (10% faster on 2 cores).
  The workers take a few chunks each, so one long chunk does not leave the rest idle.
- A stream (`encode_stream`, behind `encode_batches`, `encode_file` and `prepare --workers`): at
  most `2 * num_workers` batches are in flight, so this process has to keep handing out batches
  and taking results back. It only reads, hands out and writes: measured on 2 cores (25 MB,
  roberta-base), encoding a share beside one worker was slower, because the pool's threads here
  wait up to the interpreter's 5 ms switch interval for the lock while this process encodes, and
  a worker whose results are unread stalls. The first batch is encoded here before the workers
  fork, so that they start with its words (a corpus's most frequent) in their caches. What the
  caller has to do anyway and needs no ids (`meanwhile`: prepare's tokenizer fingerprint and
  save, ~0.2-0.4 s here) runs once every worker has two batches queued, instead of before the
  fork or after the last batch, while one core would idle.

On a small corpus the whole command is mostly fixed costs, which no worker count shortens:
measured on this 2-core machine (20 MB of shuffled docstrings, roberta-base, one core often
busy with another job, so to be re-measured on a quiet one), importing torch took ~1.2 s of a
~6-7 s `prepare` until `prepare` stopped importing it; loading the tokenizer takes ~0.15-0.25 s
and the first batch ~0.15 s, both before the fork.

The output is the same whatever the number of workers. `tok` is any Tokenizer (tokenization/base.py,
which imports this module).
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import pickle
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import chain, islice, pairwise

# Below this many characters in a batch, worker processes cost more than they save (see above).
PARALLEL_MIN_CHARS = 4 << 20


def encode_list(tok, texts: list, add_special_tokens: bool, num_workers: int | None) -> list[list[int]]:
    """The ids of every text. num_workers None: a worker per available CPU for a large batch; for a
    smaller one, this process, sharing only the BPE of the batch's new words (`map_forked`)."""
    with collector_paused():
        return _encode_list(tok, texts, add_special_tokens, num_workers)


def _encode_list(tok, texts: list, add_special_tokens: bool, num_workers: int | None) -> list[list[int]]:
    if num_workers is None:
        if sum(len(t) for t in texts if isinstance(t, str)) < PARALLEL_MIN_CHARS:
            rows = tok._encode_texts(texts, available_cpus())
            if not add_special_tokens or not rows:
                return rows
            cls, sep = tok._require(tok.cls_token), tok._require(tok.sep_token)
            return [[cls, *row, sep] for row in rows]
        num_workers = available_cpus()
    if num_workers <= 1 or len(texts) < 2:
        return _encode_all(tok, texts, add_special_tokens)
    share = len(texts) // num_workers
    mine, rest = texts[:share], texts[share:]
    size = -(-len(rest) // (4 * (num_workers - 1)))
    chunks = [rest[i : i + size] for i in range(0, len(rest), size)]
    with _worker_pool(tok, num_workers - 1) as pool:
        pending = pool.starmap_async(_encode_in_worker, [(chunk, add_special_tokens) for chunk in chunks])
        head = _encode_all(tok, mine, add_special_tokens)
        parts = pending.get()
    return head + list(chain.from_iterable(parts))


@contextlib.contextmanager
def collector_paused():
    """The garbage collector paused while a batch is encoded, or a tokenizer loaded.

    Both build many small objects that form no cycle (a row of ids per text, a word cache,
    a vocabulary), and keep them. Each time enough survive, the collector walks every object
    alive, and more each time: on 7,226 short docstrings with a fresh tokenizer, tok(docs)
    took 410 ms with it running and 282 ms paused, encode_batch 296 and 269 ms (medians of 5
    on a busy 2-core machine, +-15%). Loading roberta-base with torch imported, its passes
    took half of a 0.2 s load. Paused, they wait until the batch is done, and run then only if
    they are due. Workers forked meanwhile inherit the pause, which suits them: they do the
    same work, and exit when it is done. (Not around encode_stream: it yields to its caller.)
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def encode_stream(
    tok, batches: Iterable[list[str]], add_special_tokens: bool, num_workers: int, meanwhile: Callable | None = None
) -> Iterator[list]:
    """The ids of each batch, in order; rows are lists from this process, int32 arrays from workers.
    meanwhile(), when given, runs once in this process while the workers encode their first batches
    (before anything is encoded, with one process): the caller's own fixed costs, overlapped."""
    if num_workers <= 1:
        if meanwhile is not None:
            meanwhile()
        for batch in batches:
            yield _encode_all(tok, batch, add_special_tokens)
        return
    batches = iter(batches)
    for batch in islice(batches, 1):  # before the fork: the workers start with its words cached
        yield _encode_all(tok, batch, add_special_tokens)
    with _worker_pool(tok, num_workers) as pool:
        pending: deque = deque()
        for batch in batches:
            pending.append(pool.apply_async(_encode_packed, (batch, add_special_tokens)))
            if len(pending) < 2 * num_workers:
                continue
            if meanwhile is not None:  # every worker has two batches to encode: time this process has
                meanwhile, run = None, meanwhile
                run()
            yield _unpack(*pending.popleft().get())
        if meanwhile is not None:  # a short stream
            meanwhile()
        while pending:
            yield _unpack(*pending.popleft().get())


def map_forked(fn: Callable, items: list, processes: int) -> list:
    """[fn(x) for x in items], the items shared among this process and processes - 1 forked
    children, which inherit `fn` and their share without pickling them and send back their results
    pickled (cheaper to load than packed ints: 0.6 against 2 ms for 7k short tuples). Where fork is
    missing, or a child fails, this process computes that share itself.

    A finished child is not waited for: its exit takes 7-10 ms (the kernel unmapping the memory it
    shared), which multiprocessing reaps at its next start or at exit instead of here.
    """
    if processes <= 1 or len(items) < processes or "fork" not in multiprocessing.get_all_start_methods():
        return [fn(x) for x in items]
    ctx = multiprocessing.get_context("fork")
    bounds = [len(items) * k // processes for k in range(processes + 1)]
    shares = [items[a:b] for a, b in pairwise(bounds)]
    children, answered = [], 0
    try:
        for share in shares[1:]:
            reader, writer = ctx.Pipe(duplex=False)
            child = ctx.Process(target=_map_in_child, args=(fn, share, writer), daemon=True)
            child.start()
            writer.close()
            children.append((child, reader))
        out = [fn(x) for x in shares[0]]
        for share, (_, reader) in zip(shares[1:], children, strict=True):
            try:
                out += pickle.loads(reader.recv_bytes())
            except EOFError:  # it failed: its share is redone here, so that the error is raised here
                out += [fn(x) for x in share]
            answered += 1
        return out
    finally:
        for n, (child, reader) in enumerate(children):
            reader.close()
            if n >= answered:  # this process was interrupted before the child answered: stop it
                child.terminate()
                child.join()


def _map_in_child(fn, share: list, writer) -> None:
    writer.send_bytes(pickle.dumps([fn(x) for x in share], protocol=pickle.HIGHEST_PROTOCOL))
    writer.close()


def _set_worker_tokenizer(tok) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tok


def _encode_all(tok, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
    if add_special_tokens:
        return [tok.encode(t) for t in texts]
    return [tok._encode_text(t) for t in texts]


def _encode_in_worker(texts: list[str], add_special_tokens: bool) -> list[list[int]]:
    return _encode_all(_worker_tokenizer, texts, add_special_tokens)


def _encode_packed(texts: list[str], add_special_tokens: bool):
    """In a worker: the ids of `texts` as one flat int32 array and the lengths (cheap to send back)."""
    import numpy as np

    rows = _encode_all(_worker_tokenizer, texts, add_special_tokens)
    return np.fromiter(chain.from_iterable(rows), dtype=np.int32), np.array([len(r) for r in rows], dtype=np.int64)


def _unpack(flat, lengths) -> list:
    """The rows _encode_packed flattened, as int32 arrays (views, no copy)."""
    import numpy as np

    return np.split(flat, np.cumsum(lengths)[:-1]) if len(lengths) else []


def _worker_pool(tok, num_workers: int):
    # fork (Linux) hands each worker the tokenizer, warm cache included, without pickling it.
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    return ctx.Pool(num_workers, initializer=_set_worker_tokenizer, initargs=(tok,))


def available_cpus() -> int:
    if multiprocessing.current_process().daemon:  # a pool's worker may not start processes of its own
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
