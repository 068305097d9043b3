"""The public import surface: documented namespaces, ``dir(millkernels)``, ``--version``, and
op families that load on first use, each on its own."""

import importlib
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import millkernels
from millkernels.cli import app

NAMESPACES = ("comm", "probes", "quant", "runtime")


@pytest.mark.parametrize("name", NAMESPACES)
def test_namespace_is_one_module_however_it_is_reached(name):
    via_import = importlib.import_module(f"millkernels.{name}")  # import millkernels.<name>
    via_attribute = getattr(millkernels, name)  # millkernels.<name>
    scope: dict = {}
    exec(f"import millkernels.{name} as m\nfrom millkernels.{name} import *", scope)
    assert via_import is via_attribute is scope["m"] is sys.modules[f"millkernels.{name}"]
    for public in getattr(via_import, "__all__", ()):
        assert scope[public] is getattr(via_import, public)  # from millkernels.<name> import f


def test_documented_spellings_reach_the_family_functions():
    from millkernels.comm import all_reduce
    from millkernels.ops import comm, probes
    from millkernels.probes import pattern_test

    assert all_reduce is comm.all_reduce
    assert pattern_test is probes.pattern_test
    assert millkernels.comm.CustomAllReduce is comm.CustomAllReduce


def test_dir_lists_the_public_names_only():
    names = dir(millkernels)
    assert names == sorted(millkernels.__all__)
    assert {"attention", "comm", "probes", "quant", "runtime", "__version__"} <= set(names)
    for private in ("Any", "importlib", "annotations"):
        assert private not in names
    for name in names:
        assert getattr(millkernels, name) is not None


def test_public_functions_and_exception():
    from millkernels.dispatch import BackendUnavailable
    from millkernels.ops.attention import attention

    assert millkernels.attention is attention
    assert millkernels.BackendUnavailable is BackendUnavailable
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        _ = millkernels.nope


def test_version_option_prints_the_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"millkernels {millkernels.__version__}"


@pytest.mark.parametrize("family", ["attention", "comm", "probes", "quant"])
def test_importing_one_family_loads_no_other(family):
    """Op families load on first use: one family's import brings in none of the others, nor
    ``torch._dynamo`` (about a second; torch.compile loads it when it is used)."""
    code = (
        "import importlib, sys\n"
        f"importlib.import_module('millkernels.ops.{family}')\n"
        "fams = ('attention', 'comm', 'probes', 'quant')\n"
        "print(sorted(f for f in fams if 'millkernels.ops.' + f in sys.modules))\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    loaded, dynamo = out.stdout.split("\n")[:2]
    assert loaded == repr([family])
    assert dynamo == "False"


def test_public_quant_namespace_loads_no_other_family():
    code = (
        "import sys, millkernels.quant\n"
        "print([m for m in sys.modules if m.split('.')[:3] in (['millkernels', 'ops', 'attention'],"
        " ['millkernels', 'ops', 'comm'], ['millkernels', 'ops', 'probes'])])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_constant_under_compile_sets_the_torch_mark(monkeypatch):
    """The mark torch.compiler.assume_constant_result sets is the one dispatch sets without
    importing torch._dynamo (a torch that changes it fails here, not silently)."""
    import torch

    from millkernels.dispatch import constant_under_compile

    def ours():
        return 1

    def theirs():
        return 1

    import torch._dynamo

    with monkeypatch.context() as m:
        m.delitem(sys.modules, "torch._dynamo")
        assert constant_under_compile(ours) is ours
    assert torch.compiler.assume_constant_result(theirs) is theirs
    marks = {k for k in vars(theirs) if "constant" in k}
    assert marks and all(vars(ours).get(k) == vars(theirs)[k] for k in marks)
