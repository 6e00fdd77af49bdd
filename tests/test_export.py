"""roberta-scratch export (ONNX) and predict --backend onnx: the graph against eager torch on padded
batches of new shapes, the same predictions through either backend, the int8 file, and the refusals.

Each model is fine-tuned and exported once per module (a few seconds each), then shared."""

import json
import os
import sys

import pytest
import torch
from test_finetune import colour_squad, ner_rows, sentiment_rows, write_conll, write_csv, write_jsonl

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from roberta_scratch import cli  # noqa: E402
from roberta_scratch.checkpoints.formats import read_checkpoint, save_hf  # noqa: E402
from roberta_scratch.config import RobertaConfig  # noqa: E402
from roberta_scratch.deploy import export as export_module  # noqa: E402
from roberta_scratch.deploy.export import export  # noqa: E402
from roberta_scratch.finetune.trainer import FinetuneArgs, finetune  # noqa: E402
from roberta_scratch.model import MODEL_CLASSES, load_state  # noqa: E402
from roberta_scratch.onnx_model import OnnxModel, example_batch, read_metadata  # noqa: E402
from roberta_scratch.tokenization.byte_level import ByteLevelBPETokenizer  # noqa: E402

TASKS = ("seq-cls", "token-cls", "qa")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """{task: model folder}: a tiny MLM and its tokenizer, and a model fine-tuned from it for each
    task (briefly: weights that have learned something, so the int8 check is a fair one)."""
    root = tmp_path_factory.mktemp("export")
    squad = colour_squad(96, 1, n_facts=1, distractors=2)
    texts = [r["text"] for r in sentiment_rows(200, 1)] + [" ".join(r["tokens"]) for r in ner_rows(200, 1)]
    texts += [p["context"] + " " + p["qas"][0]["question"] for p in squad["data"][0]["paragraphs"]]
    tok = ByteLevelBPETokenizer.train(iter(texts * 3), vocab_size=420, show_progress=False)
    cfg = RobertaConfig(
        vocab_size=tok.vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=66,  # 64 real tokens: the longest batch below is the full table
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    out = {"mlm": str(root / "mlm")}
    MODEL_CLASSES["RobertaForMaskedLM"](cfg).save_pretrained(out["mlm"])
    tok.save_pretrained(out["mlm"])
    train = {
        "seq-cls": write_csv(root / "sent.csv", sentiment_rows(320, 2)),
        "token-cls": write_conll(root / "ner.conll", ner_rows(96, 2)),
        "qa": str(root / "squad.json"),
    }
    (root / "squad.json").write_text(json.dumps(squad))
    for task in TASKS:
        args = FinetuneArgs(
            task=task, model=out["mlm"], train=train[task], out=str(root / task), epochs=2 if task == "seq-cls" else 1,
            lr=2e-3, batch_size=16, warmup_ratio=0.1, weight_decay=0.01, progress=False, max_length=64, stride=16,
        )  # fmt: skip
        assert finetune(args) == 0
        out[task] = str(root / task / "model")
    return out


@pytest.fixture(scope="module")
def exported(folders):
    """{task: the fp32 file}: each folder exported once, to FOLDER/model.onnx (predict's default);
    the MLM through sdpa, the others through eager attention."""
    for task, folder in folders.items():
        export(folder, os.path.join(folder, "model.onnx"), attention="sdpa" if task == "mlm" else None)
    return {task: os.path.join(folder, "model.onnx") for task, folder in folders.items()}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """{task: a file of inputs, as predict reads them}: unseen rows of unequal lengths."""
    root = tmp_path_factory.mktemp("inputs")
    return {
        "seq-cls": write_jsonl(root / "sent.jsonl", [{"text": r["text"]} for r in sentiment_rows(40, 9)]),
        "token-cls": write_jsonl(root / "ner.jsonl", [{"tokens": r["tokens"]} for r in ner_rows(12, 9)]),
        "qa": write_jsonl(
            root / "qa.jsonl",
            [{"question": p["qas"][0]["question"], "context": p["context"]} for p in colour_squad(8, 9, distractors=3)["data"][0]["paragraphs"]],
        ),
    }  # fmt: skip


def torch_model(folder):
    cfg, sd = read_checkpoint(folder, attention="eager")
    model = MODEL_CLASSES[read_metadata(os.path.join(folder, "model.onnx"))["model_class"]](cfg)
    load_state(model, sd)
    return model.eval()


def run_cli(capsys, *argv):
    """(exit code, JSON lines printed, the last line of stderr)."""
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines() if line.startswith("{")]
    return code, rows, (captured.err.strip().splitlines() or [""])[-1]


