"""prepare --sentences and BERT's pair formats (SEGMENT-PAIR, SENTENCE-PAIR): the sentence ends,
the 50/50 label split, negatives from other documents, token types, truncation, determinism."""

import json
import math
import warnings
from itertools import pairwise

import numpy as np
import pytest
import torch

from roberta_scratch.data.packed import TokenStream, prepare, tokenizer_dir
from roberta_scratch.data.pairs import PairDataset, _truncate
from roberta_scratch.data.sentences import split_sentences
from roberta_scratch.tokenization.byte_level import load_tokenizer


@pytest.fixture
def sentences_data(prepared_sentences):
    return prepared_sentences


def test_prepare_records_sentence_ends_and_keeps_the_same_tokens(prepared, sentences_data):
    meta = json.loads(open(f"{sentences_data}/meta.json").read())
    plain_meta = json.loads((prepared / "data" / "meta.json").read_text())
    assert meta["sentences"] is True and "sentences" not in plain_meta
    assert {"train.sents.bin", "val.sents.bin"} <= set(meta["files"])
    assert all(len(meta["files"][f]["sha256"]) == 64 for f in ("train.sents.bin", "val.sents.bin"))
    assert meta["fingerprint"] != plain_meta["fingerprint"]
    tok = load_tokenizer(tokenizer_dir(sentences_data))
    for split in ("train", "val"):
        plain, stream = TokenStream(str(prepared / "data"), split), TokenStream(sentences_data, split)
        assert plain.sent_ends is None
        assert stream[0 : len(stream)].tolist() == plain[0 : len(plain)].tolist()  # the same tokens
        ends = stream.sent_ends
        assert np.all(np.diff(ends) > 0) and set(stream.doc_ends.tolist()) <= set(ends.tolist())
        assert ends[-1] == len(stream) and len(ends) > 2 * len(stream.doc_ends)
        # each recorded sentence is one of split_sentences' pieces, encoded
        starts = np.concatenate([[0], stream.doc_ends[:-1]])
        for a, b in list(zip(starts, stream.doc_ends, strict=True))[:20]:
            inside = ends[(ends > a) & (ends <= b)]
            bounds = [a] + inside.tolist()
            pieces = [stream[int(x) : int(y)].tolist() for x, y in pairwise(bounds)]
            pieces[-1] = pieces[-1][:-1]  # the document's </s>
            text = tok.decode([t for p in pieces for t in p])
            assert pieces == [tok.encode(s, add_special_tokens=False) for s in split_sentences(text)]


