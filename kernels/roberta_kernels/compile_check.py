"""Compile every kernel ahead of time, at the launchers' configurations, for given GPU architectures.

    python -m roberta_kernels.compile_check --arch 80 90
    python -m roberta_kernels.compile_check --arch 90 --report --json report.json --only "_attn_fwd_kernel D=64 bf16"

No GPU is needed: triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))
runs the whole pipeline down to a cubin with the ptxas that ships with
Triton. This catches what the interpreter forgives: layouts that do not fit,
shared memory beyond the card, register spills. For each kernel it prints
registers per thread, spill bytes and shared memory, and it exits non-zero
when a kernel fails to compile or spills (with or without --report).

--report adds what the compiled code says about speed, read from the PTX:

    mma         tensor-core instructions: wgmma.mma_async (Hopper) and mma.sync
                (Ampere), counted over the whole kernel;
    loads       how tiles reach shared memory: cp.async copies (cp.async.ca/cg)
                and TMA copies (cp.async.bulk.tensor), whole kernel, with the
                mbarrier instructions that track the TMA copies (mbar);
    main loop   the innermost loop (a label and a later branch back to it,
                containing no other such loop) with the most mma instructions;
                among equals, the one with the fewest instructions, which is
                the steady-state loop when a kernel splits its loop into a
                masked and an unmasked part;
    instr       PTX instructions in the main loop, from its label to its
                back-branch inclusive, counted statically: every statement
                ending in ';' except directives (.loc, .reg, ...), labels and
                inline-asm braces; both sides of a branch inside the loop count;
    cmp/sel     the setp and selp instructions among them;
    instr/elem  instr * threads / elements: the instructions the whole
                program issues per loop iteration, divided by the elements one
                iteration processes. threads = num_warps * 32; elements =
                BLOCK_M * BLOCK_N (one score tile in attention, one tile of
                rows by features in layer norm) or BLOCK where a kernel has a
                single block size. Lower is better; the Triton tutorial's
                Hopper attention forward is ~7.7 (sm_90, bf16, D=64).

--json FILE writes every result, these fields included, as a JSON list.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from . import kernel_module

MODULES = ("flash_attention", "layernorm")
_FLOAT_ARGS = {"qk_scale", "sm_scale", "dropout_p", "eps"}  # every other non-pointer argument is i32
_PTXAS_STATS = re.compile(r"Used (\d+) registers")
_PTXAS_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_PTX_LABEL = re.compile(r"^(\$L__BB\d+_\d+):")
_PTX_BRANCH = re.compile(r"\bbra(?:\.uni)?\s+(\$L__BB\d+_\d+);")
_PTX_MMA = re.compile(r"\b(?:wgmma\.mma_async|mma\.sync)\b")


@dataclass
class Result:
    kernel: str
    variant: str
    registers: int = 0
    spill_bytes: int = 0
    shared_bytes: int = 0
    seconds: float = 0.0
    error: str = ""
    arch: int = 0
    # --report: what the PTX says (see the module docstring)
    wgmma: int = 0
    mma_sync: int = 0
    cp_async: int = 0
    tma: int = 0
    mbarrier: int = 0
    loop_instructions: int = 0
    loop_compare_select: int = 0
    threads: int = 0
    elements: int = 0
    instructions_per_element: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.error and self.spill_bytes == 0


def _signature(kernel, pointers: dict, constexprs: dict, divisible=None):
    """Triton signature and divisibility hints for one launch configuration.

    Pointers are marked 16-divisible, as the runtime specialises them for the
    aligned tensors the launchers pass; so are the integer arguments named in
    `divisible`, the ones the runtime sees as multiples of 16 for this
    variant (a spec's optional sixth entry), and without it every stride_*
    (attention's strides are multiples of the head dim).
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
        if name in pointers or (name.startswith("stride") if divisible is None else name in divisible):
            attrs[(index,)] = [["tt.divisibility", 16]]
    return signature, attrs


def _ptxas_stats(ptx: str, arch: int):
    """(registers, spill bytes) from `ptxas -v`, run as Triton runs it for this arch."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        proc = subprocess.run(
            [
                get_ptxas(arch).path,
                "-v",
                "--regAllocOptLevel=2",
                f"--gpu-name={sm_arch_from_capability(arch)}",
                str(src),
                "-o",
                str(Path(tmp) / "kernel.cubin"),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    log = proc.stdout + proc.stderr
    registers = max(int(m) for m in _PTXAS_STATS.findall(log))
    spills = sum(int(a) + int(b) for a, b in _PTXAS_SPILLS.findall(log))
    return registers, spills


def _ptx_statements(lines):
    """The PTX instructions among `lines`: statements ending in ';', less directives, labels and braces."""
    for line in lines:
        text = line.split("//")[0].strip()
        if text.endswith(";") and not text.startswith((".", "{", "}", "$")):
            yield text


def _opcode(statement: str) -> str:
    """The opcode of a PTX statement, past its guard predicate if it has one (`@%p3 bra ...` -> `bra`)."""
    words = statement.split()
    return words[1] if words[0].startswith("@") and len(words) > 1 else words[0]


def _main_loop(ptx_lines):
    """(first, last) line indices of the main loop (see the module docstring), or None without a loop."""
    labels = {}
    loops = []
    for index, line in enumerate(ptx_lines):
        label = _PTX_LABEL.match(line)
        if label:
            labels[label.group(1)] = index
        branch = _PTX_BRANCH.search(line.split("//")[0])
        if branch and branch.group(1) in labels:  # a branch back to an earlier label closes a loop
            loops.append((labels[branch.group(1)], index))
    innermost = [(a, b) for a, b in loops if not any(a <= c and d <= b and (c, d) != (a, b) for c, d in loops)]
    if not innermost:
        return None

    def rank(loop):
        body = list(_ptx_statements(ptx_lines[loop[0] : loop[1] + 1]))
        return (-sum(bool(_PTX_MMA.search(text)) for text in body), len(body))

    return min(innermost, key=rank)


def ptx_report(result: Result, ptx: str, elements: int, threads: int) -> None:
    """Fill result's --report fields from the kernel's PTX."""
    statements = list(_ptx_statements(ptx.splitlines()))
    opcodes = [_opcode(text) for text in statements]
    result.wgmma = sum(op.startswith("wgmma.mma_async") for op in opcodes)
    result.mma_sync = sum(op.startswith("mma.sync") for op in opcodes)
    result.cp_async = sum(op.startswith(("cp.async.ca.", "cp.async.cg.")) for op in opcodes)
    result.tma = sum(op.startswith("cp.async.bulk.tensor") for op in opcodes)
    result.mbarrier = sum(op.startswith("mbarrier.") for op in opcodes)
    result.threads, result.elements = threads, elements
    lines = ptx.splitlines()
    loop = _main_loop(lines)
    if loop is not None:
        body = list(_ptx_statements(lines[loop[0] : loop[1] + 1]))
        result.loop_instructions = len(body)
        result.loop_compare_select = sum(_opcode(text).startswith(("setp.", "selp.")) for text in body)
        result.instructions_per_element = round(len(body) * threads / elements, 2) if elements else 0.0


def _elements(constexprs: dict) -> int:
    """Elements one loop iteration processes: BLOCK_M * BLOCK_N, or the single BLOCK (see the docstring)."""
    count = 1
    for name in ("BLOCK_M", "BLOCK_N", "BLOCK"):
        count *= constexprs.get(name, 1)
    return count


def compile_one(arch: int, spec) -> Result:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    variant, kernel, pointers, constexprs, options, *divisible = spec
    result = Result(kernel.__name__, variant, arch=arch)
    try:
        signature, attrs = _signature(kernel, pointers, constexprs, *divisible)
        compiled = triton.compile(
            ASTSource(kernel, signature, constexprs=constexprs, attrs=attrs),
            target=GPUTarget("cuda", arch, 32),
            options=options,
        )
        result.shared_bytes = compiled.metadata.shared
        result.registers, result.spill_bytes = _ptxas_stats(compiled.asm["ptx"], arch)
        ptx_report(result, compiled.asm["ptx"], _elements(constexprs), 32 * options["num_warps"])
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


def _selected(spec, only) -> bool:
    """Whether spec's "kernel variant" contains every one of the substrings `only`."""
    name = f"{spec[1].__name__} {spec[0]}"
    return all(part in name for part in only)


def check(arches, modules=MODULES, jobs=1, out=sys.stdout, only=()) -> list[Result]:
    """Compile every spec of every module for every arch, `jobs` at a time; print one line per kernel.

    only: substrings that "kernel variant" must all contain (default: every spec).
    """
    tasks = [
        (module_name, arch, index)
        for arch in arches
        for module_name in modules
        for index, spec in enumerate(kernel_module(module_name, interpret=False).aot_specs(arch))
        if _selected(spec, only)
    ]
    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            results = pool.map(_compile_task, tasks)
    else:
        results = map(_compile_task, tasks)
    collected = []
    for (_, arch, _), result in zip(tasks, results, strict=True):
        status = "ok" if result.ok else ("FAILED" if result.error else "SPILLS")
        print(
            f"sm_{arch} {result.kernel:<32} {result.variant:<35} regs {result.registers:>3}  "
            f"spill {result.spill_bytes:>5} B  smem {result.shared_bytes:>6} B  "
            f"{result.seconds:5.1f}s  {status}{'  ' + result.error if result.error else ''}",
            file=out,
            flush=True,
        )
        collected.append(result)
    return collected


def print_report(results, out=sys.stdout) -> None:
    """The --report table: one line per kernel configuration (columns: see the module docstring)."""
    print(
        f"\n{'arch':<5} {'kernel':<32} {'variant':<35} {'regs':>4} {'smem':>6} {'wgmma':>5} {'mma':>4} "
        f"{'cp.as':>5} {'tma':>4} {'mbar':>4} {'instr':>5} {'cmp/sel':>7} {'instr/elem':>10}",
        file=out,
    )
    for r in results:
        per_element = f"{r.instructions_per_element:10.2f}" if r.loop_instructions else f"{'-':>10}"
        print(
            f"sm_{r.arch:<2} {r.kernel:<32} {r.variant:<35} {r.registers:>4} {r.shared_bytes:>6} {r.wgmma:>5} "
            f"{r.mma_sync:>4} {r.cp_async:>5} {r.tma:>4} {r.mbarrier:>4} {r.loop_instructions:>5} "
            f"{r.loop_compare_select:>7} "
            f"{per_element}",
            file=out,
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--arch", type=int, nargs="+", default=[80, 90], help="compute capabilities to compile for (default: 80 90)"
    )
    parser.add_argument(
        "--module", choices=MODULES, nargs="+", default=list(MODULES), help="kernel modules to check (default: all)"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="compilations run in parallel (default: min(4, CPU count))",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        default=[],
        metavar="TEXT",
        help='compile only the specs whose "kernel variant" contains every TEXT',
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="also print mma, cp.async/TMA and main-loop instruction counts (see the module doc)",
    )
    parser.add_argument("--json", metavar="FILE", help="write every result as a JSON list to FILE")
    args = parser.parse_args(argv)
    results = check(args.arch, args.module, args.jobs, only=args.only)
    if args.report:
        print_report(results)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    bad = [r for r in results if not r.ok]
    print(f"{len(results) - len(bad)}/{len(results)} kernel configurations compiled without spills")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