def assert_same_json(a, b, atol=1e-5, where="result"):
    """Equal JSON, but a float may differ by atol: ONNX Runtime's kernels sum in another order, so
    probabilities differ from torch's in the 7th digit. Every string, int and key must be equal."""
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= atol, (where, a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), (where, a, b)
        for k in a:
            assert_same_json(a[k], b[k], atol, f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), (where, a, b)
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_json(x, y, atol, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def leftovers(folder):
    """Temporary files export may have left in a folder."""
    return [n for n in os.listdir(folder) if ".tmp-" in n]


# ----------------------------------------------------------------------------- the graph


@pytest.mark.parametrize("task", ["seq-cls", "token-cls", "qa", "mlm"])
def test_onnx_runtime_matches_eager_on_padded_batches_of_new_shapes(folders, exported, task):
    folder, path = folders[task], exported[task]
    model, runner = torch_model(folder), OnnxModel(path)
    cfg = model.config
    # export traced a batch of 2 rows of 8 tokens: other batch sizes and lengths, down to one token
    # and up to the whole position table, show whether the axes really are dynamic
    one = torch.tensor([[cfg.bos_token_id]])
    batches = [(one, torch.ones_like(one)), example_batch(cfg, (cfg.max_tokens, 2, 37, 5, 64, 9, 3), seed=7)]
    for ids, mask in batches:
        with torch.no_grad():
            want, got = model(ids, attention_mask=mask), runner(ids, attention_mask=mask)
        for name in runner.outputs:
            assert getattr(got, name).shape == getattr(want, name).shape
            diff = (getattr(got, name) - getattr(want, name)).abs().max().item()
            assert diff <= 1e-4, (task, name, tuple(ids.shape), diff)
    # the padded rows' real tokens see the same result as the row alone (the mask is in the graph)
    ids, mask = batches[1]
    alone = runner(ids[3:4, :5], attention_mask=mask[3:4, :5])
    first = runner.outputs[0]
    row = getattr(runner(ids, attention_mask=mask), first)[3]
    if row.shape[0] == ids.shape[1]:  # an output per token: compare the 5 real positions
        row = row[:5]
    torch.testing.assert_close(row, getattr(alone, first)[0], atol=1e-5, rtol=1e-5)


def test_the_file_declares_named_dynamic_axes_and_records_its_source(folders, exported):
    import onnx

    graph = onnx.load(exported["qa"])
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.graph.input}
    assert dims == {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"]}
    assert [v.name for v in graph.graph.output] == ["start_logits", "end_logits"]
    assert all(v.type.tensor_type.elem_type == onnx.TensorProto.INT64 for v in graph.graph.input)
    meta = read_metadata(exported["qa"])
    with open(os.path.join(folders["qa"], "finetune.json")) as f:
        assert json.loads(meta["task"]) == json.load(f)
    # the config the graph computes with: the folder's, with the attention it was written with (eager)
    assert json.loads(meta["config"]) == RobertaConfig.load(folders["qa"]).replace(attention="eager").to_dict()
    assert len(meta["weights_sha256"]) == 64 and meta["int8"] == "false"


# ----------------------------------------------------------------------------- predict --backend onnx


@pytest.mark.parametrize("task", TASKS)
def test_predict_gives_the_same_results_with_either_backend(folders, exported, inputs, task, capsys):
    argv = ["predict", "--model", folders[task], "--batch-size", "5", inputs[task]]
    code, want, _ = run_cli(capsys, *argv)
    assert code == 0 and len(want) >= 8
    code, got, _ = run_cli(capsys, *argv, "--backend", "onnx")  # FOLDER/model.onnx by default
    assert code == 0
    assert_same_json(got, want)


def test_a_hugging_face_folder_exports_with_the_same_fingerprint(folders, exported, inputs, tmp_path, capsys):
    """Our fine-tuned folder saved in Hugging Face's layout (no finetune.json: the head tells the
    task) exports, predicts the same, and its weights have the same fingerprint as ours."""
    cfg, sd = read_checkpoint(folders["seq-cls"])
    hf = str(tmp_path / "hf")
    save_hf(cfg, sd, hf)
    ByteLevelBPETokenizer.from_pretrained(folders["seq-cls"]).save_pretrained(hf)
    code, _, _ = run_cli(capsys, "export", "--model", hf, "--out", f"{hf}/model.onnx")
    assert code == 0
    meta = read_metadata(f"{hf}/model.onnx")
    assert meta["weights_sha256"] == read_metadata(exported["seq-cls"])["weights_sha256"]
    assert json.loads(meta["task"])["task"] == "seq-cls"
    _, want, _ = run_cli(capsys, "predict", "--model", folders["seq-cls"], inputs["seq-cls"])
    code, got, _ = run_cli(capsys, "predict", "--model", hf, "--backend", "onnx", inputs["seq-cls"])
    assert code == 0
    assert_same_json(got, want)


# ----------------------------------------------------------------------------- --int8


def test_the_int8_file_is_smaller_and_agrees_with_float_on_most_inputs(folders, exported, inputs, capsys):
    folder = folders["seq-cls"]
    path = os.path.join(folder, "int8.onnx")
    code, _, _ = run_cli(capsys, "export", "--model", folder, "--out", path, "--int8")
    assert code == 0
    assert read_metadata(path)["int8"].startswith("quantize_dynamic")
    assert os.path.getsize(path) < 0.6 * os.path.getsize(exported["seq-cls"])
    _, float_rows, _ = run_cli(capsys, "predict", "--model", folder, "--backend", "onnx", inputs["seq-cls"])
    code, int8_rows, _ = run_cli(capsys, "predict", "--model", folder, "--backend", "onnx", "--onnx", path, inputs["seq-cls"])  # fmt: skip
    assert code == 0 and len(int8_rows) == len(float_rows) == 40
    # the fine-tuned model is sure of most of these (its float labels are right), so int8 noise of a
    # few hundredths must leave nearly every label as it was; and it is noise: the numbers moved
    gold = [r["label"] for r in sentiment_rows(40, 9)]
    assert sum(r["label"] == g for r, g in zip(float_rows, gold, strict=True)) >= 36
    agree = sum(a["label"] == b["label"] for a, b in zip(int8_rows, float_rows, strict=True))
    moved = [abs(a["probability"] - b["probability"]) for a, b in zip(int8_rows, float_rows, strict=True)]
    assert agree >= 38, agree
    assert 0 < max(moved) < 0.1, max(moved)


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("backend", ["triton", "flex", "mypkg.kernels:attention"])
def test_a_kernel_backend_is_refused_with_the_way_out(folders, tmp_path, capsys, backend):
    folder = copy_folder(folders["seq-cls"], tmp_path / "m", attention=backend)
    code, _, err = run_cli(capsys, "export", "--model", folder, "--out", tmp_path / "m.onnx")
    assert code != 0 and backend in err and "--attention sdpa" in err, err
    assert not os.path.exists(tmp_path / "m.onnx") and not leftovers(tmp_path)


def test_opsets_that_cannot_work_are_refused(folders, tmp_path, capsys):
    # there sdpa becomes ONNX's Attention op, which onnxruntime 1.32 cannot run with a padding mask
    code, _, err = run_cli(capsys, "export", "--model", folders["mlm"], "--out", tmp_path / "m.onnx", "--attention", "sdpa", "--opset", "23")  # fmt: skip
    assert code != 0 and "--opset 22" in err, err
    code, _, err = run_cli(capsys, "export", "--model", folders["mlm"], "--out", tmp_path / "m.onnx", "--opset", "17")
    assert code != 0 and "opset 18 or newer" in err, err
    assert os.listdir(tmp_path) == []


def test_attention_override_exports_a_kernel_model_and_overwrite_replaces(folders, exported, tmp_path, capsys):
    folder = copy_folder(folders["seq-cls"], tmp_path / "m", attention="triton")
    out = tmp_path / "m.onnx"
    out.write_bytes(b"old")
    code, _, err = run_cli(capsys, "export", "--model", folder, "--out", out)  # refused before the backend is read
    assert code != 0 and "exists" in err and "--overwrite" in err and out.read_bytes() == b"old"
    code, _, _ = run_cli(capsys, "export", "--model", folder, "--out", out, "--attention", "sdpa", "--overwrite")
    assert code == 0 and read_metadata(str(out))["weights_sha256"] == read_metadata(exported["seq-cls"])["weights_sha256"]  # fmt: skip
    assert not leftovers(tmp_path)


def test_an_int8_model_is_refused(folders, tmp_path, capsys):
    from roberta_scratch.deploy.quantize import quantize

    quantize(folders["seq-cls"], str(tmp_path / "q"))
    code, _, err = run_cli(capsys, "export", "--model", tmp_path / "q", "--out", tmp_path / "q.onnx")
    assert code != 0 and "int8" in err and "export the float model" in err and "--int8" in err, err
    assert not os.path.exists(tmp_path / "q.onnx") and not leftovers(tmp_path)


def test_a_file_exported_from_another_model_is_refused(folders, exported, inputs, tmp_path, capsys):
    # another task's model, and the same model with one weight changed (fine-tuned again since)
    code, _, err = run_cli(capsys, "predict", "--model", folders["token-cls"], "--backend", "onnx", "--onnx", exported["seq-cls"], inputs["token-cls"])  # fmt: skip
    assert code != 0 and "was exported from another model" in err, err
    cfg, sd = read_checkpoint(folders["seq-cls"])
    sd["classifier.out_proj.bias"] = sd["classifier.out_proj.bias"] + 1e-3
    changed = copy_folder(folders["seq-cls"], tmp_path / "again", sd=sd)
    code, rows, err = run_cli(capsys, "predict", "--model", changed, "--backend", "onnx", "--onnx", exported["seq-cls"], inputs["seq-cls"])  # fmt: skip
    assert code != 0 and rows == [] and f"{exported['seq-cls']} was exported from another model" in err, err


def test_missing_files_are_one_line_errors(folders, tmp_path, capsys):
    (tmp_path / "in.txt").write_text("x\n")
    code, _, err = run_cli(capsys, "predict", "--model", folders["qa"], "--backend", "onnx", "--onnx", tmp_path / "none.onnx", tmp_path / "in.txt")  # fmt: skip
    assert code != 0 and "none.onnx does not exist" in err and "roberta-scratch export" in err, err
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all")
    code, _, err = run_cli(capsys, "predict", "--model", folders["qa"], "--backend", "onnx", "--onnx", tmp_path / "junk.onnx", tmp_path / "in.txt")  # fmt: skip
    assert code != 0 and "junk.onnx" in err, err
    code, _, err = run_cli(capsys, "export", "--model", tmp_path / "nothing", "--out", tmp_path / "x.onnx")
    assert code != 0 and "nothing does not exist" in err, err
    code, _, err = run_cli(capsys, "export", "--model", folders["qa"], "--out", tmp_path / "no" / "x.onnx")
    assert code != 0 and "does not exist" in err and not os.path.exists(tmp_path / "no"), err


def test_a_failed_export_leaves_nothing(folders, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(export_module, "verify", lambda path, model: 3e-3)  # as if the graph were wrong
    code, _, err = run_cli(capsys, "export", "--model", folders["seq-cls"], "--out", tmp_path / "m.onnx")
    assert code != 0 and "disagrees with the torch model" in err and "3.00e-03" in err, err
    assert os.listdir(tmp_path) == []


def test_without_the_deploy_extra_the_error_says_what_to_install(folders, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    code, _, err = run_cli(capsys, "export", "--model", folders["seq-cls"], "--out", tmp_path / "m.onnx")
    assert code != 0 and "pip install roberta-scratch[deploy]" in err, err
    assert os.listdir(tmp_path) == []


def copy_folder(src, dst, sd=None, **config_changes):
    """A copy of a model folder with config.json fields changed, or other weights."""
    import shutil

    from roberta_scratch.checkpoints.formats import save_ours

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.onnx"))
    if sd is not None:
        save_ours(RobertaConfig.load(str(dst)), sd, str(dst))
    if config_changes:
        with open(os.path.join(dst, "config.json")) as f:
            d = json.load(f)
        d.update(config_changes)
        with open(os.path.join(dst, "config.json"), "w") as f:
            json.dump(d, f)
    return str(dst)
