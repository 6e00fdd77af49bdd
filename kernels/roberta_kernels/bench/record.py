"""What a run was and where: the command as typed, the card, the versions, the peaks; and the files."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import sys

import torch

from .plots import plot_attention, plot_layer_norm


def versions() -> dict:
    """torch, triton, numpy and python versions; triton's and numpy's without importing them."""
    found = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    for name in ("triton", "numpy"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def environment(device=None) -> dict:
    """The one environment record every benchmark writes: the card (or CPU), the platform, the cores,
    and the library versions. A benchmark adds what only it knows (a CPU's measured GEMM rate, say)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if device is None else device
    return {
        "card": card_name(device),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        **versions(),
    }


def card_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"


def command_line() -> str:
    """The command as typed: `python -m roberta_kernels.bench ...` for a module, `python benchmarks/x.py
    ...` for a script, `roberta-scratch ...` for a console script."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        program = "python -m " + spec.name.removesuffix(".__main__")
    elif not sys.argv or not sys.argv[0]:
        program = "python"
    elif sys.argv[0].endswith(".py"):
        program = "python " + sys.argv[0]
    else:
        program = os.path.basename(sys.argv[0])
    return " ".join([program, *sys.argv[1:]])


def datasheet_peaks(args, card: str, dtype) -> dict:
    """The data-sheet peaks: the flags win, else args.card_peaks(card) when a caller set that hook."""
    tflops, gbs, source = args.peak_tflops, args.peak_gbs, "--peak-tflops/--peak-gbs"
    if (tflops is None or gbs is None) and args.card_peaks is not None and not args.dry_run:
        found = args.card_peaks(card)
        if found is not None:
            tflops = tflops if tflops is not None else (found[1] if dtype == torch.float32 else found[0])
            gbs = gbs if gbs is not None else found[2]
            source = "card_peaks(name)"
    if tflops is None and gbs is None:
        source = None
    return {"datasheet_tflops": tflops, "datasheet_gbs": gbs, "datasheet_source": source}


def jsonable(value):
    """NaN and infinities as strings (json.dump would write bare NaN, which is not JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def write_outputs(record: dict, out: str) -> list[str]:
    """DIR/results.json, DIR/attention.png and DIR/layernorm.png (when there are rows); the paths written."""
    os.makedirs(out, exist_ok=True)
    s = record["settings"]
    what = f"{record['card']}, {s['dtype_name']}, {s['tokens']} tokens" + (" (DRY RUN)" if record["dry_run"] else "")
    written, plots = [], {}
    try:
        if record["attention"]:
            path = os.path.join(out, "attention.png")
            plot_attention(
                record["attention"], path, f"attention: {what}, H={s['heads']}, D={s['head_dim']}", s["pad_seq_len"]
            )
            plots["attention"] = path
        if record["layer_norm"]:
            path = os.path.join(out, "layernorm.png")
            plot_layer_norm(
                record["layer_norm"],
                path,
                f"LN(dropout(x) + residual): {what} rows",
                record["peaks"].get("copy_gbs_measured"),
            )
            plots["layer_norm"] = path
    except ImportError as exc:  # matplotlib is optional: the numbers still land in results.json
        plots["skipped"] = f"no plots: {exc}"
    record["plots"] = plots
    path = os.path.join(out, "results.json")
    write_json(path, record)
    written.append(path)
    written += [p for k, p in plots.items() if k != "skipped"]
    return written


def write_json(path: str, record: dict) -> None:
    """`record` as JSON at `path`, written whole or not at all (a temporary file, then a rename)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(jsonable(record), f, indent=2, default=str)
    os.replace(tmp, path)
