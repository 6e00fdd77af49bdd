"""Encoding many texts on several processes: one strategy, described here once.

Workers are forked (on Linux) with the tokenizer, its warm word cache included, so nothing is
pickled on the way in; ids come back as one flat int32 array and the lengths, cheap to send.
Below `PARALLEL_MIN_CHARS` characters a batch starts no worker pool (unless num_workers is given):
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
below PARALLEL_MIN_CHARS no worker pool starts (an explicit num_workers is obeyed), and only the
part that is worth sharing is shared: the BPE of the batch's new words (`ForkedMap`, driven by
byte_level.py's `_encode_texts`). This process splits the texts; the new words it finds go to
forked children as it goes, each word once; it steals back what they have not reached when it is
done splitting; the results fill the cache, and every row is looked up here. Nothing is sent but
words and their ids, and a warm batch forks nothing. Children start only once the batch looks
likely to hold 3,500 new words: the fork, the sends and a child's slower start cost about 10 ms,
and below that it lost (measured on those docstrings, fresh tokenizers, medians of 9, 2 quiet
cores, 2026-12-08: the first 120 / 500 / 1,000 / 2,500 documents, 1,237 / 2,996 / 4,786 / 8,018
new words, forking at once: 0.61x / 0.96x / 1.19x / 1.34x the speed of one process; with the
3,500 rule 1.00x up to 3,541 words, then 1.18x and 1.36x; all 7,226, 15,373 words: 1.38x).
Both processes ran BPE about 20% slower side by side than one alone, which caps the gain: not
the cores (a pure-Python loop ran as fast on both at once as on one), so the L3 cache the two
share, and the pages each copies on write as it touches the inherited dictionaries.

Who encodes depends on whether the input is whole or a stream, and the reason is the same in both:
this process must never keep the workers waiting.

- A list known whole (`encode_list`, behind `Tokenizer.encode_batch`, from PARALLEL_MIN_CHARS
  characters or with num_workers given): every chunk is handed out
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
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import chain, islice

# From this many characters a batch goes to a worker pool, which splits and looks up in parallel
# too, instead of sharing only the BPE of its new words. The sizes of 2026-12-08 (shuffled installed
# docstrings and comments, roberta-base, fresh tokenizers, 2 quiet-ish cores; cold / the same batch
# again), pool against sharing the BPE, one process beside: 8 MB 1.28 / 0.95 s against 1.14 / 0.71
# s (one process 1.50 / 0.66 s); 16 MB 2.03 / 1.72 against 2.21 / 1.59 s (2.64 / 1.51 s); 24 MB
# 2.87 / 2.40 against 3.32 / 2.51 s (3.98 / 2.32 s). The pool wins cold from ~16 MB but loses to
# one process on a warm batch until ~24 MB (its workers' start, copies on write and the ids sent back).
PARALLEL_MIN_CHARS = 24_000_000


def encode_list(tok, texts: list, add_special_tokens: bool, num_workers: int | None) -> list[list[int]]:
    """The ids of every text. num_workers None: a worker per available CPU for a large batch; for a
    smaller one, this process, sharing only the BPE of the batch's new words (`ForkedMap`)."""
    with collector_paused():
        return _encode_list(tok, texts, add_special_tokens, num_workers)


def _encode_list(tok, texts: list, add_special_tokens: bool, num_workers: int | None) -> list[list[int]]:
    if num_workers is None:
        if sum(len(t) for t in texts if isinstance(t, str)) < PARALLEL_MIN_CHARS:
            if not texts:
                return []
            around = ((tok._require(tok.cls_token),), (tok._require(tok.sep_token),)) if add_special_tokens else ()
            return tok._encode_texts(texts, available_cpus(), around)
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
    same work, and exit when it is done. encode_stream pauses it around each batch it encodes
    itself, not while its caller holds the rows, and its pool's workers run without it: they
    keep nothing but acyclic rows and the cache, and the collector's passes over the objects
    they inherited copy those pages on write. `prepare` of 21 MB of shuffled docstrings, whole
    command, interleaved rounds on a noisy 2-core machine (+-10%): 2 workers 2.76 -> 2.55 s
    (medians of 4), 1 worker 3.83 -> 3.70 s (medians of 3).
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
            with collector_paused():
                rows = _encode_all(tok, batch, add_special_tokens)
            yield rows
        return
    batches = iter(batches)
    for batch in islice(batches, 1):  # before the fork: the workers start with its words cached
        with collector_paused():
            rows = _encode_all(tok, batch, add_special_tokens)
        yield rows
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


