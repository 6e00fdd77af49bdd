"""A model folder runs no code: `attention` / `layer_norm` in its config.json may name a kernel as
MODULE:FUNCTION, which building the model imports, so a name read from a file must be a registered
one unless the user opts in (`--trust-code`, `trust_code=True`), as Hugging Face's trust_remote_code.

Each loading path is tried with a module that writes a marker file when imported, importable on
sys.path as a downloaded folder's would be; the marker must never appear without the opt-in.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import tiny_model_folder

from roberta_scratch import RobertaConfig, RobertaForMaskedLM, RobertaForSequenceClassification, cli
from roberta_scratch.config import UntrustedCode

REPO = Path(__file__).resolve().parents[1]
CODE = """\
import pathlib
pathlib.Path({marker!r}).write_text("imported")

def attn(q, k, v, key_padding_mask=None, dropout_p=0.0, softmax_scale=None):
    from roberta_kernels.registry import eager_attention
    return eager_attention(q, k, v, key_padding_mask, dropout_p, softmax_scale)

def ln(x, weight, bias, eps=1e-5, residual=None, dropout_p=0.0):
    from roberta_kernels.registry import torch_layer_norm
    return torch_layer_norm(x, weight, bias, eps, residual, dropout_p)
"""


@pytest.fixture
def payload(tmp_path, monkeypatch):
    """(module name, marker path): a module on sys.path that leaves the marker when imported."""
    name = f"payload_{tmp_path.name.replace('-', '_')}"
    site = tmp_path / "site"
    site.mkdir()
    marker = tmp_path / "IMPORTED"
    (site / f"{name}.py").write_text(CODE.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(site))
    yield name, marker
    sys.modules.pop(name, None)


def model_folder(path: Path, cls=RobertaForMaskedLM, **names) -> str:
    """A tiny model with its tokenizer, whose config.json then names kernels as given."""
    tiny_model_folder(path, cls)
    config = json.loads((path / "config.json").read_text())
    config.update(names)
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


def refused(capsys, argv, key) -> None:
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code != 0 and len(lines) == 1, err
    assert f"{key} is " in lines[0] and "--trust-code" in lines[0], lines[0]


COMMANDS = {
    "fill-mask": lambda m, tmp: ["fill-mask", "--model", m, "the cat <mask> on the mat"],
    "features": lambda m, tmp: ["features", "--model", m, "--out", tmp / "f.npy", "the cat sat"],
    "attention": lambda m, tmp: ["attention", "--model", m, "--out", tmp / "a.png", "the cat sat"],
    "convert": lambda m, tmp: ["convert", m, tmp / "converted"],
    "inspect": lambda m, tmp: ["inspect", "--config", m],
    "predict": lambda m, tmp: ["predict", "--model", m, tmp / "in.txt"],
    "finetune": lambda m, tmp: [
        "finetune",
        "--task",
        "seq-cls",
        "--model",
        m,
        "--train",
        tmp / "train.csv",
        "--out",
        tmp / "run",
        "--epochs",
        "1",
    ],
}


# commands that set the attention themselves: eager for the maps, sdpa for predict, --attention for finetune
OWN_ATTENTION = {"attention", "predict", "finetune"}


@pytest.mark.parametrize("key", ["attention", "layer_norm"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_no_command_imports_a_module_a_config_json_names(command, key, payload, tmp_path, capsys):
    name, marker = payload
    cls = RobertaForSequenceClassification if command == "predict" else RobertaForMaskedLM
    model = model_folder(tmp_path / "downloaded", cls, **{key: f"{name}:{'attn' if key == 'attention' else 'ln'}"})
    (tmp_path / "in.txt").write_text("the cat sat\n")
    (tmp_path / "train.csv").write_text("text,label\n" + "".join(f"the cat sat {i},{'ab'[i % 2]}\n" for i in range(8)))
    if key == "attention" and command in OWN_ATTENTION:  # the file's value is never used: nothing to refuse
        cli.main([str(a) for a in COMMANDS[command](model, tmp_path)])
        capsys.readouterr()
    else:
        refused(capsys, COMMANDS[command](model, tmp_path), key)
    assert not marker.exists()


def test_pretrain_with_a_config_json_that_names_code(prepared, payload, tmp_path, capsys):
    name, marker = payload
    model = model_folder(tmp_path / "downloaded", layer_norm=f"{name}:ln")
    refused(
        capsys,
        [
            "pretrain",
            "--data",
            prepared / "data",
            "--config",
            model,
            "--out",
            tmp_path / "run",
            "--steps",
            "1",
            "--seq-len",
            "32",
        ],
        "layer_norm",
    )
    assert not marker.exists()


def test_checkpoints_convert_script(payload, tmp_path):
    name, marker = payload
    model = model_folder(tmp_path / "downloaded", attention=f"{name}:attn")
    proc = subprocess.run(
        [sys.executable, str(REPO / "checkpoints_convert.py"), model, str(tmp_path / "out")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "site")},
    )
    assert proc.returncode != 0 and "--trust-code" in proc.stderr, proc.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_the_python_api_refuses_and_the_opt_in_runs_it(payload, tmp_path):
    name, marker = payload
    model = model_folder(tmp_path / "downloaded", attention=f"{name}:attn", layer_norm=f"{name}:ln")
    with pytest.raises(UntrustedCode, match=r"attention is '.*:attn', which names code to import.*trust_code=True"):
        RobertaForMaskedLM.from_pretrained(model)
    with pytest.raises(UntrustedCode, match="layer_norm is"):  # overriding one key leaves the other refused
        RobertaForMaskedLM.from_pretrained(model, attention="sdpa")
    with pytest.raises(UntrustedCode):
        RobertaConfig.load(model)
    assert not marker.exists()
    # both overridden by the caller: nothing from the file is used, so nothing to refuse
    assert RobertaForMaskedLM.from_pretrained(model, attention="sdpa", layer_norm="torch").config.attention == "sdpa"
    assert not marker.exists()
    # the opt-in: the marker proves that the module would have run in every case above
    loaded = RobertaForMaskedLM.from_pretrained(model, trust_code=True)
    assert marker.exists() and loaded.config.attention == f"{name}:attn"


def test_the_cli_opt_in_runs_it(payload, tmp_path, capsys):
    name, marker = payload
    model = model_folder(tmp_path / "downloaded", attention=f"{name}:attn")
    assert cli.main(["inspect", "--config", model, "--trust-code"]) == 0
    assert marker.exists()


def test_registered_names_from_a_file_need_no_opt_in(tmp_path):
    model = model_folder(tmp_path / "m", attention="eager", layer_norm="torch")
    assert RobertaForMaskedLM.from_pretrained(model).config.attention == "eager"


def test_a_model_built_with_a_user_kernel_records_its_name(tiny, payload, tmp_path):
    """Code the user names in Python needs no opt-in; the saved folder keeps the name, and loads
    again with the opt-in."""
    name, marker = payload
    cfg = tiny(attention=f"{name}:attn")
    RobertaForMaskedLM(cfg).save_pretrained(str(tmp_path / "mine"))
    assert marker.exists()
    assert json.loads((tmp_path / "mine" / "config.json").read_text())["attention"] == f"{name}:attn"
    with pytest.raises(UntrustedCode):
        RobertaForMaskedLM.from_pretrained(str(tmp_path / "mine"))
    assert (
        RobertaForMaskedLM.from_pretrained(str(tmp_path / "mine"), trust_code=True).config.attention == f"{name}:attn"
    )
