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

from ..errors import TrainingError
from ..fileio import iter_jsonl, iter_lines


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

    def summary(self) -> str | None:
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


def _kind(value) -> str:
    return "null" if value is None else type(value).__name__


def read_labelled_texts(path: str, bad: BadRows) -> list[dict]:
    """seq-cls: CSV with a header, or JSONL: `text`, optional `text_pair`, `label` per row.
    Texts must be strings; a label a string or a number (never a list, an object or a bool)."""
    if path.endswith(".csv"):
        reader = csv.DictReader(iter_lines([path]))  # bytes that are not UTF-8 are reported, not fatal
        missing = {"text", "label"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"{path}:1: the CSV header {reader.fieldnames} lacks {sorted(missing)}")
        rows = ((reader.line_num, dict(row)) for row in reader)
    else:
        rows = iter_jsonl(path, bad)  # lazily, so problems are reported in line order
    examples = []
    for n, row in rows:
        text, pair, label = row.get("text"), row.get("text_pair"), row.get("label")
        if text is None or text == "":
            bad(n, "missing field 'text'")
        elif not isinstance(text, str):
            bad(n, f"'text' must be a string, got {_kind(text)} {str(text)[:40]!r}")
        elif not text.strip():
            bad(n, "'text' is blank")
        elif pair not in (None, "") and not isinstance(pair, str):
            bad(n, f"'text_pair' must be a string, got {_kind(pair)}")
        elif label is None or label == "":
            bad(n, "missing field 'label'")
        elif isinstance(label, (bool, list, dict)):
            bad(n, f"'label' must be a class name or a number, got {_kind(label)} {label!r}"[:200])
        else:
            examples.append({"text": text, "text_pair": pair or None, "label": label, "line": n})
    return examples


def bio_problem(tags: list) -> str | None:
    """Why a tag sequence is not BIO / IOB2 (O, B-TYPE, I-TYPE), or None when it is."""
    for i, tag in enumerate(tags):
        prefix, _, kind = tag.partition("-")
        if not (tag == "O" or (prefix in ("B", "I") and kind)):
            return f"tag {tag!r} (word {i + 1}) is not O, B-TYPE or I-TYPE: the tags must be BIO / IOB2"
    return None


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
            elif not all(isinstance(t, str) and t.strip() for t in tokens):
                bad(n, "every token must be a non-blank string")
            elif not all(isinstance(t, str) for t in tags):
                bad(n, "every tag must be a string")
            elif bio_problem(tags):
                bad(n, bio_problem(tags))
            else:
                examples.append({"tokens": tokens, "tags": tags, "line": n})
        return examples
    examples, tokens, tags, start, broken = [], [], [], 1, False
    for n, line in list(enumerate(iter_lines([path]), 1)) + [(None, "")]:
        parts = line.split()
        if not parts:  # the end of a sentence
            problem = bio_problem(tags) if tokens and not broken else None
            if problem:
                bad(start, problem + " (the sentence is skipped)")
            elif tokens and not broken:
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
    raw = "".join(iter_lines([path]))
    try:
        data = json.loads(raw)["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a SQuAD JSON file with a top-level 'data' list ({e})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: 'data' must be a list of articles, got {_kind(data)}")

    def line_of(key) -> int:  # JSON keeps no line numbers: find where this question's id is written
        i = raw.find(json.dumps(key)) if key is not None else -1
        return raw.count("\n", 0, i) + 1 if i >= 0 else 1

    def items(parent, key: str) -> list:  # the dicts under parent[key]; the rest is reported
        values = parent.get(key, []) if isinstance(parent, dict) else []
        if not isinstance(values, list):
            bad(1, f"'{key}' must be a list, got {_kind(values)}")
            return []
        for v in values:
            if not isinstance(v, dict):
                bad(line_of(v) if isinstance(v, str) else 1, f"an entry of '{key}' is a {_kind(v)}, not an object")
        return [v for v in values if isinstance(v, dict)]

    examples = []
    for article in items({"data": data}, "data"):
        for para in items(article, "paragraphs"):
            context = para.get("context")
            for qa in items(para, "qas"):
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
                answer_list = qa.get("answers", [])
                for a in answer_list if isinstance(answer_list, list) else [None]:
                    if not isinstance(a, dict):
                        problem = f"'answers' must be a list of objects, got {_kind(a if answer_list else answer_list)}"
                        break
                    text, start = a.get("text"), a.get("answer_start")
                    if isinstance(start, float) and start.is_integer():
                        start = int(start)  # 12.0, as some tools write it
                    if not isinstance(text, str) or not text:
                        problem = "an answer has no 'text'"
                    elif start is not None and (isinstance(start, bool) or not isinstance(start, int)):
                        problem = f"'answer_start' must be a whole number of characters, got {_kind(start)} {start!r}"
                    elif start is None:
                        start = context.find(text)
                    if problem is None and (start is None or start < 0 or context[start : start + len(text)] != text):
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
                examples.append(
                    {"id": qid, "question": qa["question"], "context": context, "answers": answers, "line": n}
                )
    return examples
