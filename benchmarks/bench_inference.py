"""CPU inference of every deployment path, against transformers and ONNX Runtime: speed, size, memory.

    python -m benchmarks.bench_inference [--shapes tiny small base] [--repeats 5]
        [--accuracy RUN/downstream/best --train TRAIN.jsonl --test TEST.jsonl]

One process, the same inputs for everyone, round-robin, medians. Each shape is a
sequence-classification model (10 labels) with random weights, written once in every form:

  ours fp32          RobertaForSequenceClassification, eager PyTorch (SDPA attention)
  ours int8          `roberta-scratch quantize` (dynamic int8, int8.py)
  ours pruned        a third of the heads of every layer removed (deploy.prune.prune_heads)
  ours onnx fp32     `roberta-scratch export`, run in ONNX Runtime
  ours onnx int8     `roberta-scratch export --int8` (ONNX Runtime's dynamic quantizer)
  hf fp32            transformers' RobertaForSequenceClassification with the same weights
  hf int8            the same int8 recipe (every Linear -> int8.Int8Linear) applied to transformers'
  hf onnx int8       transformers' model exported by torch.onnx and quantized by ONNX Runtime

The inputs are padded batches of real sequence lengths: the token counts of the standard
library's docstrings (the study's task; counted with the roberta-base tokenizer when
ROBERTA_REFERENCE_DIR names it, else estimated as characters / 4), drawn with a fixed seed:
latency at batch 1 (a different input each call), throughput at batches of 8 and 32, and the
fixed 32 x 128 batch the issue's targets name. Peak memory is each path's own: a fresh child
process loads it and runs the 32 x 128 batch once (its maximum resident set size).

With --accuracy, a fine-tuned model (the study's docstring -> package task) is scored in every
form of ours on TEST: fp32, int8, pruned by head importance (with and without a recovery
fine-tune on TRAIN), ONNX fp32 and int8. Results go to benchmarks/results/inference_cpu_<date>.json.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile

import torch

from benchmarks.common import print_table, time_interleaved, write_result
from roberta_scratch import RobertaConfig, RobertaForSequenceClassification

NUM_LABELS = 10
CASES = [("latency", 1, "mix"), ("throughput", 8, "mix"), ("throughput", 32, "mix"), ("throughput", 32, 128)]
PRUNE_FRACTION = 1 / 3


# --------------------------------------------------------------------------- inputs


def docstring_lengths(limit: int) -> tuple[list[int], str]:
    """Token counts of the stdlib docstrings (capped at `limit`), and how they were counted."""
    from roberta_scratch.data.corpus import default_corpus

    texts = list(default_corpus())
    ref = os.environ.get("ROBERTA_REFERENCE_DIR")
    if ref:
        from roberta_scratch import ByteLevelBPETokenizer

        tok = ByteLevelBPETokenizer.from_pretrained(ref)
        counts, how = [len(tok.encode(t)) for t in texts], "roberta-base tokenizer"
    else:
        counts, how = [len(t) // 4 + 2 for t in texts], "characters / 4"
    return [max(3, min(c, limit)) for c in counts], how


def make_batches(cfg: RobertaConfig, lengths: list[int], batch: int, length, n: int, seed: int = 0) -> list:
    """n padded batches (ids, mask): lengths drawn from `lengths` ("mix") or all equal to `length`."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        sizes = [rng.choice(lengths) if length == "mix" else length for _ in range(batch)]
        T = max(sizes)
        ids = torch.randint(4, cfg.vocab_size, (batch, T), generator=g)
        mask = torch.zeros(batch, T, dtype=torch.long)
        for i, s in enumerate(sizes):
            mask[i, :s] = 1
            ids[i, 0], ids[i, s - 1] = cfg.bos_token_id, cfg.eos_token_id
            ids[i, s:] = cfg.pad_token_id
        out.append((ids, mask))
    return out


# --------------------------------------------------------------------------- the forms of one model


def write_forms(shape: str, root: str) -> RobertaConfig:
    """Every form of one random seq-cls model under `root` (see the module docstring)."""
    import transformers

    from roberta_scratch.deploy.export import export as export_onnx
    from roberta_scratch.deploy.prune import prune_heads
    from roberta_scratch.deploy.quantize import quantize

    cfg = RobertaConfig.preset(shape, num_labels=NUM_LABELS)
    torch.manual_seed(0)
    hf = transformers.RobertaForSequenceClassification(transformers.RobertaConfig(**cfg.to_hf_dict())).eval()
    hf.save_pretrained(f"{root}/hf")
    ours = RobertaForSequenceClassification.from_pretrained(f"{root}/hf", attention="sdpa").eval()
    ours.save_pretrained(f"{root}/ours")
    _save_any_tokenizer(f"{root}/ours")
    quantize(f"{root}/ours", f"{root}/int8")
    # Speed depends on the shape alone: drop the same count of heads from every layer (a third).
    # Which heads importance would pick is measured with --accuracy, on a trained model.
    gone = round(cfg.num_attention_heads * PRUNE_FRACTION)
    prune_heads(ours, {i: list(range(gone)) for i in range(cfg.num_hidden_layers)}).save_pretrained(f"{root}/pruned")
    export_onnx(f"{root}/ours", f"{root}/ours.onnx")
    export_onnx(f"{root}/ours", f"{root}/ours.int8.onnx", int8=True)
    _export_hf_int8(hf, cfg, f"{root}/hf.onnx", f"{root}/hf.int8.onnx")
    return cfg


