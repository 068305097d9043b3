"""Every op family has the same files with the same roles (README.md, "Layout")."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import pytest

import millkernels.ops as ops_pkg
from millkernels.dispatch import CallFacts, CapabilityTable
from millkernels.ops import FAMILIES
from millkernels.ops.custom_op import FamilyOp

TEMPLATE = ("__init__.py", "api.py", "capabilities.py", "custom_ops.py", "reference.py")
OPS_DIR = Path(ops_pkg.__file__).parent


def test_every_family_directory_is_listed():
    on_disk = sorted(p.name for p in OPS_DIR.iterdir() if (p / "__init__.py").is_file())
    assert on_disk == sorted(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_has_the_template_files(family):
    missing = [name for name in TEMPLATE if not (OPS_DIR / family / name).is_file()]
    assert not missing, f"ops/{family} lacks {missing}"


@pytest.mark.parametrize("family", FAMILIES)
def test_capabilities_hold_the_table_and_typed_facts(family):
    caps = importlib.import_module(f"millkernels.ops.{family}.capabilities")
    assert isinstance(caps.TABLE, CapabilityTable)
    assert caps.TABLE.family == family
    assert callable(caps.call_facts)
    facts = [
        v
        for v in vars(caps).values()
        if isinstance(v, type) and issubclass(v, CallFacts) and v is not CallFacts
    ]
    assert facts, f"ops/{family}/capabilities.py defines no CallFacts subclass"
    for cls in facts:
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen


@pytest.mark.parametrize("family", FAMILIES)
def test_custom_ops_are_family_ops(family):
    mod = importlib.import_module(f"millkernels.ops.{family}.custom_ops")
    found = [v for v in vars(mod).values() if isinstance(v, FamilyOp)]
    assert found, f"ops/{family}/custom_ops.py registers no op through family_op"
    for op in found:
        assert op.op._qualname.startswith("millkernels::"), op.op._qualname
