"""Reading fine-tuning data: one reader per input format, every bad row reported as FILE:LINE.

    read_labelled_texts   seq-cls    CSV with a header, or JSONL: text, optional text_pair, label
    read_tagged_words     token-cls  CoNLL, or JSONL with tokens and tags
    read_squad            qa         SQuAD JSON, v1.1 or v2.0

A reader hands each bad row to a BadRows, which prints and counts it (--on-bad-row skip)
or stops the run with a DataError (--on-bad-row stop). What the rows mean (labels,
classes, tags) is the tasks' business (tasks.py).
"""
from __future__ import annotations

import csv
import json
import sys
from typing import Optional

from .fileio import iter_jsonl
from .training import TrainingError


class DataError(TrainingError):
    """A bad row under --on-bad-row stop, or an input file that cannot be read at all."""


class BadRows:
    """Collects the bad rows of one file: each is reported as FILE:LINE: problem, then skipped
    (counted) or, with on_bad_row="stop", raised as a DataError."""

    def __init__(self, path: str, on_bad_row: str):
        if on_bad_row not in ("skip", "stop"):
            raise ValueError(f"on_bad_row must be 'skip' or 'stop', got {on_bad_row!r}")
        self.path, self.stop, self.rows = path, on_bad_row == "stop", []

    def __call__(self, line: int, problem: str) -> None:
        message = f"{self.path}:{line}: {problem}"
        if self.stop:
            raise DataError(message + " (use --on-bad-row skip to skip bad rows)")
        if len(self.rows) < 20:
            print(f"skipping {message}", file=sys.stderr)
        self.rows.append(message)

    def summary(self) -> Optional[str]:
        return f"skipped {len(self.rows)} bad row(s) of {self.path}" if self.rows else None


def is_number(v, parse_strings: bool) -> bool:
    """A JSON number; with parse_strings (CSV, where every value is a string), one written as a number."""
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float)):
        return True
    if not parse_strings:
        return False
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def read_labelled_texts(path: str, bad: BadRows) -> list[dict]:
    """seq-cls: CSV with a header, or JSONL: `text`, optional `text_pair`, `label` per row."""
    if path.endswith(".csv"):
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            missing = {"text", "label"} - set(reader.fieldnames or [])
            if missing:
                raise DataError(f"{path}:1: the CSV header {reader.fieldnames} lacks {sorted(missing)}")
            rows = [(reader.line_num, dict(row)) for row in reader]
    else:
        rows = iter_jsonl(path, bad)  # lazily, so problems are reported in line order
    examples = []
    for n, row in rows:
        text, label = row.get("text"), row.get("label")
        if not isinstance(text, str) or not text.strip():
            bad(n, "missing field 'text'")
        elif label is None or label == "":
            bad(n, "missing field 'label'")
        else:
            examples.append({"text": text, "text_pair": row.get("text_pair") or None, "label": label,
                             "line": n})
    return examples


def read_tagged_words(path: str, bad: BadRows) -> list[dict]:
    """token-cls: CoNLL (a token and its tag per line, the tag last; a blank line between
    sentences; -DOCSTART- lines skipped) or JSONL with `tokens` and `tags`."""
    if path.endswith(".jsonl") or path.endswith(".json"):
        examples = []
        for n, row in iter_jsonl(path, bad):
            tokens, tags = row.get("tokens"), row.get("tags")
            if not isinstance(tokens, list) or not tokens:
                bad(n, "missing field 'tokens'")
            elif not isinstance(tags, list):
                bad(n, "missing field 'tags'")
            elif len(tokens) != len(tags):
                bad(n, f"{len(tokens)} tokens but {len(tags)} tags")
            else:
                examples.append({"tokens": [str(t) for t in tokens], "tags": [str(t) for t in tags], "line": n})
        return examples
    examples, tokens, tags, start, broken = [], [], [], 1, False
    with open(path, encoding="utf-8") as f:
        lines = list(enumerate(f, 1)) + [(None, "")]
    for n, line in lines:
        parts = line.split()
        if not parts:  # the end of a sentence
            if tokens and not broken:
                examples.append({"tokens": tokens, "tags": tags, "line": start})
            tokens, tags, broken = [], [], False
            continue
        if parts[0] == "-DOCSTART-":
            continue
        if not tokens and not broken:
            start = n
        if len(parts) < 2:
            bad(n, f"expected a token and its tag, got {line.strip()!r} (the sentence is skipped)")
            broken = True
            continue
        tokens.append(parts[0])
        tags.append(parts[-1])
    return examples


def read_squad(path: str, bad: BadRows) -> list[dict]:
    """qa: SQuAD JSON, v1.1 or v2.0 (`is_impossible` questions with no answers). JSON keeps no
    line numbers, so a bad question is reported at the line where its id is written."""
    with open(path, encoding="utf-8") as f:
        raw = f.read()
    try:
        data = json.loads(raw)["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a SQuAD JSON file with a top-level 'data' list ({e})") from None

    def line_of(key) -> int:  # JSON keeps no line numbers: find where this question's id is written
        i = raw.find(json.dumps(key)) if key is not None else -1
        return raw.count("\n", 0, i) + 1 if i >= 0 else 1

    examples = []
    for article in data:
        for para in article.get("paragraphs", []):
            context = para.get("context")
            for qa in para.get("qas", []):
                qid = qa.get("id")
                n = line_of(qid if qid is not None else qa.get("question"))
                if not isinstance(context, str) or not context.strip():
                    bad(n, f"question {qid!r}: its paragraph has no 'context'")
                    continue
                if not isinstance(qa.get("question"), str) or not qa["question"].strip():
                    bad(n, f"question {qid!r}: missing field 'question'")
                    continue
                impossible = bool(qa.get("is_impossible", False))
                answers, problem = [], None
                for a in qa.get("answers", []):
                    text, start = a.get("text"), a.get("answer_start")
                    if not isinstance(text, str) or not text:
                        problem = "an answer has no 'text'"
                    elif start is None:
                        start = context.find(text)
                    if problem is None and (start is None or start < 0
                                            or context[start:start + len(text)] != text):
                        where = f"at character {start}" if start is not None and start >= 0 else "anywhere"
                        problem = f"answer {text!r} is not found {where} in its context"
                    if problem:
                        break
                    answers.append({"text": text, "start": start})
                if problem is None and not answers and not impossible:
                    problem = "no answers and not marked is_impossible"
                if problem:
                    bad(n, f"question {qid!r}: {problem}")
                    continue
                examples.append({"id": qid, "question": qa["question"], "context": context,
                                 "answers": answers, "line": n})
    return examples
