"""`make demo` from a fresh clone, timed as a user times it: the whole command, setup included.

    python -m benchmarks.bench_demo [--threads N] [--demo-args "--budget 300"] [--keep]

Clones this repository's committed HEAD into a new temporary folder (nothing uncommitted goes
with it), runs `make demo` there with its output streamed through, and records the wall time of
the whole command, the setup's share (until the demo's first line), the steps the demo chose
and the speed it measured, and the held-out masked accuracy it reached. The clone is deleted
afterwards unless --keep (it is a folder this script made, and nothing else is removed).

--threads N sets OMP_NUM_THREADS for the whole command. One thread of a 2-core AVX-512 EPYC
trains the demo at about the speed two threads of an AVX2 EPYC do (8.6 against 7.5 steps/s),
so `--threads 1` is a stand-in for a slower processor: labelled as such in the record, never
reported as that processor's figure.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks.common import print_table, write_result

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_demo(clone: str, env: dict, demo_args: str) -> dict:
    """Run `make demo` in `clone`, echoing its output; what it printed that the record needs."""
    command = ["make", "demo"] + ([f"DEMO_ARGS={demo_args}"] if demo_args else [])
    start = time.perf_counter()
    setup_s, lines = None, []
    with subprocess.Popen(
        command, cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            if setup_s is None and line.startswith("== 1/4"):
                setup_s = time.perf_counter() - start
            lines.append(line)
    total = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"make demo failed with exit status {proc.returncode}")
    setup = None if setup_s is None else round(setup_s, 1)  # None: the demo printed no "== 1/4" line
    return {"seconds": round(total, 1), "setup_seconds": setup, **summarize("".join(lines))}


def summarize(log: str) -> dict:
    """What the demo's log says it did: the steps it trained, the speed it measured when it chose
    them (None when --steps was given or a choice reused), the final held-out masked accuracy."""
    chose = re.search(r"chose [\d,]+ steps .*?: ([\d.]+) steps/s", log)
    accuracy = re.search(r"masked accuracy [\d.]+% -> ([\d.]+)%", log)
    steps = re.search(r"pretraining a tiny RoBERTa for (\d+) steps", log)
    return {
        "steps": int(steps.group(1)) if steps else None,
        "steps_per_s_measured": float(chose.group(1)) if chose else None,
        "masked_accuracy": round(float(accuracy.group(1)) / 100, 3) if accuracy else None,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the whole command (default: unset)")
    p.add_argument("--demo-args", default="", help='passed to the demo, e.g. "--budget 300"')
    p.add_argument("--keep", action="store_true", help="keep the clone (its path is printed)")
    args = p.parse_args(argv)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
    clone = tempfile.mkdtemp(prefix="bench-demo-")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    try:
        subprocess.run(["git", "clone", "--quiet", REPO, clone], check=True)
        row = run_demo(clone, env, args.demo_args)
    finally:
        if args.keep:
            print(f"the clone is kept in {clone}")
        else:
            shutil.rmtree(clone, ignore_errors=True)
    if args.threads:  # the machine record's GEMM rate is at torch's default threads: this one at --threads
        import torch

        from benchmarks.common import cpu_gemm_flops

        torch.set_num_threads(args.threads)
        gemm = {f"gemm_gflops_fp32_at_{args.threads}_threads": round(cpu_gemm_flops() / 1e9, 1)}
    row = {
        "task": "make demo from a fresh clone, setup included",
        "commit": head.stdout.strip()[:12],
        "threads": args.threads or "default",
        "stand_in": "1 thread: a stand-in for a slower processor" if args.threads == 1 else None,
        "demo_args": args.demo_args or None,
        **(gemm if args.threads else {}),
        **row,
    }
    print_table([row], ["task", "threads", "seconds", "setup_seconds", "steps", "masked_accuracy"])
    print("wrote", write_result("demo", [row]))


if __name__ == "__main__":
    main()
