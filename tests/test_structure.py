"""The package's shape: imports between its modules form no cycle, and kernels/ stands alone.

Function-local imports count: they are how a cycle hides."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "roberta_scratch"


def imported_modules(path: Path, package: str, modules: set) -> set:
    """The modules of `package` that the file at `path` imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:  # from . import x / from .x import y
                base = node.module
            elif node.level == 0 and node.module and node.module.split(".")[0] == package:
                base = node.module[len(package) + 1 :] or None
            else:
                continue
            if base is None:  # from . import a, b: each name is a module
                found.update(alias.name for alias in node.names if alias.name in modules)
            else:
                found.add(base.split(".")[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == package and len(parts) > 1:
                    found.add(parts[1])
    return found & modules


def import_graph(directory: Path) -> dict:
    modules = {p.stem for p in directory.glob("*.py") if p.stem != "__init__"}
    return {m: imported_modules(directory / f"{m}.py", directory.name, modules) - {m} for m in modules}


def find_cycle(graph: dict):
    """One cycle as a list of modules (first == last), or None."""
    state = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
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
    assert len(graph) > 20 and graph["model"]  # the parse found the modules and their imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"b"}}) is None


def test_function_local_imports_are_seen(tmp_path):
    (tmp_path / "a.py").write_text("def f():\n    from .b import x\n")
    (tmp_path / "b.py").write_text("from . import a\n")
    assert find_cycle(import_graph(tmp_path)) == ["a", "b", "a"]


def test_the_layering_the_design_asks_for():
    graph = import_graph(PACKAGE)

    def reaches(a, b, seen=None):
        seen = seen if seen is not None else set()
        return b in graph[a] or any(reaches(n, b, seen) for n in graph[a] - seen if not seen.add(n))

    assert not reaches("convert", "checkpoint") and not reaches("checkpoint", "model")  # files below models
    assert not reaches("model", "cli") and not reaches("model", "training")
    assert not reaches("tokenizer_base", "tokenizer") and not reaches("spm_tokenizer", "tokenizer")
    assert not reaches("masking", "tokenizer") and not reaches("demo", "cli")
    # the model loads no tokenizer; the data readers raise their errors without the trainer
    assert not reaches("model", "tokenizer") and not reaches("checkpoint", "tokenizer")
    assert not reaches("finetune_data", "training") and not reaches("study_report", "training")
    assert not reaches("errors", "training") and not reaches("machine", "training")


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
