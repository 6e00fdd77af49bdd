"""roberta-scratch quantize: int8 weights per output channel, loaded by every command that takes --model."""

import json
import os

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_model_folder
from test_finetune import (  # noqa: F401 (pretrained is a fixture)
    args_for,
    colour_squad,
    ner_rows,
    pretrained,
    sentiment_rows,
    write_conll,
    write_jsonl,
)

from roberta_scratch import RobertaConfig, RobertaForMaskedLM, RobertaForSequenceClassification, cli
from roberta_scratch.checkpoints.formats import read_checkpoint
from roberta_scratch.deploy.quantize import quantize
from roberta_scratch.finetune.predict import predict
from roberta_scratch.finetune.trainer import finetune
from roberta_scratch.int8 import Int8Linear, _engine, dequantize_rows, quantize_rows


def test_rows_are_quantized_symmetrically_within_half_a_step():
    torch.manual_seed(0)
    w = torch.randn(48, 32) * torch.logspace(-3, 1, 48)[:, None]  # rows of very different scales
    w[5] = 0.0  # an all-zero row must not divide by zero
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8 and scale.shape == (48,) and q.abs().max() <= 127
    err = (dequantize_rows(q, scale) - w).abs()
    assert (err <= scale[:, None] / 2 + 1e-7).all()
    assert (q.abs().amax(dim=1)[w.abs().amax(dim=1) > 0] == 127).all()  # each row uses its full range
    assert (dequantize_rows(q, scale)[5] == 0).all()


@pytest.mark.parametrize("dynamic", [True, False])
def test_int8_linear_matches_its_float_linear(dynamic):
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 96)
    m = Int8Linear.from_float(lin, dynamic=dynamic)
    x = torch.randn(3, 7, 64)
    with torch.no_grad():
        y, ref = m(x), lin(x)
        exact = F.linear(x, dequantize_rows(m.weight, m.weight_scale), lin.bias)
    assert y.shape == (3, 7, 96)
    if not dynamic:  # weight-only: float arithmetic on the dequantized weight, nothing else
        torch.testing.assert_close(y, exact, rtol=0, atol=1e-6)
    else:  # int8 activations too: within a few activation steps of the float result
        assert (y - ref).abs().max() < 0.05 * ref.abs().max()
        if _engine()[0] is not None:
            assert m._packed, "the CPU's quantized engine should run this layer"
        assert not torch.equal(y, exact)  # the activations really were quantized
    with torch.enable_grad():  # with autograd on, the float path runs (the engine has no backward)
        torch.testing.assert_close(m(x), exact, rtol=0, atol=1e-6)


def test_a_reloaded_int8_layer_packs_its_new_weights():
    torch.manual_seed(0)
    a, b = Int8Linear.from_float(torch.nn.Linear(16, 8)), Int8Linear.from_float(torch.nn.Linear(16, 8))
    x = torch.randn(4, 16)
    with torch.no_grad():
        a(x)  # packs a's weights
        a.load_state_dict(b.state_dict())
        torch.testing.assert_close(a(x), b(x))
    with pytest.raises(ValueError, match="int8"):
        a.load_state_dict({**b.state_dict(), "weight": b.weight.float()})


@pytest.fixture(scope="module")
def finetuned(pretrained, tmp_path_factory):  # noqa: F811
    """A seq-cls model fine-tuned on the sentiment rows, and a file of held-out inputs."""
    root = tmp_path_factory.mktemp("quantize")
    train = write_jsonl(root / "train.jsonl", sentiment_rows(320, 2))
    assert finetune(args_for(pretrained, "seq-cls", train, root / "run", epochs=2)) == 0
    inputs = root / "inputs.txt"
    inputs.write_text("\n".join(r["text"] for r in sentiment_rows(60, 7)) + "\n")
    return str(root / "run" / "model"), str(inputs)


def test_a_finetuned_model_quantizes_and_predicts_as_before(finetuned, tmp_path, capsys):
    model, inputs = finetuned
    out = tmp_path / "int8"
    assert cli.main(["quantize", "--model", model, "--out", str(out), "--calibration", inputs]) == 0
    summary = capsys.readouterr().out
    assert "predictions agree on" in summary and "dynamic-int8" in summary
    cfg = RobertaConfig.load(str(out))
    assert cfg.quantization["method"] == "dynamic-int8" and cfg.label_names == ["negative", "positive"]
    assert {"finetune.json", "vocab.json", "merges.txt"} <= set(os.listdir(out))

    int8 = RobertaForSequenceClassification.from_pretrained(str(out))
    linears = [m for m in int8.modules() if isinstance(m, torch.nn.Linear)]
    assert not linears and sum(isinstance(m, Int8Linear) for m in int8.modules()) == 2 * 4 + 2
    _, sd = read_checkpoint(str(out))
    assert sd["roberta.layers.0.ffn.fc1.weight"].dtype == torch.int8
    assert sd["roberta.embeddings.word_embeddings.weight"].dtype == torch.int8  # stored int8 ...
    assert int8.roberta.embeddings.word_embeddings.weight.dtype == torch.float32  # ... looked up in float

    lines = open(inputs).read().splitlines()
    a, b = predict(model, lines), predict(str(out), lines)
    assert sum(x["label"] == y["label"] for x, y in zip(a, b, strict=True)) >= 0.95 * len(a)
    assert (
        max(abs(x["probability"] - y["probability"]) for x, y in zip(a, b, strict=True) if x["label"] == y["label"])
        < 0.05
    )


