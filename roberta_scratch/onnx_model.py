"""Our models as ONNX graphs, and an ONNX Runtime session that the tasks call like a torch model.

    graph = export_graph(model, opset=20)            # onnx.ModelProto: input_ids, attention_mask -> head outputs
    set_metadata(graph, describe_source(cfg, sd, info, "RobertaForSequenceClassification"))
    model = OnnxModel("RUN/model/model.onnx")        # model(ids, attention_mask=mask).logits, as in torch
    model.check_source(cfg, sd, "RUN/model")         # refuse a file exported from other weights

The file records where it came from (onnx metadata_props, keys under "roberta_scratch."): the
config, the task (finetune.json), and a sha256 of the weights, so that predict can refuse to run
a file against a folder it was not exported from. onnx and onnxruntime are imported inside the
functions: they are the optional [deploy] extra, and importing this module must stay cheap.
"""

from __future__ import annotations

import contextlib
import json
import os

import torch
import torch.nn as nn

from . import model as modeling
from .checkpoints.formats import weights_fingerprint
from .config import RobertaConfig
from .model import Output, check_inputs
from .testing import padded_batch

# What each model class returns, in the order the graph's outputs hold them.
HEAD_OUTPUTS = {
    "RobertaForSequenceClassification": ("logits",),
    "RobertaForTokenClassification": ("logits",),
    "RobertaForQuestionAnswering": ("start_logits", "end_logits"),
    "RobertaForMaskedLM": ("logits",),
    "RobertaModel": ("last_hidden_state",),
}
EXPORTABLE_ATTENTION = ("eager", "sdpa")  # torch ops; the other backends are kernels ONNX cannot hold
DEFAULT_OPSET = 20  # torch's default; 18 is the oldest its exporter writes (Split's num_outputs)
META = "roberta_scratch."  # prefix of our metadata_props keys
INSTALL_HINT = "pip install roberta-scratch[deploy]"


def require(module: str):
    """Import onnx / onnxruntime / onnxscript, or say which extra brings them."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"{module} is not installed ({e}); it comes with the [deploy] extra: {INSTALL_HINT}"
        ) from None


def comparable_config(cfg: RobertaConfig | dict) -> dict:
    """The config fields that make two models the same model: all but the implementation choices
    (attention, layer_norm), which compute the same function."""
    d = cfg.to_dict() if isinstance(cfg, RobertaConfig) else dict(cfg)
    return {k: v for k, v in d.items() if k not in ("attention", "layer_norm")}


def describe_source(cfg: RobertaConfig, sd: dict, info: dict | None, head: str) -> dict:
    """The metadata a file carries: what predict needs (config, task) and what identifies the
    weights it was exported from."""
    return {
        "config": json.dumps(cfg.to_dict(), sort_keys=True),
        "task": json.dumps(info or {}, sort_keys=True),
        "weights_sha256": weights_fingerprint(sd),
        "model_class": head,
        "outputs": ",".join(HEAD_OUTPUTS[head]),
    }


def set_metadata(graph, fields: dict) -> None:
    """Write fields into graph.metadata_props as roberta_scratch.KEY (replacing ours, keeping others)."""
    keep = [p for p in graph.metadata_props if not p.key.startswith(META)]
    del graph.metadata_props[:]
    for p in keep:
        graph.metadata_props.add(key=p.key, value=p.value)
    for k, v in fields.items():
        graph.metadata_props.add(key=META + k, value=str(v))


# --------------------------------------------------------------------------- export


@contextlib.contextmanager
def _traceable_inputs():
    """Swap model.check_inputs for its traceable part while exporting.

    check_inputs validates on the host (one .tolist(), then Python ifs on the values) and drops
    the mask when nothing is padded: data-dependent steps that a graph with dynamic shapes cannot
    hold. The graph always applies the mask (an all-ones mask changes nothing), and OnnxModel runs
    the real check_inputs before each call, so bad input still gets the same error."""
    saved = modeling.check_inputs
    modeling.check_inputs = lambda cfg, input_ids, attention_mask, token_type_ids=None: attention_mask == 1
    try:
        yield
    finally:
        modeling.check_inputs = saved


class _Graph(nn.Module):
    """model(input_ids, attention_mask) -> a tuple of the head's outputs: what the graph computes."""

    def __init__(self, model: nn.Module, outputs: tuple[str, ...]):
        super().__init__()
        self.model, self.outputs = model, outputs

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        out = self.model(input_ids, attention_mask=attention_mask)
        return tuple(getattr(out, name) for name in self.outputs)


def example_batch(cfg: RobertaConfig, lengths, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask): rows of <s> ids </s> then padding, with this config's ids."""
    return padded_batch(cfg.vocab_size, lengths, cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id, seed=seed)


