"""The project installs beside current transformers and Hugging Face's `kernels` package.

transformers (5.25 on) requires HF's `kernels`, whose import name is `kernels`. Our Triton
package is `roberta_kernels`, in the folder kernels/ (which has no __init__.py). These tests
fail when the two collide: when ours shadows theirs (a script run from the repository root
that builds a transformers model), when theirs shadows ours (the console script, whose
sys.path[0] is the venv's bin/), and when a wheel install writes into their folder.
"""

from __future__ import annotations

import configparser
import importlib.metadata
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def hf_kernels_installed() -> bool:
    try:
        return importlib.metadata.distribution("kernels") is not None
    except importlib.metadata.PackageNotFoundError:
        return False


def run(args, cwd, env=None, timeout=300):
    """A command's completed process; its output is shown when it fails."""
    full = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only what the test puts there
    full.update(env or {})
    proc = subprocess.run(args, cwd=cwd, env=full, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} in {cwd} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


# One process does what a user does: our package with its Triton attention (the real kernels, in
# the interpreter), a transformers model built beside it, and `import kernels` answered by the
# package that owns the name. EXPECT_KERNELS is the folder that package's __init__.py must be in.
SCRIPT = textwrap.dedent("""
    import os, sys
    import torch
    import roberta_kernels, roberta_scratch
    from roberta_scratch import RobertaConfig, RobertaForMaskedLM
    with_transformers = not os.environ.get("NO_TRANSFORMERS")  # it needs the real HF kernels
    if with_transformers:
        import transformers
    import kernels

    want = os.environ["EXPECT_KERNELS"]
    assert os.path.dirname(os.path.abspath(kernels.__file__)) == want, (kernels.__file__, want)
    assert os.path.abspath(roberta_scratch.__file__).startswith(os.environ["EXPECT_OURS"]), roberta_scratch.__file__
    assert roberta_kernels.kernel_module("flash_attention").INTERPRETED
    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=60, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=96, attention="triton")
    model = RobertaForMaskedLM(cfg).eval()
    ids = torch.tensor([[0, 5, 9, 2, 1, 1], [0, 7, 8, 9, 10, 2]])
    out = model(ids, attention_mask=(ids != 1).long()).logits
    ref = RobertaForMaskedLM(cfg.replace(attention="eager")).eval()
    ref.load_state_dict(model.state_dict())
    want_logits = ref(ids, attention_mask=(ids != 1).long()).logits
    real = ids != 1  # a padded row may hold any finite value (roberta_kernels.registry's contract)
    assert torch.allclose(out[real], want_logits[real], atol=1e-4), (out - want_logits)[real].abs().max()
    if with_transformers:
        theirs = transformers.RobertaModel(transformers.RobertaConfig(
            vocab_size=60, hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=96))
        theirs.eval()(ids)
    print("OK", roberta_kernels.__file__, kernels.__file__)
""")


def hf_kernels_dir() -> str:
    dist = importlib.metadata.distribution("kernels")
    return os.path.dirname(os.path.abspath(dist.locate_file("kernels/__init__.py")))


def script_env(expect_kernels: str, expect_ours: str, **extra) -> dict:
    return {"EXPECT_KERNELS": expect_kernels, "EXPECT_OURS": expect_ours, "TRITON_INTERPRET": "1", **extra}


@pytest.mark.skipif(
    not hf_kernels_installed(),
    reason="Hugging Face's kernels package is not installed (transformers before 5.25 does not require it)",
)
@pytest.mark.parametrize("where", ["outside", "repo root"])
def test_hf_kernels_and_ours_in_one_process(where, tmp_path):
    cwd = REPO if where == "repo root" else tmp_path
    proc = run([sys.executable, "-c", SCRIPT], cwd, script_env(hf_kernels_dir(), str(REPO)))
    assert proc.stdout.startswith("OK")


def test_a_package_named_kernels_first_on_the_path_shadows_nothing_of_ours(tmp_path):
    """Whatever `kernels` is installed (HF's or anything else), ours is not affected: a stand-in
    first on sys.path, so this runs with or without HF's package."""
    site = tmp_path / "site"
    (site / "kernels").mkdir(parents=True)
    (site / "kernels" / "__init__.py").write_text("STAND_IN = True\n")
    proc = run(
        [sys.executable, "-c", SCRIPT + "assert kernels.STAND_IN\n"],
        REPO,
        script_env(str(site / "kernels"), str(REPO), PYTHONPATH=str(site), NO_TRANSFORMERS="1"),
    )
    assert proc.stdout.startswith("OK")


