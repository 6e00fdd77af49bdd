"""The kernel lab's documented commands (docs/kernel-lab.md), run as written (their bracketed options included: --quick,
--dry-run, the CPU's choices), with a `my_pkg/attn.py` of the README's shape in a temp folder."""

import re
import sys
from pathlib import Path

import pytest

from roberta_kernels import registry
from roberta_scratch import cli

README = Path(__file__).resolve().parents[1] / "docs" / "kernel-lab.md"  # the kernel lab's page
MY_PKG = """\
import roberta_kernels


@roberta_kernels.register("attention", "mine", description="the README's example")
def flash(q, k, v, key_padding_mask=None, dropout_p=0.0, softmax_scale=None):
    from roberta_kernels.registry import eager_attention

    return eager_attention(q, k, v, key_padding_mask, dropout_p, softmax_scale)
"""


def readme_commands() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### The kernel lab") : text.index("### On a lent GPU")]
    return [line.strip() for line in section.splitlines() if line.startswith("    roberta-scratch kernels ")]


@pytest.fixture
def my_pkg(tmp_path, monkeypatch):
    """my_pkg.attn importable, in a registry of its own (its "mine" must not outlive the test)."""
    package = tmp_path / "site" / "my_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "attn.py").write_text(MY_PKG)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(registry, "_REGISTRY", {op: dict(impls) for op, impls in registry._REGISTRY.items()})
    monkeypatch.chdir(tmp_path)
    yield
    for name in ("my_pkg.attn", "my_pkg"):
        sys.modules.pop(name, None)


def test_the_readme_shows_the_three_commands():
    assert [c.split()[2] for c in readme_commands()] == ["check", "converge", "bench"]


@pytest.mark.parametrize("command", readme_commands(), ids=lambda c: c.split()[2])
def test_each_kernel_lab_command_in_the_readme_runs_as_written(command, my_pkg, capsys):
    argv = re.sub(r"\[([^\]]*)\]", r"\1", command).split()[1:]  # the options in brackets, as written
    assert cli.main(argv) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    if argv[1] == "converge":
        assert "OK: the curves agree at every step" in out
    else:  # the function resolved to its registered entry, capabilities and all
        assert "mine" in out


def test_a_name_a_module_registers_resolves_before_the_module_on_the_line(my_pkg, capsys):
    """`kernels check --attention mine my_pkg.attn:flash` said "unknown attention implementation
    'mine'": names were resolved in order, before the module that registers it was imported."""
    assert cli.main(["kernels", "check", "--attention", "mine", "my_pkg.attn:flash", "--quick"]) == 0
    assert "unknown" not in capsys.readouterr().err


def test_the_console_script_finds_my_pkg_in_the_current_folder(tmp_path):
    """`roberta-scratch` (the console script) starts its sys.path at the venv's bin/, so a
    my_pkg/ beside the user was not found, while `python -m roberta_scratch` found it."""
    import os
    import subprocess

    (tmp_path / "my_pkg").mkdir()
    (tmp_path / "my_pkg" / "__init__.py").write_text("")
    (tmp_path / "my_pkg" / "attn.py").write_text(MY_PKG)
    script = Path(sys.executable).parent / "roberta-scratch"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [str(script), "kernels", "check", "--attention", "my_pkg.attn:flash", "--quick"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "attention mine on cpu" in proc.stdout and "PASS" in proc.stdout