def export_graph(model: nn.Module, opset: int = DEFAULT_OPSET):
    """The float model as an onnx.ModelProto with dynamic batch and sequence axes.

    torch.onnx.export(dynamo=True): the default exporter since torch 2.9, it traces with
    torch.export and translates through onnxscript; the TorchScript exporter it replaced is
    deprecated. Both axes are declared dynamic, sequence up to the position table's length."""
    require("onnxscript")
    require("onnx")
    import logging
    import warnings

    cfg = model.config
    if opset < 18:
        raise ValueError(f"opset {opset} is too old: torch's ONNX exporter writes opset 18 or newer")
    outputs = HEAD_OUTPUTS[type(model).__name__]
    # subtle: torch.export specialises an axis whose example size is 0 or 1, so the example has
    # two rows and a length of at least 2 (one row padded, so the mask is not constant-folded).
    T = min(8, cfg.max_tokens)
    if T < 3:
        raise ValueError(f"a model of {cfg.max_tokens} positions is too short to export with a dynamic length")
    ids, mask = example_batch(cfg, lengths=(T, T - 1), seed=0)
    batch, seq = torch.export.Dim("batch", min=1), torch.export.Dim("sequence", min=1, max=cfg.max_tokens)
    axes = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed", ...
    with _traceable_inputs(), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's notes on axis names and deprecations
        program = torch.onnx.export(
            _Graph(model.eval(), outputs),
            (ids, mask),
            dynamo=True,
            opset_version=opset,
            input_names=["input_ids", "attention_mask"],
            output_names=list(outputs),
            dynamic_shapes=axes,
            verbose=False,
        )
    graph = program.model_proto
    for name, dim in (("batch", 0), ("sequence", 1)):  # name the axes for the user, whatever the tracer chose
        for value in list(graph.graph.input) + list(graph.graph.output):
            shape = value.type.tensor_type.shape.dim
            if len(shape) > dim and not shape[dim].dim_value:
                shape[dim].dim_param = name
    return graph


# --------------------------------------------------------------------------- running


def read_metadata(path: str) -> dict:
    """Our metadata_props of an ONNX file (without the prefix); only the header is parsed."""
    onnx = require("onnx")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: write it with `roberta-scratch export --out {path}`")
    try:
        graph = onnx.load(path, load_external_data=False)
    except Exception as e:  # noqa: BLE001 (protobuf's DecodeError and friends)
        raise ValueError(f"{path} is not an ONNX file ({type(e).__name__}: {e})") from None
    meta = {p.key[len(META) :]: p.value for p in graph.metadata_props if p.key.startswith(META)}
    if "config" not in meta or "weights_sha256" not in meta:
        raise ValueError(f"{path} was not written by `roberta-scratch export` (it has no roberta_scratch metadata)")
    return meta


class OnnxModel:
    """An ONNX Runtime session with the call interface of our torch models.

    model(input_ids, attention_mask=mask) -> Output with the file's outputs (logits, or
    start_logits and end_logits, or last_hidden_state) as CPU torch tensors; .config is the
    config the file records. Inputs get the torch model's checks first (ids in range, a length
    the position table holds), so a bad batch is the same ValueError, not an ONNX Runtime error.
    """

    def __init__(self, path: str, device=None, threads: int | None = None):
        ort = require("onnxruntime")
        self.path = path
        self.meta = read_metadata(path)
        self.config = RobertaConfig.from_dict(json.loads(self.meta["config"]))
        self.task_info = json.loads(self.meta.get("task", "{}"))
        self.outputs = tuple(self.meta["outputs"].split(","))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 4  # its errors come back as exceptions; its notes are not the user's
        self.session = ort.InferenceSession(path, options, providers=_providers(ort, device))

    def check_source(self, cfg: RobertaConfig, sd: dict, folder: str) -> OnnxModel:
        """Refuse to run this file for a model folder whose weights or config are not the ones it
        was exported from (a folder fine-tuned again since, or another model)."""
        if weights_fingerprint(sd) != self.meta["weights_sha256"]:
            raise ValueError(
                f"{self.path} was exported from another model (its weights differ from {folder}'s): "
                f"export it again with `roberta-scratch export --model {folder} --out {self.path} --overwrite`"
            )
        mine, theirs = comparable_config(self.config), comparable_config(cfg)
        changed = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if changed:
            raise ValueError(
                f"{self.path} was exported from another model (config differs from {folder}'s in "
                f"{', '.join(changed)}): export it again with --overwrite"
            )
        return self

    def eval(self) -> OnnxModel:
        return self

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Output:
        check_inputs(self.config, input_ids, attention_mask)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        feed = {
            "input_ids": input_ids.detach().cpu().long().numpy(),
            "attention_mask": attention_mask.detach().cpu().long().numpy(),
        }
        values = self.session.run(list(self.outputs), feed)
        return Output(**{name: torch.from_numpy(v) for name, v in zip(self.outputs, values, strict=True)})


def _providers(ort, device) -> list[str]:
    """CPU, or CUDA where --device asks for it and this onnxruntime build has it."""
    kind = torch.device(device).type if device is not None else "cpu"
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    if kind == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise ValueError(
        f"this onnxruntime runs on {', '.join(ort.get_available_providers())}, not {device!r}: "
        "drop --device (or install onnxruntime-gpu for cuda)"
    )