def _save_any_tokenizer(path: str) -> None:
    """The commands want a tokenizer beside the weights; ids here are random, so a tiny one does."""
    from roberta_scratch import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer.train(iter(["the cat sat on the mat"] * 4), vocab_size=270, show_progress=False)
    tok.save_pretrained(path)


def _export_hf_int8(hf, cfg: RobertaConfig, fp32_path: str, int8_path: str) -> None:
    """transformers' model through torch.onnx and onnxruntime.quantization, the usual route."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ids = torch.randint(4, cfg.vocab_size, (2, 16))
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    dims = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}
    torch.onnx.export(
        hf,
        (),
        fp32_path,
        kwargs={"input_ids": ids, "attention_mask": mask},
        input_names=["input_ids", "attention_mask"],
        output_names=["logits"],
        dynamic_axes=dims,
        dynamo=False,
    )
    quantize_dynamic(fp32_path, int8_path, weight_type=QuantType.QInt8, per_channel=True)


FORMS = [
    *("ours fp32", "ours int8", "ours pruned", "ours onnx fp32", "ours onnx int8"),
    *("hf fp32", "hf int8", "hf onnx int8"),
]


def load_form(name: str, root: str):
    """A callable (ids, mask) -> logits for one form, and its size on disk in bytes. Each form
    imports only what it needs, so that a child process's peak memory is that form's own."""

    def torch_model(model):
        def run(ids, mask):
            with torch.inference_mode():
                return model(ids, attention_mask=mask).logits

        return run

    if name.startswith("ours") and "onnx" not in name:
        folder = {"ours fp32": "ours", "ours int8": "int8", "ours pruned": "pruned"}[name]
        model = RobertaForSequenceClassification.from_pretrained(f"{root}/{folder}", attention="sdpa").eval()
        return torch_model(model), os.path.getsize(f"{root}/{folder}/model.safetensors")
    if "onnx" in name:
        path = {"ours onnx fp32": "ours.onnx", "ours onnx int8": "ours.int8.onnx", "hf onnx int8": "hf.int8.onnx"}[name]
        return _ort_runner(f"{root}/{path}"), os.path.getsize(f"{root}/{path}")
    import transformers

    from roberta_scratch.int8 import swap_linears

    hf = transformers.RobertaForSequenceClassification.from_pretrained(f"{root}/hf", attn_implementation="sdpa").eval()
    size = os.path.getsize(f"{root}/hf/model.safetensors")
    if name == "hf int8":
        swap_linears(hf, {"method": "dynamic-int8"}, from_float=True)
        size = _state_dict_bytes(hf)
    return (lambda ids, mask: torch_model(hf)(ids, mask)), size


def _state_dict_bytes(model) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{tmp}/m.safetensors")
        return os.path.getsize(f"{tmp}/m.safetensors")


def _ort_runner(path: str):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    output = session.get_outputs()[0].name

    def run(ids, mask):
        return torch.from_numpy(session.run([output], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0])

    return run


# --------------------------------------------------------------------------- measuring


def measure_shape(shape: str, repeats: int, lengths: list[int]) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as root:
        cfg = write_forms(shape, root)
        forms = {name: load_form(name, root) for name in FORMS}
        ids, mask = make_batches(cfg, lengths, 4, "mix", 1, seed=99)[0]
        ref = forms["ours fp32"][0](ids, mask)
        agree = {n: _agreement(ref, run(ids, mask), mask) for n, (run, _) in forms.items()}
        for kind, batch, length in CASES:
            batches = make_batches(cfg, lengths, batch, length, n={1: 8, 8: 2}.get(batch, 1))
            tokens = sum(int(m.sum()) for _, m in batches)  # real tokens, not padding
            calls = {n: _cycle(run, batches) for n, (run, _) in forms.items()}
            t = time_interleaved(calls, repeats)
            for n in FORMS:
                per_call = t[n] / len(batches)
                rows.append(
                    {
                        "shape": shape,
                        "form": n,
                        "case": f"{kind} {batch} x {length}",
                        "ms_per_batch": 1e3 * per_call,
                        "real_tokens_per_s": tokens / t[n],
                        "vs_ours_fp32": t["ours fp32"] / t[n],
                        "vs_hf_fp32": t["hf fp32"] / t[n],
                        "size_mb": forms[n][1] / 1e6,
                        **agree[n],
                    }
                )
            ratios = ", ".join(f"{n} {t['ours fp32'] / t[n]:.2f}x" for n in FORMS)
            print(f"{shape} {kind} {batch} x {length} (vs ours fp32): {ratios}", flush=True)
        peaks = {n: _peak_memory_mb(n, root, cfg) for n in FORMS}
    for r in rows:
        r["peak_rss_mb"] = peaks[r["form"]]
    return rows


def _cycle(run, batches):
    def call():
        for ids, mask in batches:
            run(ids, mask)

    return call


def _agreement(ref: torch.Tensor, out: torch.Tensor, mask) -> dict:
    """How far a form's logits are from ours fp32 on one padded batch (same random weights)."""
    return {
        "max_abs_diff_vs_ours_fp32": (ref - out).abs().max().item(),
        "same_argmax": bool((ref.argmax(-1) == out.argmax(-1)).all()),
    }


