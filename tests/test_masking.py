"""DynamicMaskingCollator: the RoBERTa masking statistics, exactly where they must hold."""

import pytest
import torch

from roberta_scratch import DynamicMaskingCollator

V, MASK, PAD = 1000, 999, 1
SPECIALS = [0, 1, 2, 3, MASK]


def corpus(n_rows=400, T=300, seed=0):
    """Rows of <s> ... </s> with some padding, and a few specials inside."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, MASK, (n_rows, T), generator=g)
    ids[:, 0] = 0
    lengths = torch.randint(T // 2, T, (n_rows,), generator=g)
    for row, n in enumerate(lengths.tolist()):
        ids[row, n - 1] = 2
        ids[row, n:] = PAD
        ids[row, n // 2] = 3  # an <unk> in the middle
    return ids


def collator(**kw):
    return DynamicMaskingCollator(V, MASK, PAD, SPECIALS, **kw)


def test_masking_statistics_over_100k_tokens():
    ids = corpus(n_rows=1000)
    out = collator(generator=torch.Generator().manual_seed(0))(ids)
    special = torch.isin(ids, torch.tensor(SPECIALS))
    candidates = ~special
    assert candidates.sum() > 100_000
    selected = out["labels"] != -100
    rate = selected.sum().item() / candidates.sum().item()
    assert abs(rate - 0.15) < 0.005
    assert not (selected & special).any()  # no special or pad is ever selected
    assert torch.equal(out["labels"][selected], ids[selected])
    n = selected.sum().item()
    masked = (out["input_ids"] == MASK) & selected
    changed = (out["input_ids"] != ids) & selected & ~masked
    kept = (out["input_ids"] == ids) & selected
    assert abs(masked.sum().item() / n - 0.8) < 0.015
    assert abs(changed.sum().item() / n - 0.1) < 0.015
    # a random replacement may land on the original id: kept = 10% + 10% * 1/|vocab|
    assert abs(kept.sum().item() / n - 0.1) < 0.015
    assert not torch.isin(out["input_ids"][changed], torch.tensor(SPECIALS)).any()  # never draws specials
    assert torch.equal(out["input_ids"][~selected], ids[~selected])  # nothing else is touched
    assert torch.equal(out["attention_mask"], ids.ne(PAD).long())


def test_fresh_mask_every_call_and_same_mask_for_same_seed():
    ids = corpus(n_rows=8)
    c = collator(generator=torch.Generator().manual_seed(1))
    a, b = c(ids), c(ids)
    assert not torch.equal(a["labels"], b["labels"])
    again = collator(generator=torch.Generator().manual_seed(1))(ids)
    assert torch.equal(a["input_ids"], again["input_ids"]) and torch.equal(a["labels"], again["labels"])


def test_static_masks_repeat_per_example_whatever_the_padding():
    ids = corpus(n_rows=6)
    c = collator(static=True, static_seed=3)
    a = c(ids)
    b = c([row[row != PAD] for row in ids.flip(0)])  # other order, padded to another length
    for row in range(6):
        n = ids[row].ne(PAD).sum()
        assert torch.equal(a["labels"][row, :n], b["labels"][5 - row, :n])
        assert torch.equal(a["input_ids"][row, :n], b["input_ids"][5 - row, :n])
    assert not torch.equal(collator(static=True, static_seed=4)(ids)["labels"], a["labels"])
    rate = (a["labels"] != -100).sum() / (~torch.isin(ids, torch.tensor(SPECIALS))).sum()
    assert abs(rate.item() - 0.15) < 0.03


def test_whole_word_masking_selects_words_together():
    word_start = torch.zeros(V, dtype=torch.bool)
    word_start[4:500] = True  # ids 4..499 begin words, 500..998 continue them
    ids = corpus(n_rows=50)
    out = collator(word_start=word_start, generator=torch.Generator().manual_seed(0))(ids)
    selected = out["labels"] != -100
    special = torch.isin(ids, torch.tensor(SPECIALS))
    # a continuation token is selected exactly when the token before it is (same word)
    cont = (ids[:, 1:] >= 500) & ~special[:, 1:] & ~special[:, :-1]
    assert cont.sum() > 1000
    assert torch.equal(selected[:, 1:][cont], selected[:, :-1][cont])
    assert not (selected & special).any()
    assert abs(selected.sum() / (~special).sum() - 0.15) < 0.02


def test_accepts_lists_and_pads_to_multiple():
    c = collator(pad_to_multiple_of=8)
    out = c([torch.tensor([0, 5, 6, 2]), torch.tensor([0, 7, 8, 9, 10, 11, 12, 13, 14, 2])])
    assert out["input_ids"].shape == (2, 16)
    assert out["attention_mask"].sum(dim=1).tolist() == [4, 10]
    assert (out["labels"][:, 10:] == -100).all()


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="mlm_probability"):
        collator(mlm_probability=0.0)
    with pytest.raises(ValueError, match="summing to at most 1"):
        collator(mask_replace_prob=0.9, random_replace_prob=0.2)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 1000\)"):
        collator()([torch.tensor([0, 1000, 2])])
    with pytest.raises(ValueError, match="empty batch"):
        collator()([])


# ----------------------------------------------------------------------------- whole words, from a real tokenizer


def words_of(ids: torch.Tensor, word_start: torch.Tensor, special: torch.Tensor) -> list[list[int]]:
    """Positions of each word of one row, as whole-word masking must group them: a word starts
    at a word-start token or after a special token, and specials belong to no word."""
    words = []
    for t, i in enumerate(ids.tolist()):
        if special[i]:
            continue
        if word_start[i] or not words or special[ids[t - 1]]:
            words.append([])
        words[-1].append(t)
    return words


def check_whole_word_masking(tok, texts):
    """Word starts drawn from the tokenizer; whole words selected; about 15% of the tokens."""
    collate = DynamicMaskingCollator.from_tokenizer(tok, whole_word=True, generator=torch.Generator().manual_seed(0))
    word_start = collate.word_start
    rows = [torch.tensor(tok.encode(t)) for t in texts]
    selected_tokens = candidates = 0
    sum_sq_len = 0
    partly = 0
    padded = collate.pad(rows)
    for _ in range(3):
        out = collate(rows)
        for r, ids in enumerate(padded):
            selected = (out["labels"][r] != -100).tolist()
            words = words_of(ids, word_start, collate.special)
            for w in words:
                assert len({selected[t] for t in w}) == 1, f"word {[tok.id_to_token(int(ids[t])) for t in w]} split"
            chosen = sum(selected[w[0]] for w in words)
            assert chosen < len(words), "a whole row was selected at once"
            partly += 0 < chosen
            selected_tokens += sum(selected)
            candidates += sum(len(w) for w in words)
            sum_sq_len += sum(len(w) ** 2 for w in words)
    assert partly > 0.9 * 3 * len(rows)  # nearly every row has some words selected, not all or nothing
    # Each word is selected with probability 0.15, so the token rate's std is sqrt(p(1-p) * sum len^2) / N.
    std = (0.15 * 0.85 * sum_sq_len) ** 0.5 / candidates
    assert candidates > 30_000 and abs(selected_tokens / candidates - 0.15) < 5 * std, (
        selected_tokens / candidates,
        std,
    )


def test_whole_word_masking_with_a_sentencepiece_tokenizer(tmp_path, docstrings):
    sentencepiece = pytest.importorskip("sentencepiece")
    from roberta_scratch.tokenization.spm import SentencePieceTokenizer

    texts = [d for d in docstrings[:3000] if len(d.split()) >= 12][:1200]
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_prefix=str(tmp_path / "sp"),
        vocab_size=600,
        model_type="unigram",
        num_threads=1,
        minloglevel=2,
    )
    tok = SentencePieceTokenizer(tmp_path / "sp.model", model_max_length=64)
    starts = tok.word_start_mask()
    # the word starts are exactly the "▁" pieces (never a special token)
    assert starts == [
        i not in tok.special_tokens.values() and tok.id_to_token(i).startswith("\u2581") for i in range(tok.vocab_size)
    ]
    assert 100 < sum(starts) < tok.vocab_size
    check_whole_word_masking(tok, [" ".join(t.split()[:40]) for t in texts[:600]])


def test_whole_word_masking_with_a_byte_level_tokenizer(docstrings):
    from roberta_scratch.tokenization.byte_level import ByteLevelBPETokenizer

    texts = [d for d in docstrings[:3000] if len(d.split()) >= 12][:1200]
    tok = ByteLevelBPETokenizer.train(iter(texts), vocab_size=600, show_progress=False)
    starts = tok.word_start_mask()
    assert starts == [
        i not in tok.special_tokens.values() and tok.id_to_token(i).startswith("\u0120") for i in range(tok.vocab_size)
    ]
    check_whole_word_masking(tok, [" ".join(t.split()[:40]) for t in texts[:600]])
