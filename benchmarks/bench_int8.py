"""Which int8 route `quantize` should run on: the candidates layer by layer, then whole models.

    python -m benchmarks.bench_int8 [--repeats 7] [--tokens 4096]

Part 1, one `base` feed-forward (768 -> 3072 -> GELU -> 768) on `--tokens` tokens, each route
against fp32 in the same process, round-robin:
  torch.ao dynamic     torch.ao.quantization.quantize_dynamic (deprecated: it says so)
  torchao dynamic      torchao's Int8DynamicActivationInt8WeightConfig, eager (if torchao is
                       installed: `pip install torchao -c constraints.txt`)
  ours dynamic         int8.Int8Linear, torch's quantized engine as int8.py picks it
  ours weight-only     int8.Int8Linear, int8 weights turned back into float
Part 2, a `base` classifier at 32 x 128: ours int8 against transformers' with the same recipe
(every Linear -> Int8Linear), both fp32 beside them. Ratios are what counts on a shared machine.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import warnings

import torch

from benchmarks.common import print_table, time_interleaved, write_result
from roberta_scratch import RobertaConfig, RobertaForSequenceClassification
from roberta_scratch.int8 import Int8Linear, _engine, swap_linears


def feed_forward_routes() -> dict:
    """name -> module: the fp32 feed-forward and each int8 route made from it."""
    torch.manual_seed(0)
    ffn = torch.nn.Sequential(torch.nn.Linear(768, 3072), torch.nn.GELU(), torch.nn.Linear(3072, 768)).eval()
    routes = {"fp32": ffn}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notice; the table says it
        routes["torch.ao dynamic"] = torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(ffn), {torch.nn.Linear}, dtype=torch.qint8
        )
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        routes["torchao dynamic"] = copy.deepcopy(ffn)
        quantize_(routes["torchao dynamic"], Int8DynamicActivationInt8WeightConfig())
    except ImportError:
        print("torchao is not installed: its row is skipped (pip install torchao -c constraints.txt)")
    for name, dynamic in (("ours dynamic", True), ("ours weight-only", False)):
        routes[name] = torch.nn.Sequential(
            Int8Linear.from_float(ffn[0], dynamic), torch.nn.GELU(), Int8Linear.from_float(ffn[2], dynamic)
        ).eval()
    return routes


def run_layers(tokens: int, repeats: int) -> list[dict]:
    routes = feed_forward_routes()
    x = torch.randn(tokens, 768)
    with torch.inference_mode():
        ref = routes["fp32"](x)
        t = time_interleaved({n: (lambda m=m: m(x)) for n, m in routes.items()}, repeats)
        return [
            {
                "part": "feed-forward",
                "route": n,
                "ms": 1e3 * t[n],
                "vs_fp32": t["fp32"] / t[n],
                "max_abs_err": (m(x) - ref).abs().max().item(),
            }
            for n, m in routes.items()
        ]


def run_models(repeats: int) -> list[dict]:
    import transformers

    cfg = RobertaConfig.preset("base", num_labels=10)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        transformers.RobertaForSequenceClassification(transformers.RobertaConfig(**cfg.to_hf_dict())).save_pretrained(d)
        hf = transformers.RobertaForSequenceClassification.from_pretrained(d, attn_implementation="sdpa").eval()
        ours = RobertaForSequenceClassification.from_pretrained(d, attention="sdpa").eval()
    models = {"ours fp32": ours, "hf fp32": hf}
    models["ours int8"] = swap_linears(copy.deepcopy(ours), {"method": "dynamic-int8"}, from_float=True)
    models["hf int8"] = swap_linears(copy.deepcopy(hf), {"method": "dynamic-int8"}, from_float=True)
    ids = torch.randint(4, cfg.vocab_size, (32, 128))
    mask = torch.ones_like(ids)

    def call(m):
        def fn():
            with torch.inference_mode():
                m(input_ids=ids, attention_mask=mask)

        return fn

    t = time_interleaved({n: call(m) for n, m in models.items()}, repeats)
    return [
        {"part": "base 32 x 128", "route": n, "ms": 1e3 * t[n], "vs_fp32": t[n.replace("int8", "fp32")] / t[n]}
        for n in models
    ] + [{"part": "base 32 x 128", "route": "ours int8 / hf int8", "vs_fp32": t["hf int8"] / t["ours int8"]}]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7, help="timed rounds; the median counts (default 7)")
    p.add_argument("--tokens", type=int, default=4096, help="tokens through the feed-forward (default 4096)")
    args = p.parse_args(argv)
    rows = run_layers(args.tokens, args.repeats) + run_models(args.repeats)
    print_table(rows, ["part", "route", "ms", "vs_fp32", "max_abs_err"])
    engine = {"engine": _engine()[0], "threads": torch.get_num_threads()}
    print(f"\nwrote {write_result('int8_cpu', rows, engine)}")


if __name__ == "__main__":
    main()
