"""Rule-based sentence splitting, for BERT's pair formats (SEGMENT-PAIR, SENTENCE-PAIR).

    >>> split_sentences("Dr. Smith paid $3.50, i.e. too much. Was it? Yes!\\n\\nSee os.path.join.")
    ['Dr. Smith paid $3.50, i.e. too much.', ' Was it?', ' Yes!', '\\n\\nSee os.path.join.']

The pieces put back together are the text exactly: the whitespace between two sentences
starts the next piece. So a split always falls between a non-space character and a space,
which is always a pre-token boundary of GPT-2's pattern (no pre-token ends in a non-space
and goes on with a space), and encoding the pieces one by one with a byte-level BPE gives
exactly the ids of encoding the whole text. prepare --sentences relies on that: the token
stream is the same with or without sentence boundaries.

The rules, in order:
  1. A blank line (a paragraph break) always ends a sentence.
  2. A line of code ends the sentence before it, and is a sentence of its own: a line that
     starts with a doctest prompt (>>> or ...) or is a doctest's expected output (the lines
     after a prompt, up to a blank line), or that is indented by a tab or by 4 spaces more
     than the text's least indented line. Nothing inside it is split. A list item ("1. ",
     "2) ", "- ", "* " at the start of a line) starts a sentence.
  3. Otherwise a sentence ends after . ! or ? (a run of them, and any closing quotes or
     brackets after it: `."` `.)` `?!`) followed by whitespace and a plausible sentence start:
     an upper-case or uncased letter (not lower case), a digit, or an opening quote or
     bracket before one of those.
  4. ... except after a single "." that ends a common abbreviation (e.g., i.e., etc., Mr.,
     Dr., vs., cf., Fig., No., ...; see ABBREVIATIONS), a single letter (an initial: "J. R.
     Smith"), a dotted acronym (U.S., U.K.), or a number that starts its line (a list item:
     "1. Install").
Decimals and versions (3.14, v1.2.3) and code (os.path.join, a.b(), setup.py) are never
split because no whitespace follows their dots.

Limits, as with every rule-based splitter: a sentence that ends with an abbreviation or an
acronym ("... in the U.S. Then") is not split there; one that starts in lower case ("...
it. numpy is") is not split either; a name after an abbreviation-like word ("No. 5") is
kept together on purpose. Hard-wrapped lines (one newline, as in docstrings) are not
boundaries by themselves.
"""

from __future__ import annotations

import regex

# Words (lower case, without their final ".") after which a "." does not end a sentence.
ABBREVIATIONS = frozenset(
    """
    e.g i.e etc cf vs viz al mr mrs ms dr prof sr jr st mt rev gen col lt sgt capt hon
    fig figs eq eqs no nos vol vols pp ch sec secs ed eds approx ca est resp dept univ
    inc ltd co corp jan feb mar apr jun jul aug sep sept oct nov dec
""".split()
)

# . ! ? (a run), then closing quotes/brackets, right before whitespace: a candidate end.
_TERMINAL = regex.compile(r"[.!?]+[\"'\u201d\u2019)\]}\u00bb]*(?=\s)")
# What the next sentence may start with (after the whitespace): not a lower-case letter.
_START = regex.compile(r"[\"'\u201c\u2018(\[{\u00ab]*[\p{Lu}\p{Lt}\p{Lo}\p{N}]")
_BLANK_LINE = regex.compile(r"\n[^\S\n]*\n")
_ACRONYM = regex.compile(r"(?:\p{L}\.)+\p{L}")  # U.S, e.g, i.e (the final "." is not part of it)
_LIST_ITEM = regex.compile(r"(?m)^[^\S\n]*(?:\d+[.)]|[-*\u2022])[^\S\n]")  # "1. ", "2) ", "- ", "* "
_OPENERS = "\"'\u201c\u2018([{\u00ab"


def split_sentences(text: str) -> list[str]:
    """The sentences of `text`, in order, as pieces that concatenate back to `text` exactly
    (the whitespace before a sentence belongs to it). Empty text gives []."""
    if not text:
        return []
    cuts = set()
    for m in _BLANK_LINE.finditer(text):  # rule 1
        cuts.add(_before_space(text, m.start()))
    code = _code_lines(text)
    for start, end in code:  # rule 2: a boundary before the line, and before the line after it
        cuts.add(_before_space(text, start))
        cuts.add(_before_space(text, _next_line(text, end)))
    for m in _LIST_ITEM.finditer(text):  # rule 2: a list item starts a sentence
        cuts.add(_before_space(text, m.start()))
    for m in _TERMINAL.finditer(text):  # rules 3 and 4
        if any(start <= m.start() < end for start, end in code):
            continue
        after = len(text) - len(text[m.end() :].lstrip())
        if after < len(text) and _START.match(text, after) and not _abbreviation(text, m):
            cuts.add(m.end())
    end = len(text.rstrip())  # trailing whitespace stays with the last sentence: no blank pieces
    cuts = sorted(c for c in cuts if 0 < c < end and not text[c - 1].isspace() and text[c].isspace())
    return [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)], strict=True)]


def _before_space(text: str, i: int) -> int:
    """The start of the whitespace run that holds position i (a boundary before it)."""
    while i > 0 and text[i - 1].isspace():
        i -= 1
    return i


def _next_line(text: str, end: int) -> int:
    """The start of the first non-blank line at or after `end` (len(text) if none)."""
    stripped = text[end:].lstrip()
    return len(text) - len(stripped)


def _code_lines(text: str) -> list[tuple[int, int]]:
    """(start, end) of every line that looks like code (rule 2), end excluding the newline."""
    lines, pos = [], 0
    for line in text.split("\n"):
        lines.append((pos, pos + len(line), line))
        pos += len(line) + 1
    indents = [len(line) - len(line.lstrip(" ")) for _, _, line in lines if line.strip() and not line.startswith("\t")]
    base = min(indents) if indents else 0
    code, in_doctest = [], False
    for start, end, line in lines:
        body = line.lstrip()
        if not body:
            in_doctest = False  # a doctest's expected output runs to the next blank line
            continue
        indent = len(line) - len(line.lstrip(" "))
        prompt = body.startswith((">>> ", "... ")) or body == ">>>"
        in_doctest = in_doctest or prompt
        if in_doctest or line.startswith("\t") or indent >= base + 4:
            code.append((start + len(line) - len(body), end))
    return code


def _abbreviation(text: str, m) -> bool:
    """Does the "." of this candidate end an abbreviation, an initial, an acronym, or a list number?"""
    if text[m.start() : m.end()].rstrip("\"'\u201d\u2019)]}\u00bb") != ".":
        return False  # ! ? and runs like "..." always end a sentence
    line_start = text.rfind("\n", 0, m.start()) + 1
    word_start = m.start()
    while word_start > line_start and not text[word_start - 1].isspace():
        word_start -= 1
    word = text[word_start : m.start()].lstrip(_OPENERS)
    if not word:
        return False
    if word.lower() in ABBREVIATIONS or _ACRONYM.fullmatch(word):
        return True
    if len(word) == 1 and word.isalpha():
        return True  # an initial
    return word.isdigit() and not text[line_start:word_start].strip()  # "1. Install", a list item
