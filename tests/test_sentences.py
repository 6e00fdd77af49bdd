"""split_sentences: the rules on abbreviations, decimals, code, quotes and newlines, and the
identity the pair formats rely on: encoding sentence by sentence gives the document's ids."""

from itertools import pairwise

import pytest

from roberta_scratch.data.sentences import split_sentences
from roberta_scratch.tokenization.byte_level import ByteLevelBPETokenizer


def check(text, expected):
    pieces = split_sentences(text)
    assert "".join(pieces) == text
    assert pieces == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", []),
        ("One sentence", ["One sentence"]),
        ("First one. Second one! Third? Fourth.", ["First one.", " Second one!", " Third?", " Fourth."]),
        ("  Leading space. And trailing.\n", ["  Leading space.", " And trailing.\n"]),
        (
            "Hard-wrapped prose goes\non across lines. Then stops.",
            ["Hard-wrapped prose goes\non across lines.", " Then stops."],
        ),
        ("Wait... What?! Fine.", ["Wait...", " What?!", " Fine."]),
        ("it ends. numpy starts lower case.", ["it ends. numpy starts lower case."]),  # a documented limit
        ("The answer is 42. 43 is next.", ["The answer is 42.", " 43 is next."]),
    ],
)
def test_plain_sentences(text, expected):
    check(text, expected)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Fruit, e.g. apples, i.e. Red ones, etc. Are fine.", ["Fruit, e.g. apples, i.e. Red ones, etc. Are fine."]),
        (
            "Mr. Smith met Dr. Jones and Prof. Lee. They talked.",
            ["Mr. Smith met Dr. Jones and Prof. Lee.", " They talked."],
        ),
        ("Cats vs. Dogs (cf. Fig. 3) agree. Yes.", ["Cats vs. Dogs (cf. Fig. 3) agree.", " Yes."]),
        (
            "J. R. R. Tolkien wrote it. The U.S. Army read it.",
            ["J. R. R. Tolkien wrote it.", " The U.S. Army read it."],
        ),
        ("Smith et al. Showed it. Done!", ["Smith et al. Showed it.", " Done!"]),
    ],
)
def test_no_split_after_abbreviations_and_initials(text, expected):
    check(text, expected)


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "Pi is 3.14 here. Version v1.2.3 works. Pay $3.50 now.",
            ["Pi is 3.14 here.", " Version v1.2.3 works.", " Pay $3.50 now."],
        ),
        ("Pi is about 3.14. The end.", ["Pi is about 3.14.", " The end."]),
        (
            "Use os.path.join and a.b() in setup.py. Then call x.y.z(). Done.",
            ["Use os.path.join and a.b() in setup.py.", " Then call x.y.z().", " Done."],
        ),
        ("See http://example.com/a.html for more. Thanks.", ["See http://example.com/a.html for more.", " Thanks."]),
    ],
)
def test_decimals_versions_and_dotted_code_are_not_split(text, expected):
    check(text, expected)


@pytest.mark.parametrize(
    "text, expected",
    [
        ('He said "Stop." Then he left.', ['He said "Stop."', " Then he left."]),
        (
            "(See above.) Next one. \u201cQuoted.\u201d Done.",
            ["(See above.)", " Next one.", " \u201cQuoted.\u201d", " Done."],
        ),
        ('It ended. "Why?" she asked.', ["It ended.", ' "Why?" she asked.']),
    ],
)
def test_closing_quotes_and_brackets_stay_with_their_sentence(text, expected):
    check(text, expected)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A paragraph\n\nanother one starts lower case", ["A paragraph", "\n\nanother one starts lower case"]),
        ("Para one.\n   \n\nPara two.", ["Para one.", "\n   \n\nPara two."]),
        (
            "Example:\n\n>>> x = f(1). Foo\n>>> print(x)\n2\n\nBack to prose. Yes.",
            ["Example:", "\n\n>>> x = f(1). Foo", "\n>>> print(x)", "\n2", "\n\nBack to prose.", " Yes."],
        ),
        (
            "Usage:\n    for x in y: do(x). Then\n    more()\nBack to prose. Yes.",
            ["Usage:", "\n    for x in y: do(x). Then", "\n    more()", "\nBack to prose.", " Yes."],
        ),
        (
            "Steps:\n1. Install it.\n2. Run it. Done.\n- one\n* two",
            ["Steps:", "\n1. Install it.", "\n2. Run it.", " Done.", "\n- one", "\n* two"],
        ),
    ],
)
def test_newlines_code_lines_and_lists(text, expected):
    check(text, expected)


def test_every_piece_is_a_whole_sentence_boundary(docstrings):
    """On real text: pieces rebuild it, none is blank, and every cut is non-space | space."""
    cuts = 0
    for doc in docstrings[:3000]:
        pieces = split_sentences(doc)
        assert "".join(pieces) == doc
        assert all(p.strip() for p in pieces) or len(pieces) == 1
        for a, b in pairwise(pieces):
            assert not a[-1].isspace() and b[0].isspace()
            cuts += 1
    assert cuts > 2000  # it does split


def assert_sentence_by_sentence_encoding_is_the_document(tok, docs):
    split = 0
    for doc in docs:
        pieces = split_sentences(doc)
        split += len(pieces) > 1
        by_sentence = [i for p in pieces for i in tok.encode(p, add_special_tokens=False)]
        assert by_sentence == tok.encode(doc, add_special_tokens=False), pieces
    assert split > len(docs) // 4


def test_encoding_sentence_by_sentence_gives_the_documents_ids(docstrings):
    texts = [d for d in docstrings[:1500] if len(d) > 40]
    tok = ByteLevelBPETokenizer.train(iter(texts), vocab_size=500, show_progress=False)
    extra = ["Mixed  spaces.   Then\ttabs.\n\n\n  Then <mask> tokens. And \u00e9t\u00e9 caf\u00e9. \U0001f600 Emoji!"]
    assert_sentence_by_sentence_encoding_is_the_document(tok, texts + extra)


def test_encoding_sentence_by_sentence_with_the_real_roberta_tokenizer(docstrings, reference_dir):
    tok = ByteLevelBPETokenizer.from_pretrained(reference_dir)
    assert_sentence_by_sentence_encoding_is_the_document(tok, docstrings[:2000])