def _peak_memory_mb(name: str, root: str, cfg: RobertaConfig) -> float:
    """Peak RSS of a fresh process that loads one form and runs one 32 x 128 batch.

    subtle: VmHWM from /proc, not getrusage's ru_maxrss, which a child inherits across exec from
    this (large) parent process."""
    code = (
        "import torch; from benchmarks.bench_inference import load_form, make_batches;"
        "from roberta_scratch import RobertaConfig;"
        f"torch.set_num_threads({torch.get_num_threads()});"
        f"cfg = RobertaConfig.load({root + '/ours'!r}); run, _ = load_form({name!r}, {root!r});"
        "ids, mask = make_batches(cfg, [128], 32, 128, 1)[0]; run(ids, mask);"
        "print(next(line for line in open('/proc/self/status') if line.startswith('VmHWM')))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return int(done.stdout.split()[-2]) / 1024  # "VmHWM:  123456 kB"


def score_accuracy(model: str, train: str, test: str) -> list[dict]:
    """Accuracy on `test` of every form of ours made from the fine-tuned `model`."""
    import json

    from roberta_scratch import cli
    from roberta_scratch.deploy.export import export as export_onnx
    from roberta_scratch.deploy.quantize import quantize
    from roberta_scratch.finetune.predict import predict

    lines = open(test, encoding="utf-8").read().splitlines()
    gold = [json.loads(line)["label"] for line in lines]
    cfg = RobertaConfig.load(model)
    heads = cfg.num_hidden_layers * cfg.num_attention_heads
    fraction = max(1, round(heads * PRUNE_FRACTION)) / heads
    rows = []
    with tempfile.TemporaryDirectory() as root:
        quantize(model, f"{root}/int8")
        prune = ["prune", "--model", model, "--heads-by-importance", f"{fraction:.4f}", "--data", train]
        assert cli.main([*prune, "--out", f"{root}/pruned"]) == 0
        assert cli.main([*prune, "--out", f"{root}/pruned-tuned", "--finetune-epochs", "1", "--train", train]) == 0
        export_onnx(model, f"{root}/model.onnx")
        export_onnx(model, f"{root}/model.int8.onnx", int8=True)
        forms = {  # name: (folder, predict's options, the weights' file)
            "ours fp32": (model, {}, f"{model}/model.safetensors"),
            "ours int8": (f"{root}/int8", {}, f"{root}/int8/model.safetensors"),
            f"ours pruned ({fraction:.0%} of heads)": (f"{root}/pruned", {}, f"{root}/pruned/model.safetensors"),
            f"ours pruned ({fraction:.0%}) + 1 epoch": (
                f"{root}/pruned-tuned",
                {},
                f"{root}/pruned-tuned/model.safetensors",
            ),
        }
        for name, file in (("ours onnx fp32", "model.onnx"), ("ours onnx int8", "model.int8.onnx")):
            forms[name] = (model, {"backend": "onnx", "onnx": f"{root}/{file}"}, f"{root}/{file}")
        for name, (path, kw, weights) in forms.items():
            labels = [r["label"] for r in predict(path, lines, **kw)]
            right = sum(a == b for a, b in zip(labels, gold, strict=True))
            size = os.path.getsize(weights) / 1e6
            rows.append({"form": name, "accuracy": right / len(gold), "examples": len(gold), "size_mb": size})
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shapes = ["tiny", "small", "base"]
    p.add_argument("--shapes", nargs="*", default=shapes, help="presets to time (none: accuracy only)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds; the median counts (default 5)")
    p.add_argument("--accuracy", default=None, help="a fine-tuned seq-cls model folder to score in every form")
    p.add_argument("--train", default=None, help="its training file (head importance, recovery fine-tune)")
    p.add_argument("--test", default=None, help="its test file (JSON lines with text and label)")
    args = p.parse_args(argv)
    lengths, counted = docstring_lengths(512)
    rows = []
    for shape in args.shapes:
        rows += measure_shape(shape, args.repeats, lengths)
    accuracy = score_accuracy(args.accuracy, args.train, args.test) if args.accuracy else None
    print()
    if rows:
        columns = ["shape", "case", "form", "ms_per_batch", "vs_ours_fp32", "vs_hf_fp32", "size_mb", "peak_rss_mb"]
        print_table(rows, columns)
    if accuracy:
        print()
        print_table(accuracy, ["form", "accuracy", "examples", "size_mb"])
    extra = {"threads": torch.get_num_threads(), "lengths_counted_with": counted, "accuracy": accuracy}
    print(f"\nwrote {write_result('inference_cpu', rows, extra)}")


if __name__ == "__main__":
    main()
