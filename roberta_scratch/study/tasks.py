"""The study's downstream task: which standard-library package a docstring comes from.

Real English text, on every machine with Python, nothing downloaded: the docstrings of
this Python's standard library, parsed with `ast` (never imported), labelled by their
top-level package (`asyncio`, `email`, `logging`, `xml`, ...). It is a small topic
classification task, fine-tuned with the project's seq-cls machinery from each arm's
pretrained model, and scored by accuracy and macro-F1.

    >>> task, held_out = build_task(out_dir="study/downstream")   # train.jsonl, test.jsonl, split.json
    >>> task["classes"]
    ['asyncio', 'distutils', 'email', ...]              # the packages this Python has (see pick_classes)

How it is built, deterministically:
  - the docstrings are those the default pretraining corpus takes (corpus.default_corpus's
    rule: module, class and function docstrings of at least 40 characters), grouped by file;
  - the classes are the packages with at least `min_files` files and `min_docs` docstrings,
    the `max_classes` largest (ties by name), so the label set follows the Python version;
  - the split is BY MODULE FILE: within each package, files are taken in the order of the
    sha256 of their path until the test files hold `test_fraction` of its docstrings, and a
    file is wholly in train or wholly in test, so no document and no module is in both;
  - each class keeps at most `train_per_class` training and `test_per_class` test
    docstrings (every k-th, in file order), which keeps the classes balanced and the
    fine-tuning short.

A second task asks Table 2's question, whether a model relates two texts: given two docstrings
of one package, do they come from the same module file? ("same" or "different", half each.) It
is built from the same split, so its test pairs come from test files only (pairs-train.jsonl,
pairs-test.jsonl: `text`, `text_pair`, `label`).

The test docstrings are held out of the study's pretraining corpus too (study.py removes
them from the default corpus), so no arm has seen a test document, even without its label.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import sysconfig
from dataclasses import asdict, dataclass

from ..fileio import atomic_write

# corpus.default_corpus skips these folders; the task does too, so it draws on the same text
SKIPPED_DIRS = ("site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__", "turtledemo")
MIN_DOC_CHARS = 40  # default_corpus's rule


@dataclass(frozen=True)
class TaskSpec:
    """How the downstream task is drawn from the standard library (see the module docstring)."""

    max_classes: int = 10
    min_files: int = 3  # a package needs files for both splits
    min_docs: int = 80
    test_fraction: float = 0.3
    train_per_class: int = 120
    test_per_class: int = 40
    pair_train: int = 480  # the pair task (same module?): examples per split, half of each label
    pair_test: int = 160


def file_docstrings(path: str) -> list[str]:
    """The docstrings of one source file that the default corpus takes: the module's, then every
    class's and function's in ast.walk order, each at least 40 characters. [] when it does not parse."""
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return []
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    docs = [ast.get_docstring(n) for n in nodes]
    return [d for d in docs if d and len(d) >= MIN_DOC_CHARS]


def package_files(stdlib: str | None = None) -> dict[str, dict[str, list[str]]]:
    """{package: {file path relative to the stdlib: its docstrings}} for every top-level package
    (a folder) of the standard library, files with no docstring left out."""
    return _package_files(os.path.abspath(stdlib or sysconfig.get_paths()["stdlib"]))


@functools.lru_cache(maxsize=4)
def _package_files(stdlib: str) -> dict[str, dict[str, list[str]]]:  # parsed once per process (not mutated)
    packages: dict[str, dict[str, list[str]]] = {}
    for name in sorted(os.listdir(stdlib)):
        top = os.path.join(stdlib, name)
        if not os.path.isdir(top) or name in SKIPPED_DIRS:
            continue
        for root, dirs, files in os.walk(top):
            dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
            for f in sorted(files):
                if f.endswith(".py"):
                    docs = file_docstrings(os.path.join(root, f))
                    if docs:
                        rel = os.path.relpath(os.path.join(root, f), stdlib).replace(os.sep, "/")
                        packages.setdefault(name, {})[rel] = docs
    return packages


def pick_classes(packages: dict, spec: TaskSpec) -> list[str]:
    """The packages that qualify (enough files and docstrings), the largest max_classes of them, sorted."""
    sizes = {
        p: sum(map(len, files.values()))
        for p, files in packages.items()
        if len(files) >= spec.min_files and sum(map(len, files.values())) >= spec.min_docs
    }
    largest = sorted(sizes, key=lambda p: (-sizes[p], p))[: spec.max_classes]
    return sorted(largest)


def _path_order(path: str) -> str:
    return hashlib.sha256(path.encode()).hexdigest()


def split_files(files: dict[str, list[str]], test_fraction: float) -> tuple[list[str], list[str]]:
    """(train files, test files) of one package: files in sha256-of-path order go to test while
    the test docstrings are under test_fraction of the package's, skipping a file that would take
    test past twice that share; train always keeps at least one file."""
    total = sum(map(len, files.values()))
    test, held = [], 0
    for path in sorted(files, key=_path_order):
        n = len(files[path])
        if held >= test_fraction * total:
            break
        if held + n <= 2 * test_fraction * total and len(test) + 1 < len(files):
            test.append(path)
            held += n
    if not test:  # every file alone is too big: the smallest one is the test split
        test = [min(files, key=lambda p: (len(files[p]), p))]
    train = sorted(p for p in files if p not in test)
    return train, sorted(test)


def _every_kth(items: list, limit: int) -> list:
    """At most `limit` items, spread evenly over the list (deterministic)."""
    if len(items) <= limit:
        return list(items)
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


def build_task(out_dir: str, spec: TaskSpec = TaskSpec(), stdlib: str | None = None) -> tuple[dict, set]:
    """Write out_dir/train.jsonl and test.jsonl (`text`, `label`, `module`: the seq-cls format)
    and out_dir/split.json (which files went where, the counts), each atomically. Returns the
    split summary and every docstring of the test files (not only those kept in test.jsonl):
    what the pretraining corpus must not contain. The same Python gives the same bytes."""
    packages = package_files(stdlib)
    classes = pick_classes(packages, spec)
    if len(classes) < 2:
        raise ValueError(
            f"the standard library at {stdlib or sysconfig.get_paths()['stdlib']} has fewer than 2 "
            f"packages with {spec.min_files}+ files and {spec.min_docs}+ docstrings: no task to build"
        )
    summary = {"spec": asdict(spec), "classes": classes, "files": {}, "counts": {}}
    for label in classes:
        train_files, test_files = split_files(packages[label], spec.test_fraction)
        summary["files"][label] = {"train": train_files, "test": test_files}
    held_out = {d for label in classes for path in summary["files"][label]["test"] for d in packages[label][path]}
    rows = {"train": [], "test": []}
    for label in classes:
        files = packages[label]
        for split, limit in (("train", spec.train_per_class), ("test", spec.test_per_class)):
            # subtle: a few docstrings are repeated verbatim across files; one that is in a
            # test file is never a training example, so no document is in both splits
            docs = [
                (path, d)
                for path in summary["files"][label][split]
                for d in files[path]
                if split == "test" or d not in held_out
            ]
            kept = _every_kth(docs, limit)
            rows[split] += [{"text": d, "label": label, "module": path} for path, d in kept]
            summary["counts"].setdefault(label, {})[split] = len(kept)
    os.makedirs(out_dir, exist_ok=True)
    for split, items in rows.items():
        write_if_changed(
            os.path.join(out_dir, f"{split}.jsonl"), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items)
        )
    summary["examples"] = {s: len(r) for s, r in rows.items()}
    summary["pairs"] = _write_pairs(out_dir, packages, classes, summary["files"], held_out, spec)
    summary["test_texts_sha256"] = hashlib.sha256(
        "\n\0".join(sorted(r["text"] for r in rows["test"])).encode()
    ).hexdigest()
    write_if_changed(os.path.join(out_dir, "split.json"), json.dumps(summary, indent=1) + "\n")
    return summary, held_out


def _pairs_of(docs_by_file: dict[str, list[str]], limit: int) -> list[dict]:
    """Up to `limit` pairs of docstrings of one package, half from one file ("same"), half from two
    ("different"), spread evenly over the files in path order (deterministic)."""
    paths = sorted(docs_by_file, key=_path_order)
    same = [(a, b) for p in paths for a, b in zip(docs_by_file[p][::2], docs_by_file[p][1::2], strict=False)]
    paths = [p for p in paths if docs_by_file[p]]
    different = [  # file i with file i + shift, a different docstring of each for every shift
        (docs_by_file[p][shift % len(docs_by_file[p])], docs_by_file[q][(2 * shift) % len(docs_by_file[q])])
        for shift in range(1, len(paths))
        for i, p in enumerate(paths)
        for q in [paths[(i + shift) % len(paths)]]
    ]
    n = min(limit // 2, len(same), len(different))
    if n == 0:  # a package with too few files or docstrings gives no pair
        return []
    rows = [{"text": a, "text_pair": b, "label": "same"} for a, b in _every_kth(same, n)]
    rows += [{"text": a, "text_pair": b, "label": "different"} for a, b in _every_kth(different, n)]
    return rows


def _write_pairs(out_dir: str, packages: dict, classes: list, files: dict, held_out: set, spec: TaskSpec) -> dict:
    """pairs-train.jsonl and pairs-test.jsonl (see the module docstring); their counts."""
    counts = {}
    for split, limit in (("train", spec.pair_train), ("test", spec.pair_test)):
        rows = []
        for label in classes:
            docs = {
                path: [d for d in packages[label][path] if split == "test" or d not in held_out]
                for path in files[label][split]
            }
            rows += _pairs_of(docs, max(2, limit // len(classes)))
        write_if_changed(
            os.path.join(out_dir, f"pairs-{split}.jsonl"),
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
        )
        counts[split] = {
            "same": sum(r["label"] == "same" for r in rows),
            "different": sum(r["label"] == "different" for r in rows),
        }
    return counts


def write_if_changed(path: str, text: str) -> None:
    """Write atomically, but leave an identical file alone (its mtime is what `prepare` and the
    fine-tuning runs see)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return
    with atomic_write(path, "w") as f:
        f.write(text)
