"""The evaluation metrics of the fine-tuning tasks, written out so each is easy to check by hand.

classification:  accuracy, macro_f1                    (predicted vs gold class ids)
regression:      pearson, spearman                     (predicted vs gold numbers)
NER:             entity_spans, entity_prf              (BIO / IOB2 tags, CoNLL's conlleval rules)
extractive QA:   normalize_answer, squad_exact, squad_f1, squad_scores (SQuAD v1.1 / v2.0)

>>> entity_spans(["B-PER", "I-PER", "O", "B-LOC"])
[('PER', 0, 2), ('LOC', 3, 4)]
>>> entity_prf([["B-PER", "I-PER", "O"]], [["B-PER", "O", "O"]])
{'precision': 0.0, 'recall': 0.0, 'f1': 0.0, 'entities': 1}
"""

from __future__ import annotations

import collections
import math
import re
import string

# ----------------------------------------------------------------------------- classification


def accuracy(pred: list, gold: list) -> float:
    return sum(p == g for p, g in zip(pred, gold, strict=True)) / max(len(gold), 1)


def macro_f1(pred: list, gold: list) -> float:
    """The mean over classes of each class's F1, the classes being those in gold or pred
    (scikit-learn's default). A class never predicted and never true is not counted."""
    classes = sorted(set(gold) | set(pred), key=str)
    scores = []
    for c in classes:
        tp = sum(p == c and g == c for p, g in zip(pred, gold, strict=True))
        fp = sum(p == c and g != c for p, g in zip(pred, gold, strict=True))
        fn = sum(p != c and g == c for p, g in zip(pred, gold, strict=True))
        scores.append(_f1(tp, fp, fn))
    return sum(scores) / max(len(scores), 1)


def _f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


# ----------------------------------------------------------------------------- regression


def pearson(x: list, y: list) -> float:
    """Pearson's r; 0.0 when either side is constant (r is undefined there)."""
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else 0.0


def ranks(x: list) -> list:
    """1-based ranks, ties sharing the mean of their ranks: ranks([10, 20, 20, 5]) == [2, 3.5, 3.5, 1]."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    r = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return r


def spearman(x: list, y: list) -> float:
    """Spearman's rho: Pearson's r of the ranks."""
    return pearson(ranks(x), ranks(y))


# ----------------------------------------------------------------------------- NER


def entity_spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, start, end) of each entity in a BIO / IOB2 tag sequence, end exclusive.

    CoNLL's conlleval rules: B-X starts an entity; I-X continues the open entity only when
    that entity is also an X, and otherwise starts a new one (so a stray I- after O, or
    after another type, still counts, as in IOB1); O ends it. Adjacent entities of the same
    type are told apart only by B-: B-PER B-PER is two people, B-PER I-PER one.
    """
    spans = []
    kind, start = None, 0
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, _, t = tag.partition("-")
        if prefix not in ("B", "I", "O") or (prefix != "O" and not t):
            raise ValueError(f"tag {tag!r} at position {i} is not O, B-TYPE or I-TYPE")
        continues = prefix == "I" and t == kind
        if kind is not None and not continues:
            spans.append((kind, start, i))
            kind = None
        if prefix in ("B", "I") and not continues:
            kind, start = t, i
    return spans


def entity_prf(gold: list[list[str]], pred: list[list[str]]) -> dict:
    """Micro-averaged entity-level precision, recall and F1 over sentences: an entity counts
    only when its type and both boundaries match exactly (a partial overlap is a miss and a
    false alarm at once)."""
    tp = n_gold = n_pred = 0
    for i, (g, p) in enumerate(zip(gold, pred, strict=True)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted")
        gs, ps = set(entity_spans(g)), set(entity_spans(p))
        tp += len(gs & ps)
        n_gold += len(gs)
        n_pred += len(ps)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "entities": n_gold}


# ----------------------------------------------------------------------------- SQuAD


def normalize_answer(s: str) -> str:
    """SQuAD's normalisation: lower case, drop punctuation, drop the articles a/an/the, squeeze spaces.

    >>> normalize_answer("The  Eiffel-Tower!")
    'eiffeltower'
    """
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def squad_exact(gold: str, pred: str) -> float:
    return float(normalize_answer(gold) == normalize_answer(pred))


def squad_f1(gold: str, pred: str) -> float:
    """Token-overlap F1 of the normalised strings; an empty side (an unanswerable question,
    or an answer that normalises to nothing) scores 1 only when both are empty."""
    g, p = normalize_answer(gold).split(), normalize_answer(pred).split()
    if not g or not p:
        return float(g == p)
    common = sum((collections.Counter(g) & collections.Counter(p)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def squad_scores(golds: list[list[str]], preds: list[str]) -> dict:
    """Exact match and F1 as fractions from 0 to 1, like every metric here (the official script
    prints percents: multiply by 100 to compare), each the best over a question's gold answers.
    An unanswerable question (SQuAD v2.0) has no gold answers; only "" is right for it."""
    em = f1 = 0.0
    for answers, pred in zip(golds, preds, strict=True):
        answers = [a for a in answers if normalize_answer(a)] or [""]
        em += max(squad_exact(a, pred) for a in answers)
        f1 += max(squad_f1(a, pred) for a in answers)
    n = max(len(preds), 1)
    return {"exact_match": em / n, "f1": f1 / n}