class ForkedMap:
    """fn over items found a list at a time (`put`), shared with forked children as they are found.

    Made for BPE on a cold batch's new words (byte_level.py), which this process finds as it splits
    the texts: the children start encoding the first words while this process is still splitting
    the rest. Children inherit `fn` by fork; items go to them pickled, in chunks, each child its own
    queue, and their results come back in one message at the end. At `finish` this process takes
    the chunks still waiting from the far end of each queue (work stealing), so everyone finishes
    together however fast each went; a child claims a chunk and this process steals one under a
    lock, so none is done twice. Results are exactly [fn(x)] for each item, whoever computed them.
    A child that fails has its chunks redone here, so that its error is raised here.
    """

    CHUNK = 256  # items per chunk: a few ms of BPE, fine enough to balance at the end
    BACKLOG = 16  # chunks a child may have waiting; beyond, this process keeps them (no send blocks long)

    def __init__(self, fn: Callable, children: int):
        ctx = multiprocessing.get_context("fork")
        self.fn = fn
        self.lock = ctx.Lock()
        self.claimed = ctx.RawArray("q", children)  # chunks each child has taken from its queue
        self.limit = ctx.RawArray("q", [1 << 62] * children)  # a child may take its chunks below this
        self.queues: list[list] = [[] for _ in range(children)]  # the chunks sent to each child
        self.kept: list = []  # chunks this process does itself
        self.children = []
        self.answered: set[int] = set()
        self.failed: set[int] = set()
        try:
            for c in range(children):
                here, there = ctx.Pipe()
                child = ctx.Process(target=_serve_chunks, args=(fn, there, c, self.lock, self.claimed, self.limit))
                child.daemon = True
                child.start()
                there.close()
                self.children.append((child, here))
        except BaseException:
            self.close()
            raise

    def put(self, items: list) -> None:
        """Hand out `items` (in chunks) to the child with the shortest queue, or keep them."""
        for i in range(0, len(items), self.CHUNK):
            chunk = items[i : i + self.CHUNK]
            live = [c for c in range(len(self.queues)) if c not in self.failed]
            c = min(live, key=lambda c: len(self.queues[c]) - self.claimed[c], default=None)
            if c is None or len(self.queues[c]) - self.claimed[c] >= self.BACKLOG:
                self.kept.append(chunk)
                continue
            try:
                self.children[c][1].send(chunk)
            except OSError:  # the child has failed: finish redoes its chunks here
                self.failed.add(c)
                self.kept.append(chunk)
                continue
            self.queues[c].append(chunk)

    def finish(self) -> list[tuple[list, list]]:
        """(items, results) for every chunk put: the kept ones done here, then chunks stolen from the
        far end of each child's queue, then each child's results."""
        try:
            for _, conn in self.children:
                with contextlib.suppress(OSError):  # a failed child is dealt with below
                    conn.send(None)  # no more chunks: send back what you did
            fn = self.fn
            out = [(chunk, [fn(x) for x in chunk]) for chunk in self.kept]
            tops = [len(q) for q in self.queues]  # each queue's chunks below its top are not stolen
            while True:
                c = max(range(len(tops)), key=lambda c: tops[c] - self.claimed[c])
                with self.lock:
                    if tops[c] <= self.claimed[c]:
                        break  # the longest queue is all taken: so is every other
                    tops[c] -= 1
                    self.limit[c] = tops[c]
                chunk = self.queues[c][tops[c]]
                out.append((chunk, [fn(x) for x in chunk]))
            for c, (_, conn) in enumerate(self.children):
                try:
                    done = conn.recv()
                except (EOFError, OSError):  # it failed: its chunks are redone here, raising its error here
                    done = [[fn(x) for x in chunk] for chunk in self.queues[c][: tops[c]]]
                self.answered.add(c)
                out += zip(self.queues[c][: tops[c]], done, strict=True)
            return out
        finally:
            self.close()

    def close(self) -> None:
        """Stop every child that has not answered. One that answered exits by itself and is reaped
        by multiprocessing at its next start or at exit: waiting here for the kernel to unmap its
        memory took 7-10 ms a child."""
        for c, (child, conn) in enumerate(self.children):
            conn.close()
            if c not in self.answered:
                child.terminate()
                child.join()
        self.children = []


def _serve_chunks(fn, conn, c: int, lock, claimed, limit) -> None:
    """A ForkedMap child: take each chunk sent, unless this process stole it, and send back all the
    results once told there are no more chunks."""
    # Ctrl-C reaches the whole process group: the parent stops its children itself (close), and
    # a child's own KeyboardInterrupt would only print a second traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    done, j = [], 0
    while True:
        try:
            chunk = conn.recv()
        except EOFError:  # this process closed the pipe without finishing: nothing to send back
            return
        if chunk is None:
            break
        with lock:
            take = j < limit[c]
            if take:
                claimed[c] = j + 1
        if take:
            done.append([fn(x) for x in chunk])
        j += 1
    conn.send(done)
    conn.close()


def _set_worker_tokenizer(tok) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tok
    gc.disable()  # a pool's worker makes no cycle, and its collector would touch every inherited object


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
    ctx = multiprocessing.get_context("fork" if can_fork() else None)
    return ctx.Pool(num_workers, initializer=_set_worker_tokenizer, initargs=(tok,))


def can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


def available_cpus() -> int:
    if multiprocessing.current_process().daemon:  # a pool's worker may not start processes of its own
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