def test_rerun_without_sentences_keeps_them_and_with_them_adds_them(prepared, sentences_data, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare(
            [str(prepared / "corpus")],
            str(prepared / "tok"),
            sentences_data,
            seq_len=32,
            val_fraction=0.1,
            show_progress=False,
            num_workers=1,
        )
    assert "already prepared" in capsys.readouterr().out
    assert TokenStream(sentences_data, "train").sent_ends is not None


@pytest.mark.parametrize("mode", ["segment-pair", "sentence-pair"])
def test_pairs_have_the_template_types_and_fit(sentences_data, mode):
    ds = PairDataset(sentences_data, "train", 32, mode, seed=0)
    assert len(ds) > 50
    for i in range(len(ds)):
        ex = ds[i]
        ids, types = ex["input_ids"], ex["token_type_ids"]
        assert ids.dtype == types.dtype == torch.long and len(ids) == len(types) <= 32
        seps = (ids == 2).nonzero().squeeze(1).tolist()
        assert ids[0] == 0 and len(seps) == 3 and seps[1] == seps[0] + 1 and seps[2] == len(ids) - 1
        a_len, b_len = seps[0] - 1, len(ids) - seps[1] - 2
        assert a_len >= 1 and b_len >= 1  # truncation never empties a part
        # 0 for <s> A </s> (its </s> included), 1 for </s> B </s>
        assert types.tolist() == [0] * (seps[0] + 1) + [1] * (len(ids) - seps[0] - 1)
        assert ex["next_sentence_label"] in (0, 1)
    lengths = [len(ds[i]["input_ids"]) for i in range(len(ds))]
    assert ds.mean_length == pytest.approx(np.mean(lengths))


def test_pair_template_is_the_tokenizers(sentences_data):
    tok = load_tokenizer(tokenizer_dir(sentences_data))
    ds = PairDataset(sentences_data, "train", 64, "sentence-pair", seed=0)
    checked = 0
    for i in range(40):
        ex = ds[i]
        ids, types = ex["input_ids"].tolist(), ex["token_type_ids"].tolist()
        a, b = ids[1 : types.index(1) - 1], ids[types.index(1) + 1 : -1]
        assert tok.encode(tok.decode(a), tok.decode(b)) == ids
        checked += 1
    assert checked == 40


@pytest.mark.parametrize("mode", ["segment-pair", "sentence-pair"])
def test_labels_are_a_fair_coin_and_negatives_come_from_other_documents(sentences_data, mode):
    stream = TokenStream(sentences_data, "train")
    doc_of = lambda pos: int(np.searchsorted(stream.doc_ends, pos, side="right"))  # noqa: E731
    n = positives = 0
    for seed in range(8):
        ds = PairDataset(sentences_data, "train", 32, mode, seed=seed)
        a0, a1, b0, b1 = ds.spans.T
        for i in range(len(ds)):
            same = doc_of(a0[i]) == doc_of(b0[i])
            if ds.labels[i] == 0:
                # IsNext: B starts where A ends, or where A ended before truncation cut A's end
                assert same and b0[i] >= a1[i] and doc_of(b1[i] - 1) == doc_of(a0[i])
                between = stream[int(a1[i]) : int(b0[i])]
                assert not (between == 2).any()
            else:
                assert not same and doc_of(b1[i] - 1) == doc_of(b0[i])  # never the same document
        n += len(ds)
        positives += int((ds.labels == 0).sum())
    assert n > 800
    assert abs(positives - n / 2) < 5 * math.sqrt(n / 4), (positives, n)  # a binomial within 5 sigma


def test_instances_are_deterministic_per_seed(sentences_data):
    a = PairDataset(sentences_data, "train", 32, "segment-pair", seed=3)
    b = PairDataset(sentences_data, "train", 32, "segment-pair", seed=3)
    c = PairDataset(sentences_data, "train", 32, "segment-pair", seed=4)
    assert np.array_equal(a.spans, b.spans) and np.array_equal(a.labels, b.labels)
    assert not (len(a) == len(c) and np.array_equal(a.spans, c.spans))
    assert all(torch.equal(a[i]["input_ids"], b[i]["input_ids"]) for i in range(len(a)))


def test_segments_are_whole_sentences_until_truncated(sentences_data):
    """Untruncated parts start and end on sentence boundaries; a segment fills most of the block."""
    stream = TokenStream(sentences_data, "train")
    bounds = set(stream.sent_ends.tolist()) | set((stream.doc_ends - 1).tolist()) | {0}
    bounds |= set(stream.doc_ends.tolist())
    ds = PairDataset(sentences_data, "train", 128, "segment-pair", seed=0)
    whole = [(a0, a1, b0, b1) for a0, a1, b0, b1 in ds.spans.tolist() if (a1 - a0) + (b1 - b0) < 124]
    assert len(whole) > len(ds) // 2
    for a0, a1, b0, b1 in whole:
        assert {a0, a1, b0, b1} <= bounds
    sentence = PairDataset(sentences_data, "train", 128, "sentence-pair", seed=0)
    assert sentence.mean_length < ds.mean_length


def test_truncation_is_berts_longest_first_loop():
    rng = np.random.default_rng(0)
    for budget in (4, 5, 12, 13):
        for la in range(1, 30):
            for lb in range(1, 30):
                a, b = la, lb
                while a + b > budget:  # BERT's truncate_seq_pair, token by token
                    if a > b:
                        a -= 1
                    else:
                        b -= 1
                sp = _truncate(np.array([[100, 100 + la, 500, 500 + lb]]), budget, rng)[0]
                assert (sp[1] - sp[0], sp[3] - sp[2]) == (a, b)
                assert 100 <= sp[0] < sp[1] <= 100 + la and 500 <= sp[2] < sp[3] <= 500 + lb
    # tokens leave from both ends
    sp = _truncate(np.tile([[0, 100, 200, 300]], (200, 1)), 20, rng)
    assert (sp[:, 0] > 0).any() and (sp[:, 1] < 100).any()


def test_clear_errors(prepared, sentences_data, tmp_path):
    with pytest.raises(ValueError, match="prepared without sentence boundaries.*prepare --sentences"):
        PairDataset(str(prepared / "data"), "train", 32, "segment-pair")
    with pytest.raises(ValueError, match="pair mode must be one of"):
        PairDataset(sentences_data, "train", 32, "full")
    (tmp_path / "one.txt").write_text("One document only. It has two sentences.\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare(
            [str(tmp_path / "one.txt")],
            str(prepared / "tok"),
            str(tmp_path / "data"),
            seq_len=32,
            val_fraction=0.0,
            show_progress=False,
            num_workers=1,
            sentences=True,
        )
    with pytest.raises(ValueError, match="has 1 document.*needs at least 2"):
        PairDataset(str(tmp_path / "data"), "train", 32, "sentence-pair")
