"""File primitives every part of the project shares: reading text that may not be UTF-8,
reading JSON lines with FILE:LINE errors, and writing so that a crash never leaves half a file.

    for line in iter_lines(["corpus.txt"]): ...             # bad bytes become U+FFFD, reported once per file
    for n, obj in iter_jsonl("train.jsonl", on_bad): ...    # on_bad(n, problem) for each bad line
    with atomic_write("meta.json", "w") as f: ...           # the old file or the new one, never a mix
    with atomic_files("model/") as tmp: ...                 # files written in tmp move into model/ together
"""

from __future__ import annotations

import contextlib
import json
import lzma
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from itertools import islice

# ----------------------------------------------------------------------------- reading


# Compressed files are read through these, streaming, by their suffix.
COMPRESSED = {".gz": "gzip", ".bz2": "bz2", ".xz": "lzma"}


def open_binary(path: str | os.PathLike):
    """A file opened for reading bytes, decompressed on the fly when it ends in .gz, .bz2 or .xz."""
    name = os.fspath(path)
    for suffix, module in COMPRESSED.items():
        if name.lower().endswith(suffix):
            import importlib

            return importlib.import_module(module).open(name, "rb")
    return open(name, "rb")


def iter_lines(paths: Iterable[str | os.PathLike], bad_files: list | None = None) -> Iterator[str]:
    """The lines of text files (plain, or .gz, .bz2, .xz), each with its newline.

    A byte-order mark at the start of a file is dropped (Excel writes one before a CSV
    header). Bytes that are not UTF-8 are read as U+FFFD, and each file that had any
    is reported with a warning (and appended to `bad_files` when given): one
    bad byte must not stop a run over a corpus. A damaged compressed file is a
    ValueError naming it.
    """
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"file {str(path)!r} does not exist")
        bad_lines, first_bad = 0, 0
        # Binary, so that lines end at b"\n" only and "\r\n" comes back as written.
        with open_binary(path) as f:
            lines, n = enumerate(f, start=1), 0
            while True:
                try:
                    n, raw = next(lines)
                except StopIteration:
                    break
                except (OSError, EOFError, ValueError, lzma.LZMAError) as e:  # a damaged or cut-off archive
                    raise ValueError(f"{path}: damaged after line {n}: {type(e).__name__}: {e}") from None
                if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]  # a UTF-8 byte-order mark is not text (as Python's utf-8-sig reads it)
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError:
                    bad_lines += 1
                    first_bad = first_bad or n
                    yield raw.decode("utf-8", errors="replace")
        if bad_lines:
            if bad_files is not None:
                bad_files.append(str(path))
            warnings.warn(
                f"{path}: {bad_lines} line(s) are not valid UTF-8 (first: line {first_bad}); "
                "their invalid bytes were read as U+FFFD",
                stacklevel=2,
            )


def iter_jsonl(
    path: str | os.PathLike, on_bad: Callable[[int, str], None], bad_files: list | None = None
) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSON-lines file.

    A line that is not JSON, or not a JSON object, is handed to `on_bad(line, problem)`
    and skipped; `on_bad` may raise to stop instead.
    """
    for n, line in enumerate(iter_lines([path], bad_files), start=1):
        if not line or line.isspace():  # blank (no copy made, unlike strip())
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            on_bad(n, f"not valid JSON ({e.msg})")
            continue
        if not isinstance(obj, dict):
            on_bad(n, f"expected a JSON object, got {type(obj).__name__}")
            continue
        yield n, obj


def quote_line(path: str | os.PathLike, line: str) -> str:
    """A line of a file, quoted for an error message, unless the file is a link to somewhere
    outside its folder: an error must not show what a model folder's link points at."""
    path = os.fspath(path)
    real, folder = os.path.realpath(path), os.path.realpath(os.path.dirname(os.path.abspath(path)))
    if os.path.commonpath([real, folder]) != folder:
        return "(a line not shown: the file is a link to outside its folder)"
    return repr(line[:200])


