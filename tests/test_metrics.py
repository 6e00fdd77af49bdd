"""The fine-tuning metrics against values worked out by hand."""

import math

import pytest

from roberta_scratch.finetune.metrics import (
    accuracy,
    entity_prf,
    entity_spans,
    macro_f1,
    normalize_answer,
    pearson,
    ranks,
    spearman,
    squad_exact,
    squad_f1,
    squad_scores,
)


def test_accuracy_and_macro_f1_by_hand():
    gold = [0, 0, 1, 1, 2]
    pred = [0, 1, 1, 1, 0]
    assert accuracy(pred, gold) == 3 / 5
    # class 0: tp 1 fp 1 fn 1 -> 0.5; class 1: tp 2 fp 1 fn 0 -> 0.8; class 2: tp 0 -> 0
    assert macro_f1(pred, gold) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert macro_f1(["a", "b"], ["a", "b"]) == 1.0


def test_pearson_and_spearman_by_hand():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # x = 1,2,3,4 and y = 1,3,2,4: means 2.5; sxy = 2.25+(-0.25)+(-0.25)+2.25 = 4; sxx = syy = 5
    assert pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert pearson([1, 1, 1], [1, 2, 3]) == 0.0  # undefined for a constant side
    assert ranks([10, 20, 20, 5]) == [2, 3.5, 3.5, 1]
    assert spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)  # monotone, not linear
    assert spearman([1, 2, 3], [1, 1, 2]) == pytest.approx(math.sqrt(3) / 2)  # y ranks 1.5, 1.5, 3 (a tie)


@pytest.mark.parametrize(
    "tags, spans",
    [
        ([], []),
        (["O", "O"], []),
        (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 2), ("LOC", 3, 4)]),
        (["B-PER", "B-PER"], [("PER", 0, 1), ("PER", 1, 2)]),  # adjacent, same type: two entities
        (["B-PER", "I-LOC"], [("PER", 0, 1), ("LOC", 1, 2)]),  # a type change starts a new entity
        (["O", "I-ORG", "I-ORG"], [("ORG", 1, 3)]),  # a stray I- starts one (conlleval)
        (["B-LOC", "I-LOC", "I-LOC"], [("LOC", 0, 3)]),  # an entity running to the end
        (["B-ORG", "I-ORG", "B-ORG", "I-ORG"], [("ORG", 0, 2), ("ORG", 2, 4)]),
    ],
)
def test_entity_spans(tags, spans):
    assert entity_spans(tags) == spans


def test_entity_spans_rejects_unknown_tags():
    with pytest.raises(ValueError, match="X-PER"):
        entity_spans(["X-PER"])


def test_entity_prf_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "B-ORG", "O"]]
    pred = [
        ["B-PER", "I-PER", "O", "B-PER"],  # PER right; LOC given the wrong type
        ["B-ORG", "I-ORG", "O"],
    ]  # two adjacent ORGs merged into one: both missed, one false alarm
    # gold 4 entities, predicted 3, correct 1
    r = entity_prf(gold, pred)
    assert r["precision"] == pytest.approx(1 / 3) and r["recall"] == pytest.approx(1 / 4)
    assert r["f1"] == pytest.approx(2 * (1 / 3) * (1 / 4) / (1 / 3 + 1 / 4)) and r["entities"] == 4


def test_entity_prf_partial_overlap_and_nesting_count_as_wrong():
    gold = [["B-ORG", "I-ORG", "I-ORG", "O"]]  # "University of Paris" as one ORG
    pred = [["B-ORG", "I-ORG", "B-LOC", "O"]]  # a shorter ORG and a LOC nested inside the gold span
    assert entity_prf(gold, pred) == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "entities": 1}
    assert entity_prf([["O"]], [["O"]])["f1"] == 0.0  # nothing to find: 0, not a division by zero
    with pytest.raises(ValueError, match="2 gold tags but 1"):
        entity_prf([["O", "O"]], [["O"]])


@pytest.mark.parametrize(
    "text, normal",
    [
        ("The Eiffel Tower", "eiffel tower"),
        ("  an   apple, a pear!  ", "apple pear"),
        ("Theatre", "theatre"),  # an article only as a whole word
        ("the-end", "theend"),  # punctuation is removed, not replaced by a space
        ("A", ""),
        ("", ""),
        ("1,000.5 $", "10005"),
    ],
)
def test_squad_normalisation(text, normal):
    assert normalize_answer(text) == normal


def test_squad_em_f1_by_hand():
    assert squad_exact("The Beatles", "beatles!") == 1.0
    # gold "big red dog", pred "red dog barked": common 2, p 2/3, r 2/3
    assert squad_f1("the big red dog", "red dog barked") == pytest.approx(2 / 3)
    assert squad_f1("a", "the") == 1.0  # both normalise to nothing
    assert squad_f1("cat", "") == 0.0
    scores = squad_scores([["Paris", "the city of Paris"], [], ["blue"]], ["city of paris", "", "red"])
    # q1: EM 1 via the second answer; q2 unanswerable and "" predicted: 1; q3: 0
    assert scores["exact_match"] == pytest.approx(2 / 3) and scores["f1"] == pytest.approx(2 / 3)  # fractions
    assert squad_scores([[]], ["something"]) == {"exact_match": 0.0, "f1": 0.0}
