"""Capability tables: auto order, named backends, reasons, and the environment override."""

import pytest

from millkernels import dispatch
from millkernels.dispatch import BackendSpec, BackendUnavailable, CapabilityTable


@pytest.fixture
def table():
    t = CapabilityTable(
        family="_test_family",
        backends=(
            BackendSpec("cuda", "sm_90", ("bf16",), available=lambda: "no GPU here"),
            BackendSpec(
                "triton",
                "any",
                ("bf16", "fp16"),
                serves=lambda c: None if c["dtype"] != "fp32" else "fp32 is not supported",
            ),
            BackendSpec("reference", "any", ("any",)),
        ),
        auto_rule="test",
    )
    yield t
    dispatch.TABLES.pop("_test_family")


def test_auto_takes_first_that_serves(table):
    assert table.select("auto", {"dtype": "bf16"}) == "triton"
    assert table.select("auto", {"dtype": "fp32"}) == "reference"


def test_named_backend_raises_with_reason(table):
    with pytest.raises(BackendUnavailable, match="'cuda' cannot serve _test_family.op: no GPU"):
        table.select("cuda", {"dtype": "bf16"}, "op")
    with pytest.raises(BackendUnavailable, match="fp32 is not supported"):
        table.select("triton", {"dtype": "fp32"})
    assert table.select("reference", {"dtype": "fp32"}) == "reference"


def test_bad_backend_argument(table):
    with pytest.raises(ValueError, match="backend: expected 'auto' or one of"):
        table.select("cublas", {})
    with pytest.raises(TypeError, match="backend: expected a str"):
        table.select(None, {})


def test_no_backend_at_all_lists_every_reason():
    t = CapabilityTable(
        family="_none",
        backends=(BackendSpec("cuda", "", (), available=lambda: "reason one"),),
        auto_rule="",
    )
    try:
        with pytest.raises(BackendUnavailable, match="no backend can serve _none: cuda: reason"):
            t.select("auto", {})
    finally:
        dispatch.TABLES.pop("_none")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ("", "triton"),
        ("reference", "reference"),
        ("_test_family=reference", "reference"),
        ("other=cuda", "triton"),
        ("cuda,_test_family=reference", "reference"),
        ("_test_family=auto", "triton"),
    ],
)
def test_env_override(table, monkeypatch, env, expected):
    monkeypatch.setenv("MILLKERNELS_BACKEND", env)
    assert table.select("auto", {"dtype": "bf16"}) == expected


def test_env_override_never_falls_back(table, monkeypatch):
    monkeypatch.setenv("MILLKERNELS_BACKEND", "cuda")
    with pytest.raises(BackendUnavailable, match="forced by MILLKERNELS_BACKEND"):
        table.select("auto", {"dtype": "bf16"})


def test_env_override_must_be_a_backend(table, monkeypatch):
    monkeypatch.setenv("MILLKERNELS_BACKEND", "fast")
    with pytest.raises(ValueError, match="MILLKERNELS_BACKEND='fast'"):
        table.select("auto", {"dtype": "bf16"})


def test_unknown_backend_in_table_is_rejected():
    with pytest.raises(ValueError, match="unknown backend 'cudnn'"):
        CapabilityTable(family="_bad", backends=(BackendSpec("cudnn", "", ()),), auto_rule="")


def test_every_family_registers_a_table():
    from millkernels.ops import tables as all_tables

    tables = all_tables()
    assert "probes" in tables
    for table in tables.values():
        assert table.backends[-1].name == "reference", "reference is every family's last resort"
        assert table.auto_rule
