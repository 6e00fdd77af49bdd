"""The package's shape: its layers, the one way imports run between them, no cycle, and kernels/ alone.

The layers, lowest first (a module imports only from its own layer or lower ones):

    base          errors, fileio, progress, machine, flops, config, testing     (flat)
    formats       tokenization/, checkpoints/keymaps, checkpoints/formats       what is on disk
    model         model, int8, onnx_model                                      (flat)
    foundations   training (the loop), run_args, run_files, reporting, plots, data/
                                                                                what every workflow builds on
    workflows     pretrain, probe, converge (flat); finetune/, checkpoints/converter
    applications  study/, demo, deploy/                                         workflows put together
    cli           cli, __main__

Within the workflow layer no workflow imports another: what two of them share lives lower down.
Function-local imports count: they are how a cycle hides.
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "roberta_scratch"

LAYERS = [
    ("base", {"errors", "fileio", "progress", "machine", "flops", "config", "testing"}),
    ("formats", {"tokenization", "checkpoints", "checkpoints.keymaps", "checkpoints.formats"}),
    ("model", {"model", "int8", "onnx_model", "lora"}),
    ("foundations", {"training", "run_args", "run_files", "reporting", "plots", "data"}),
    ("workflows", {"pretrain", "probe", "converge", "finetune", "checkpoints.converter"}),
    ("applications", {"study", "demo", "deploy", "serve"}),
    ("cli", {"cli", "__main__"}),
]


def unit(module: str) -> str:
    """The layer entry a dotted module belongs to: itself, or its subpackage."""
    for _, names in LAYERS:
        if module in names:
            return module
    top = module.split(".")[0]
    assert any(top in names for _, names in LAYERS), f"{module} is in no layer: add it to LAYERS"
    return top


def layer(module: str) -> int:
    return next(i for i, (_, names) in enumerate(LAYERS) if unit(module) in names)


def module_names(directory: Path) -> dict:
    """Dotted module name (relative to the package, "data.packed"; a subpackage's __init__ is "data")
    -> its path."""
    found = {}
    for path in directory.rglob("*.py"):
        parts = list(path.relative_to(directory).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            found[".".join(parts)] = path
    return found


def imported_modules(path: Path, me: str, package: str, modules: set, is_package: bool = False) -> set:
    """The modules of `package` that the file of module `me` imports, anywhere in it (function-local too)."""
    here = me.split(".") if is_package else me.split(".")[:-1]  # the package `from .` means
    found = set()

    def add(dotted: str, names=()):
        # `from x import y` imports x, and x.y when y is a module
        for name in names:
            if f"{dotted}.{name}".strip(".") in modules:
                found.add(f"{dotted}.{name}".strip("."))
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        if dotted:
            found.add(dotted)

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)] if node.level > 1 else list(here)
                dotted = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == package:
                dotted = node.module[len(package) + 1 :]
            else:
                continue
            add(dotted, [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == package:
                    add(alias.name[len(package) + 1 :])
    return found & modules


def import_graph(directory: Path) -> dict:
    paths = module_names(directory)
    graph = {}
    for m, path in paths.items():
        graph[m] = imported_modules(path, m, directory.name, set(paths), path.name == "__init__.py") - {m}
    return graph


def find_cycle(graph: dict):
    """One cycle as a list of modules (first == last), or None."""
    state = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def test_package_imports_form_no_cycle():
    graph = import_graph(PACKAGE)
    assert len(graph) > 30 and graph["model"] and graph["data.packed"]  # the parse found modules and imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"b"}}) is None


def test_function_local_and_subpackage_imports_are_seen(tmp_path):
    (tmp_path / "a.py").write_text("def f():\n    from .sub.b import x\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "__init__.py").write_text("")
    (tmp_path / "sub" / "b.py").write_text("from .. import a\n")
    graph = import_graph(tmp_path)
    assert graph["a"] == {"sub.b"} and graph["sub.b"] == {"a"}
    assert find_cycle(graph) == ["a", "sub.b", "a"]


def test_every_module_has_a_layer():
    for module in import_graph(PACKAGE):
        layer(module)  # raises, naming the module, when it has none


def test_imports_run_down_the_layers():
    """core <- workflows <- CLI: a module imports only from its own layer or lower ones."""
    upward = [
        f"{m} ({LAYERS[layer(m)][0]}) imports {t} ({LAYERS[layer(t)][0]})"
        for m, targets in import_graph(PACKAGE).items()
        for t in targets
        if layer(t) > layer(m)
    ]
    assert not upward, upward


def test_no_workflow_imports_another():
    """Two workflows share only what lies below them (the model, the training loop, data/, formats)."""
    workflows = dict(LAYERS)["workflows"]
    crossing = [
        f"{m} imports {t}"
        for m, targets in import_graph(PACKAGE).items()
        for t in targets
        if unit(m) in workflows and unit(t) in workflows and unit(m) != unit(t)
    ]
    assert not crossing, crossing


@pytest.mark.parametrize(
    "module, forbidden",
    [
        ("model", "tokenization.byte_level"),  # the model loads no tokenizer
        ("checkpoints.formats", "tokenization.byte_level"),
        ("checkpoints.keymaps", "checkpoints.formats"),  # key maps are pure: state dict -> state dict
        ("tokenization.base", "tokenization.byte_level"),  # the base knows no kind of tokenizer
        ("tokenization.spm", "tokenization.byte_level"),
        ("data.masking", "tokenization.byte_level"),  # word starts come from whatever tokenizer is given
        ("finetune.readers", "training"),  # the readers raise their errors without the trainer
        ("study.report", "training"),
        ("errors", "training"),
        ("machine", "training"),
        ("demo", "cli"),
    ],
)
def test_the_layering_the_design_asks_for(module, forbidden):
    graph = import_graph(PACKAGE)
    seen, todo = set(), [module]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    assert forbidden not in seen, f"{module} reaches {forbidden}"


def test_reading_a_config_imports_no_kernel_registry():
    """config.py checks kernel names as strings; the model resolves them (an import for MODULE:FUNCTION),
    so reading a config.json can never import a module it names."""
    tree = ast.parse((PACKAGE / "config.py").read_text(encoding="utf-8"))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {m for m in imported if m.split(".")[0] in ("roberta_kernels", "importlib", "model")}, imported


def test_kernels_never_import_the_package():
    paths = list((REPO / "kernels" / "roberta_kernels").rglob("*.py"))
    assert len(paths) > 5
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0]
        assert not [n for n in names if n.split(".")[0] == "roberta_scratch"], path.name


MAX_FUNCTION_LINES = 80


def long_functions(roots: list) -> list:
    """(lines, "path:function") of every function over MAX_FUNCTION_LINES lines, Triton kernels
    (@triton.jit: one kernel is one GPU program, split only at a cost) excepted."""
    found = []
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                if any("jit" in ast.unparse(d) for d in node.decorator_list):
                    continue
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    found.append((lines, f"{path.relative_to(root.parent).as_posix()}:{node.name}"))
    return found


def test_no_function_is_longer_than_80_lines():
    roots = [PACKAGE, REPO / "kernels" / "roberta_kernels", REPO / "benchmarks"]
    assert not long_functions(roots), sorted(long_functions(roots), reverse=True)


def test_the_length_check_sees_long_functions_and_spares_kernels(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "m.py").write_text(f"def long():\n{body}\n\n\n@triton.jit\ndef kernel():\n{body}\n")
    assert long_functions([tmp_path]) == [(MAX_FUNCTION_LINES + 1, f"{tmp_path.name}/m.py:long")]
