"""Looking inside a model: fill-mask, hidden states per layer and attention maps, from the
library and from the command line."""

import numpy as np
import pytest
import torch
from helpers import tiny_model_folder

from roberta_scratch import RobertaForMaskedLM, cli
from roberta_scratch.probe import fill_mask, parse_layers
from roberta_scratch.tokenization.byte_level import load_tokenizer

TEXTS = [
    "Alice went to Paris and saw the river.",
    "Bob visited London in the rain.",
    "The capital of France is Paris.",
] * 20


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random RobertaForMaskedLM (hidden 64, 2 layers, 4 heads) with its tokenizer."""
    return tiny_model_folder(
        tmp_path_factory.mktemp("probe") / "model",
        texts=TEXTS,
        vocab_size=300,
        max_positions=130,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
    )


def test_fill_mask_gives_the_models_own_top_k(model_dir):
    text = "Alice went to <mask> and saw the <mask>."
    [result] = fill_mask(model_dir, [text], top_k=3)
    assert result["text"] == text and len(result["masks"]) == 2
    tok = load_tokenizer(model_dir)
    model = RobertaForMaskedLM.from_pretrained(model_dir).eval()
    ids = tok.encode(text)
    with torch.no_grad():
        probs = model(torch.tensor([ids])).logits[0].softmax(-1)
    for candidates, pos in zip(result["masks"], [i for i, t in enumerate(ids) if t == tok.mask_token_id], strict=True):
        top = probs[pos].topk(3)
        assert [t for t, _ in candidates] == [tok.decode([i]) for i in top.indices.tolist()]
        np.testing.assert_allclose([p for _, p in candidates], top.values.tolist(), rtol=1e-6)


def test_fill_mask_command(model_dir, capsys):
    assert cli.main(["fill-mask", "--model", model_dir, "--top-k", "2", "The capital of France is <mask>."]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "The capital of France is <mask>." and len(lines) == 3 and lines[1].strip().endswith("'")
    assert cli.main(["fill-mask", "--model", model_dir, "no mask here"]) == 2
    assert "error: no <mask> in 'no mask here'" in capsys.readouterr().err


def test_features_and_attention_commands(model_dir, tmp_path, capsys):
    from safetensors.numpy import load_file

    text = "Alice went to Paris"
    n_tokens = len(load_tokenizer(model_dir).encode(text))
    assert cli.main(["features", "--model", model_dir, "--out", str(tmp_path / "h.npy"), text]) == 0
    assert np.load(tmp_path / "h.npy").shape == (3, n_tokens, 64)  # embeddings + 2 layers
    assert (
        cli.main(["features", "--model", model_dir, "--layers", "0,-1", "--out", str(tmp_path / "h.safetensors"), text])
        == 0
    )
    st = load_file(str(tmp_path / "h.safetensors"))
    assert sorted(st) == ["input_ids", "layer_0", "layer_2"] and st["layer_2"].shape == (n_tokens, 64)
    full = np.load(tmp_path / "h.npy")
    np.testing.assert_allclose(st["layer_2"], full[2], rtol=1e-5, atol=1e-6)
    assert cli.main(["attention", "--model", model_dir, "--out", str(tmp_path / "attn.png"), text]) == 0
    assert (tmp_path / "attn.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "drew 2 of 2 layers (numbered from 1, as in features) x 4 of 4 heads" in out
    assert "layer 2 head 3: entropy" in out and f"(uniform over {n_tokens} tokens: " in out
    assert (
        cli.main(
            [
                "attention",
                "--model",
                model_dir,
                "--out",
                str(tmp_path / "a2.png"),
                "--layers",
                "-1",
                "--heads",
                "0,2",
                "--scale",
                "per-head",
                text,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "drew 1 of 2 layers" in out and "x 2 of 4 heads" in out and "per-head colour scale" in out
    assert "layer 2 head 2: entropy" in out and "layer 1 head" not in out
    assert cli.main(["attention", "--model", model_dir, "--layers", "0", text]) == 1
    assert "layer 0 is the embeddings, which have no attention" in capsys.readouterr().err


def test_parse_layers():
    assert parse_layers("all", 3) == [0, 1, 2] and parse_layers("0,-1", 13) == [0, 12]
    with pytest.raises(ValueError, match="hidden states 0..2"):
        parse_layers("5", 3)