def test_nothing_is_importable_as_kernels_from_the_root_but_an_empty_folder():
    """kernels/ is a folder, not a package: from the root (on sys.path under pytest and python -m)
    it can only be a namespace, which any installed `kernels` beats, and our package refuses to
    load under its name."""
    assert not (REPO / "kernels" / "__init__.py").exists()
    assert not (REPO / "kernels.py").exists()
    code = textwrap.dedent("""
        import importlib.machinery, importlib.util, sys
        spec = importlib.machinery.PathFinder.find_spec("kernels", [sys.argv[1]])  # the root alone
        assert spec is not None and spec.origin is None, spec  # a namespace: a folder, no code of its own
        sys.modules["kernels"] = importlib.util.module_from_spec(spec)  # as if nothing else were installed
        try:
            import kernels.roberta_kernels
        except ImportError as e:
            assert "import roberta_kernels, not kernels.roberta_kernels" in str(e), e
        else:
            raise AssertionError("kernels.roberta_kernels imported")
        print("OK")
    """)
    proc = run([sys.executable, "-c", code, str(REPO)], REPO)
    assert proc.stdout.strip() == "OK"


@pytest.mark.parametrize("how", ["console script", "python -m"])
def test_the_commands_run_from_a_folder_outside_the_checkout(how, tmp_path):
    prefix = [str(BIN / "roberta-scratch")] if how == "console script" else [sys.executable, "-m", "roberta_scratch"]
    proc = run(prefix + ["inspect", "--config", "tiny"], tmp_path)
    assert "RoBERTa 2 layers, hidden 128" in proc.stdout
    proc = run(prefix + ["kernels", "check", "--help"], tmp_path)  # imports roberta_kernels.check
    assert "--attention" in proc.stdout


def test_setup_cfg_lists_every_package():
    """packages is a list (the kernels' folder is mapped), so a new subpackage must be added to it."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    mapping = dict(line.split("=", 1) for line in cfg["options"]["package_dir"].strip().splitlines())
    mapping = {k.strip(): v.strip() for k, v in mapping.items()}
    assert mapping == {"roberta_kernels": "kernels/roberta_kernels"}
    found = set()
    for top, folder in (
        ("roberta_scratch", REPO / "roberta_scratch"),
        ("roberta_kernels", REPO / mapping["roberta_kernels"]),
    ):
        for init in folder.rglob("__init__.py"):
            if "__pycache__" not in init.parts:
                rel = init.parent.relative_to(folder).parts
                found.add(".".join((top,) + rel))
    assert found == listed, f"setup.cfg's packages {sorted(listed)} != the packages on disk {sorted(found)}"


@pytest.mark.skipif(not hf_kernels_installed(), reason="Hugging Face's kernels package is not installed")
def test_a_wheel_install_beside_hf_kernels(tmp_path):
    """`pip install .` (not editable) into a throw-away venv whose other packages are the test venv's
    (a .pth file), then the same process and the console script, from outside and from the root."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("roberta_scratch", "kernels"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path)
    python = venv / "bin" / "python"
    run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(src)],
        tmp_path,
        timeout=600,
    )
    purelib = Path(
        run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).stdout.strip()
    )
    (purelib / "test-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    # what the wheel wrote: our two packages, never a `kernels/` that would land on HF's files
    record = next(purelib.glob("roberta_scratch-*.dist-info")) / "RECORD"
    tops = {line.split(",")[0].split("/")[0] for line in record.read_text().splitlines() if line}
    tops = {t for t in tops if not t.endswith(".dist-info") and not t.startswith("..")}
    assert tops == {"roberta_scratch", "roberta_kernels"}, tops
    assert not (purelib / "kernels").exists()

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = script_env(hf_kernels_dir(), str(purelib))
    assert run([str(python), "-c", SCRIPT], outside, env).stdout.startswith("OK")
    # from the root, the checkout's roberta_scratch comes first (sys.path[0]); roberta_kernels is the wheel's
    assert run([str(python), "-c", SCRIPT], REPO, {**env, "EXPECT_OURS": str(REPO)}).stdout.startswith("OK")
    for cwd in (outside, REPO):
        proc = run([str(venv / "bin" / "roberta-scratch"), "inspect", "--config", "tiny"], cwd)
        assert "RoBERTa 2 layers" in proc.stdout