def test_an_int8_model_is_under_a_third_of_the_float_size(tmp_path):
    src = tiny_model_folder(tmp_path / "m", RobertaForSequenceClassification, hidden_size=256, intermediate_size=1024)
    quantize(src, str(tmp_path / "q"))
    ratio = os.path.getsize(tmp_path / "q" / "model.safetensors") / os.path.getsize(
        tmp_path / "m" / "model.safetensors"
    )
    assert ratio <= 0.30, ratio


@pytest.mark.parametrize("method", ["dynamic-int8", "weight-only-int8"])
def test_an_mlm_model_quantizes_and_fills_masks(tmp_path, capsys, method):
    src = tiny_model_folder(tmp_path / "m", RobertaForMaskedLM)
    out = str(tmp_path / "q")
    assert cli.main(["quantize", "--model", src, "--out", out, "--method", method]) == 0
    capsys.readouterr()
    a, b = RobertaForMaskedLM.from_pretrained(src).eval(), RobertaForMaskedLM.from_pretrained(out).eval()
    ids = torch.tensor([[0, 5, 9, 17, 2]])
    with torch.no_grad():
        la, lb = a(ids).logits, b(ids).logits
    assert (la - lb).abs().max() < 0.05 * la.abs().max()
    assert not torch.equal(la, lb)  # the int8 weights really ran
    assert cli.main(["fill-mask", "--model", out, "the cat <mask> on the mat"]) == 0
    assert cli.main(["features", "--model", out, "--out", str(tmp_path / "f.npy"), "the cat sat"]) == 0


def test_bad_inputs_name_the_problem_and_write_nothing(finetuned, tmp_path, capsys):
    model, _ = finetuned
    out = tmp_path / "int8"
    assert cli.main(["quantize", "--model", model, "--out", str(out)]) == 0
    for argv, problem in [
        (["--model", str(out), "--out", str(tmp_path / "again")], "already quantized"),
        (["--model", model, "--out", str(out)], "already exists"),
        (["--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")], "does not exist"),
    ]:
        capsys.readouterr()
        assert cli.main(["quantize", *argv]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and problem in err and len(err.splitlines()) == 1
    with pytest.raises(SystemExit):
        cli.main(["quantize", "--model", model, "--out", str(tmp_path / "y"), "--method", "int4"])
    assert sorted(os.listdir(tmp_path)) == ["int8"]  # no temp folder, no half-written output

    config = json.load(open(out / "config.json"))
    (tmp_path / "odd").mkdir()
    json.dump({**config, "quantization": {"method": "int3"}}, open(tmp_path / "odd" / "config.json", "w"))
    with pytest.raises(ValueError, match="quantization must be null or an object whose method"):
        RobertaConfig.load(str(tmp_path / "odd"))
    with pytest.raises(ValueError, match="has no Hugging Face form"):
        RobertaConfig.load(str(out)).to_hf_dict()
    for to in ("hf", "ours"):  # neither format holds int8 weights: one line, nothing written
        capsys.readouterr()
        assert cli.main(["convert", str(out), str(tmp_path / f"as-{to}"), "--to", to]) == 2  # convert refuses with 2
        err = capsys.readouterr().err.strip()
        assert "holds an int8 model (dynamic-int8): convert the float model" in err and len(err.splitlines()) == 1
        assert not os.path.exists(tmp_path / f"as-{to}")


def test_an_int8_model_is_not_finetuned(finetuned, tmp_path):
    model, inputs = finetuned
    quantize(model, str(tmp_path / "int8"))
    train = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(32, 2))
    with pytest.raises(Exception, match="int8 model"):
        finetune(args_for(str(tmp_path / "int8"), "seq-cls", train, tmp_path / "run", epochs=1))


@pytest.mark.parametrize("task", ["token-cls", "qa"])
def test_token_and_qa_models_quantize_and_predict_as_before(pretrained, tmp_path, task):  # noqa: F811
    """The other heads: entities and answers survive int8 (weights that learned a little)."""
    if task == "token-cls":
        train = write_conll(tmp_path / "train.conll", ner_rows(96, 2))
        lines = [" ".join(r["tokens"]) for r in ner_rows(20, 5)]
        kw = {}
    else:
        train = tmp_path / "squad.json"
        train.write_text(json.dumps(colour_squad(96, 2, n_facts=1, distractors=1)))
        lines = [
            json.dumps({"question": p["qas"][0]["question"], "context": p["context"]})
            for p in colour_squad(20, 5, n_facts=1, distractors=1)["data"][0]["paragraphs"]
        ]
        kw = {"stride": 16}
    assert finetune(args_for(pretrained, task, train, tmp_path / "run", epochs=1, **kw)) == 0
    model = str(tmp_path / "run" / "model")
    quantize(model, str(tmp_path / "int8"))
    a, b = predict(model, lines), predict(str(tmp_path / "int8"), lines)
    assert len(a) == len(b) == len(lines)
    key = "entities" if task == "token-cls" else "answer"
    assert all(key in r for r in b)
    assert a != b  # the int8 weights really ran: the scores moved
    assert sum(x[key] == y[key] for x, y in zip(a, b, strict=True)) >= 0.8 * len(a)
