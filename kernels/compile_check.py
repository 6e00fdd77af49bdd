"""Compile every kernel ahead of time, at the launchers' configurations, for given GPU architectures.

    python -m kernels.compile_check --arch 80 90

No GPU is needed: triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))
runs the whole pipeline down to a cubin with the ptxas that ships with
Triton. This catches what the interpreter forgives: layouts that do not fit,
shared memory beyond the card, register spills. For each kernel it prints
registers per thread, spill bytes and shared memory, and it exits non-zero
when a kernel fails to compile or spills.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from . import kernel_module

MODULES = ("flash_attention", "layernorm")
_FLOAT_ARGS = {"qk_scale", "sm_scale", "dropout_p", "eps"}  # every other non-pointer argument is i32
_PTXAS_STATS = re.compile(r"Used (\d+) registers")
_PTXAS_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


@dataclass
class Result:
    kernel: str
    variant: str
    registers: int = 0
    spill_bytes: int = 0
    shared_bytes: int = 0
    seconds: float = 0.0
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.spill_bytes == 0


def _signature(kernel, pointers: dict, constexprs: dict):
    """Triton signature and divisibility hints for one launch configuration.

    Pointers and strides are marked 16-divisible, as the runtime specialises
    them for the aligned, head-dim-multiple tensors the launchers pass.
    """
    signature, attrs = {}, {}
    for index, name in enumerate(kernel.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name] = pointers[name]
        elif name in _FLOAT_ARGS:
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
        if name in pointers or name.startswith("stride"):
            attrs[(index,)] = [["tt.divisibility", 16]]
    return signature, attrs


def _ptxas_stats(ptx: str, arch: int):
    """(registers, spill bytes) from `ptxas -v`, run as Triton runs it for this arch."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        proc = subprocess.run(
            [get_ptxas(arch).path, "-v", "--regAllocOptLevel=2", f"--gpu-name={sm_arch_from_capability(arch)}",
             str(src), "-o", str(Path(tmp) / "kernel.cubin")],
            capture_output=True, text=True, check=True)
    log = proc.stdout + proc.stderr
    registers = max(int(m) for m in _PTXAS_STATS.findall(log))
    spills = sum(int(a) + int(b) for a, b in _PTXAS_SPILLS.findall(log))
    return registers, spills


def compile_one(arch: int, spec) -> Result:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    variant, kernel, pointers, constexprs, options = spec
    result = Result(kernel.__name__, variant)
    try:
        signature, attrs = _signature(kernel, pointers, constexprs)
        compiled = triton.compile(
            ASTSource(kernel, signature, constexprs=constexprs, attrs=attrs),
            target=GPUTarget("cuda", arch, 32),
            options=options)
        result.shared_bytes = compiled.metadata.shared
        result.registers, result.spill_bytes = _ptxas_stats(compiled.asm["ptx"], arch)
    except Exception as exc:  # a compile failure is a result to report, not a crash
        result.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return result


def _compile_task(task) -> Result:
    """Worker entry point: (module, arch, spec index) -> Result. Specs are rebuilt
    in the worker because jitted kernels do not pickle."""
    module_name, arch, index = task
    spec = list(kernel_module(module_name, interpret=False).aot_specs(arch))[index]
    start = time.perf_counter()
    result = compile_one(arch, spec)
    result.seconds = time.perf_counter() - start
    return result


def check(arches, modules=MODULES, jobs=1, out=sys.stdout) -> list[Result]:
    """Compile every spec of every module for every arch, `jobs` at a time; print one line per kernel."""
    tasks = [(module_name, arch, index)
             for arch in arches
             for module_name in modules
             for index, _ in enumerate(kernel_module(module_name, interpret=False).aot_specs(arch))]
    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            results = pool.map(_compile_task, tasks)
    else:
        results = map(_compile_task, tasks)
    collected = []
    for (_, arch, _), result in zip(tasks, results):
        status = "ok" if result.ok else ("FAILED" if result.error else "SPILLS")
        print(f"sm_{arch} {result.kernel:<32} {result.variant:<35} regs {result.registers:>3}  "
              f"spill {result.spill_bytes:>5} B  smem {result.shared_bytes:>6} B  "
              f"{result.seconds:5.1f}s  {status}{'  ' + result.error if result.error else ''}",
              file=out, flush=True)
        collected.append(result)
    return collected


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90],
                        help="compute capabilities to compile for (default: 80 90)")
    parser.add_argument("--module", choices=MODULES, nargs="+", default=list(MODULES),
                        help="kernel modules to check (default: all)")
    parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1),
                        help="compilations run in parallel (default: min(4, CPU count))")
    args = parser.parse_args(argv)
    results = check(args.arch, args.module, args.jobs)
    bad = [r for r in results if not r.ok]
    print(f"{len(results) - len(bad)}/{len(results)} kernel configurations compiled without spills")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
