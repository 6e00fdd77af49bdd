"""`roberta-scratch export`: a model folder as one ONNX file for ONNX Runtime.

    roberta-scratch export --model RUN/model --out RUN/model/model.onnx           # float32
    roberta-scratch export --model RUN/model --out RUN/model/model.onnx --int8    # int8 weights
    roberta-scratch predict --model RUN/model --backend onnx inputs.txt           # runs RUN/model/model.onnx

The graph takes input_ids and attention_mask (int64, dynamic batch and sequence axes) and returns
the head's outputs by name: logits (seq-cls, token-cls, MLM), start_logits and end_logits (qa), or
last_hidden_state (a bare encoder). --int8 runs ONNX Runtime's quantize_dynamic on the float graph:
int8 weights per output channel, activations quantized per batch at run time.

Every file is checked before it is kept: ONNX Runtime against the torch model on a padded batch
(the float graph must agree within 1e-4). It is written in a temporary folder beside --out and
renamed into place, so a failure leaves nothing at --out.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings

import torch

from ..checkpoints.formats import find_model_dir, read_checkpoint
from ..checkpoints.keymaps import hf_architecture
from ..fileio import fsync_dir
from ..model import MODEL_CLASSES, build_model
from ..onnx_model import (
    DEFAULT_OPSET,
    EXPORTABLE_ATTENTION,
    HEAD_OUTPUTS,
    META,
    OnnxModel,
    describe_source,
    example_batch,
    export_graph,
    require,
    set_metadata,
)

FLOAT_TOLERANCE = 1e-4  # max |ONNX Runtime - torch| a float32 file may show; measured ~1e-7 on tiny, ~5e-7 at base
# Per-channel weight scales: one per output row instead of one per matrix. Measured on the tests'
# fine-tuned tiny models (200 inputs): a third less error in the probabilities (mean 1.3e-4 vs
# 2.0e-4 seq-cls; 3.9e-3 vs 5.1e-3 max logit error token-cls), for a 1.7% larger file.
INT8_PER_CHANNEL = True


def add_export_arguments(p) -> None:
    p.add_argument("--model", required=True, help="a model folder: fine-tuned (any task), MLM, bare, or Hugging Face")
    p.add_argument("--out", required=True, help="the .onnx file to write (its folder must exist)")
    p.add_argument(
        "--int8", action="store_true", help="int8 weights through ONNX Runtime's quantize_dynamic (~4x smaller)"
    )
    p.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset, 18 or newer (default {DEFAULT_OPSET})"
    )
    p.add_argument(
        "--attention",
        choices=EXPORTABLE_ATTENTION,
        default=None,
        help="the attention written into the graph (default eager: both compute the same function, and "
        "ONNX Runtime ran the eager graph 9%% faster in int8, docs/deploy.md)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def export_command(args) -> int:
    print(
        export(
            args.model,
            args.out,
            int8=args.int8,
            opset=args.opset,
            attention=args.attention,
            overwrite=args.overwrite,
            trust_code=args.trust_code,
        )
    )
    return 0


def export(
    model_dir: str,
    out: str,
    int8: bool = False,
    opset: int = DEFAULT_OPSET,
    attention: str | None = None,
    overwrite: bool = False,
    trust_code: bool = False,
) -> str:
    """Write the model in `model_dir` to `out` as ONNX; returns a one-line summary."""
    require("onnx"), require("onnxruntime"), require("onnxscript")
    _check_out(out, overwrite)
    folder, cfg, sd, info = _read_source(model_dir, attention, trust_code)
    if cfg.attention == "sdpa" and opset >= 23:
        import onnxruntime

        raise ValueError(
            f"sdpa attention at opset {opset} becomes ONNX's Attention op, whose padding mask onnxruntime "
            f"{onnxruntime.__version__} rejects: pass --opset 22, or --attention eager"
        )
    head = hf_architecture(sd)  # a pretraining folder's NSP head is left out: the graph is its MLM
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # that NSP head, which the model class does not take
        model = build_model(MODEL_CLASSES[head], cfg, sd).eval()

    import onnx

    parent = os.path.dirname(os.path.abspath(out))
    with tempfile.TemporaryDirectory(dir=parent, prefix=f".{os.path.basename(out)}.tmp-") as tmp:
        graph = export_graph(model, opset)
        set_metadata(graph, {**describe_source(cfg, sd, info, head), "int8": "false"})
        path = os.path.join(tmp, "float32.onnx")
        onnx.save(graph, path)
        diff = verify(path, model)
        if diff > FLOAT_TOLERANCE:
            raise RuntimeError(
                f"the exported graph disagrees with the torch model: max |difference| {diff:.2e} > "
                f"{FLOAT_TOLERANCE:.0e} on a padded batch (a bug in the export; nothing was written)"
            )
        if int8:
            path = quantize_int8(path, os.path.join(tmp, "int8.onnx"))
            diff = verify(path, model)
            if diff != diff or diff == float("inf"):
                raise RuntimeError("the int8 graph returns NaN or infinity (nothing was written)")
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(path, out)
        fsync_dir(parent)
    size = os.path.getsize(out) / 2**20
    kind = "int8 weights" if int8 else "float32"
    return (
        f"wrote {out}: {size:.1f} MiB, opset {opset}, {kind}, {head} -> {', '.join(HEAD_OUTPUTS[head])}; "
        f"ONNX Runtime vs torch max |diff| {diff:.1e} on a padded batch"
    )


def _check_out(out: str, overwrite: bool) -> None:
    """Refuse before any work: an existing --out (without --overwrite), a folder, a missing folder."""
    if os.path.isdir(out):
        raise IsADirectoryError(f"--out {out} is a folder: name the .onnx file to write, e.g. {out}/model.onnx")
    if os.path.exists(out) and not overwrite:
        raise FileExistsError(f"{out} exists: pass --overwrite to replace it")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"the folder of --out, {parent}, does not exist")


def _read_source(model_dir: str, attention: str | None, trust_code: bool):
    """(folder, config, canonical state dict, task info) of the model to export, with the attention
    it is exported with; refuses what a graph cannot hold (kernels, int8 weights)."""
    folder, note = find_model_dir(model_dir)
    if note:
        warnings.warn(note, stacklevel=3)
    named = _named_kernels(folder)
    unsupported = {k: v for k, v in named.items() if v not in (*EXPORTABLE_ATTENTION, "torch", None)}
    if unsupported and attention is None:
        key, value = next(iter(unsupported.items()))
        raise ValueError(
            f"{folder}'s config names {key} {value!r}, which an ONNX graph cannot hold: pass "
            "--attention sdpa (or eager) to export torch's implementation of the same math"
        )
    # subtle: the override keeps the file's MODULE:FUNCTION (if any) from ever being imported
    cfg, sd = read_checkpoint(
        folder,
        trust_code=trust_code,
        attention=attention or "eager",  # measured faster in ONNX Runtime than sdpa's decomposition
        layer_norm=None,
    )
    if cfg.quantization is not None:
        raise ValueError(
            f"{folder} holds an int8 model ({cfg.quantization.get('method')}): export the float model it was "
            "quantized from, with --int8"
        )
    info = {}
    task_file = os.path.join(folder, "finetune.json") if os.path.isdir(folder) else ""
    if os.path.isfile(task_file):
        with open(task_file, encoding="utf-8") as f:
            info = json.load(f)
    else:
        info = _task_from_head(sd, cfg)
    return folder, cfg, sd, info


def _named_kernels(folder: str) -> dict:
    """attention and layer_norm as config.json names them, read without building anything (a
    fairseq model.pt has no config.json: torch's implementations)."""
    path = os.path.join(folder, "config.json") if os.path.isdir(folder) else ""
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        d = json.load(f)
    return {k: d.get(k) for k in ("attention", "layer_norm") if isinstance(d, dict) and d.get(k) is not None}


def _task_from_head(sd: dict, cfg) -> dict:
    """What predict needs for a folder without finetune.json (a Hugging Face model with a task
    head), as predict infers it; nothing for an MLM or a bare encoder."""
    from ..finetune.predict import HEAD_TASKS

    task = next((t for key, t in HEAD_TASKS if key in sd), None)
    return {"task": task, "max_length": cfg.max_tokens} if task else {}


def quantize_int8(src: str, dst: str) -> str:
    """ONNX Runtime's dynamic quantization of a float graph: int8 weights (per output channel)
    for MatMul/Gemm and the embedding tables, activations quantized per batch at run time. Our
    metadata is copied over. Returns dst."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))  # its root-logger advice, "consider pre-processing", is not the user's
    try:
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=INT8_PER_CHANNEL)
    finally:
        root.setLevel(level)
    graph = onnx.load(dst)
    meta = {p.key: p.value for p in onnx.load(src, load_external_data=False).metadata_props}
    ours = {k[len(META) :]: v for k, v in meta.items() if k.startswith(META)}
    set_metadata(graph, {**ours, "int8": "quantize_dynamic, per channel" if INT8_PER_CHANNEL else "quantize_dynamic"})
    onnx.save(graph, dst)
    return dst


def verify(path: str, model, seed: int = 1) -> float:
    """Max |ONNX Runtime - torch| over every output, on a padded batch of lengths other than the
    export example's (so a length baked into the graph shows)."""
    cfg = model.config
    top = min(13, cfg.max_tokens)
    ids, mask = example_batch(cfg, lengths=(top, max(2, top // 2), 2), seed=seed)
    try:
        runner = OnnxModel(path)
        got = runner(ids, attention_mask=mask)
    except Exception as e:  # noqa: BLE001 (ORT's own error types; its messages run to pages)
        why = str(e).strip().splitlines()[0][:400]
        raise RuntimeError(f"ONNX Runtime cannot run the exported graph ({why}); nothing was written") from e
    with torch.no_grad():
        want = model(ids, attention_mask=mask)
    diffs = [(getattr(got, n) - getattr(want, n)).abs().max().item() for n in runner.outputs]
    return max(diffs)