def chunked(items: Iterable, n: int, max_size: int | None = None) -> Iterator[list]:
    """Lists of n items at a time (the last may be shorter), reading `items` lazily; with
    max_size, a list also ends once its items' len() add up to max_size."""
    it = iter(items)
    if max_size is None:
        while batch := list(islice(it, n)):
            yield batch
        return
    batch, size = [], 0
    for item in it:
        batch.append(item)
        size += len(item)
        if len(batch) >= n or size >= max_size:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


# ----------------------------------------------------------------------------- writing


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None):
    """Write `path` through a temp file beside it: fsync, rename, fsync the directory.

    A crash, a full disk or an exception in the block leaves the previous file (or
    none) and no temp file behind: never a half-written `path`.
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    try:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))


@contextlib.contextmanager
def atomic_files(directory: str | os.PathLike, prefix: str = ".tmp-"):
    """Yield a temp directory inside `directory`; the files written there are fsynced and
    moved into `directory` when the block ends without error, else thrown away."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=directory, prefix=prefix)
    try:
        yield tmp
        names = sorted(os.listdir(tmp))
        for name in names:
            with open(os.path.join(tmp, name), "rb+") as f:
                os.fsync(f.fileno())
        for name in names:
            os.replace(os.path.join(tmp, name), os.path.join(directory, name))
        fsync_dir(directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def new_directory(path: str | os.PathLike):
    """Yield a temp directory beside `path`, renamed to `path` when the block ends without error
    (thrown away otherwise): a command's output folder appears whole or not at all. `path` must
    not exist yet; the temp folder's name starts with `.<name>.tmp-` in the same parent."""
    path = os.path.abspath(os.fspath(path))
    if os.path.lexists(path):
        raise FileExistsError(f"{path} already exists: name a new folder (nothing was written)")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(path)}.tmp-")
    try:
        yield tmp
        for name in sorted(os.listdir(tmp)):
            full = os.path.join(tmp, name)
            if os.path.isfile(full):
                with open(full, "rb+") as f:
                    os.fsync(f.fileno())
        fsync_dir(tmp)
        if os.path.lexists(path):  # appeared while we worked: never replace what another wrote
            raise FileExistsError(f"{path} appeared while this command ran: left it alone")
        os.rename(tmp, path)
        fsync_dir(parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class DirectoryBusy(RuntimeError):
    """Another process holds the lock on a directory (a run, a prepare) that this one wants."""


@contextlib.contextmanager
def lock_dir(directory: str | os.PathLike, what: str = "this directory", shared: bool = False):
    """Hold a lock on `directory` (a `.lock` file in it, flock'ed) for the block.

    Exclusive (a writer: prepare, a training run on its folder): a second process asking
    for the same directory gets DirectoryBusy at once, naming the holder's pid and `what`,
    instead of the two interleaving their writes. Shared (a reader: a run on its prepared
    data): any number of readers, and a writer is refused while one reads. The lock dies
    with its process, so a killed run never leaves the directory locked. A reader of a
    folder it cannot write to takes no lock (nothing can prepare there either).
    """
    import fcntl

    directory = os.fspath(directory)
    path = os.path.join(directory, ".lock")
    if shared:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
        except PermissionError:
            yield
            return
    else:
        os.makedirs(directory, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
            pid, _, job = holder.partition(" ")
            by = (
                f"another process (pid {pid}) working on {job or what}"
                if pid
                else "a process reading it (a pretraining run on this data)"
            )
            raise DirectoryBusy(
                f"{directory} is in use by {by}; wait for it to finish, or use another directory"
            ) from None
        if not shared:  # readers leave the file alone: it names the writer
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {what}\n".encode(), 0)
        try:
            yield
        finally:
            if not shared:
                os.ftruncate(fd, 0)  # a finished writer is named nowhere
    finally:
        os.close(fd)  # closing releases the flock
