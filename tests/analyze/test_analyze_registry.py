"""The kernel registry: variant checks at registration, autotune configs, private registries,
and collecting the kernel modules' ``ANALYSIS`` declarations."""

from __future__ import annotations

import sys
import types

import pytest
import triton
import triton.language as tl

from millkernels.analyze import registry as registry_module
from millkernels.analyze.registry import (
    CudaHot,
    Registry,
    TritonAnalysis,
    TritonVariant,
    current_registry,
    python_function,
    register_cuda_hot,
    register_triton,
    triton_kernels,
    use_registry,
    variants_from_configs,
)


@triton.jit
def _scale(x_ptr, n, factor, BLOCK: tl.constexpr, EVEN: tl.constexpr = True):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=offs < n) * factor, mask=offs < n)


_CONFIGS = [
    triton.Config({"BLOCK": 256}, num_warps=2, num_stages=2),
    triton.Config({"BLOCK": 1024}, num_warps=8, num_stages=4),
]


@triton.autotune(configs=_CONFIGS, key=["n"])
@triton.jit
def _scale_tuned(x_ptr, n, factor, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=offs < n) * factor, mask=offs < n)


SIG = {"x_ptr": "*fp32", "n": "i32", "factor": "fp32"}


def test_variant_is_completed_in_argument_order():
    reg = Registry()
    reg.register_triton("t.scale", _scale, [TritonVariant(SIG, {"BLOCK": 128})])
    (v,) = reg.triton["t.scale"].variants
    assert list(v.signature) == ["x_ptr", "n", "factor", "BLOCK", "EVEN"]
    assert v.signature["BLOCK"] == v.signature["EVEN"] == "constexpr"
    assert v.constexprs == {"BLOCK": 128, "EVEN": True}  # EVEN from its default
    assert v.describe() == "BLOCK=128 w4 s3"


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        (TritonVariant({"x_ptr": "*fp32", "n": "i32"}, {"BLOCK": 1}), "factor has no type"),
        (TritonVariant({**SIG, "nope": "i32"}, {"BLOCK": 1}), "no such kernel argument"),
        (TritonVariant(SIG, {}), "BLOCK has no value"),
        (TritonVariant({**SIG, "BLOCK": "i32"}, {"BLOCK": 1}), "constexpr value and type"),
        (TritonVariant(SIG, {"BLOCK": 1}, divisible_by_16=["BLOCK"]), "divisible_by_16"),
    ],
)
def test_bad_variants_raise_at_registration(variant, message):
    with pytest.raises(ValueError, match=message):
        Registry().register_triton("t.bad", _scale, [variant])


def test_names_are_unique():
    reg = Registry()
    reg.register_triton("t.k", _scale, [TritonVariant(SIG, {"BLOCK": 128})])
    reg.register_triton("t.k", _scale, [TritonVariant(SIG, {"BLOCK": 256})])  # re-import: ok
    assert reg.triton["t.k"].variants[0].constexprs["BLOCK"] == 256
    with pytest.raises(ValueError, match="already taken"):
        reg.register_triton("t.k", _scale_tuned, [TritonVariant(SIG, {"BLOCK": 1})])
    with pytest.raises(ValueError, match="at least one"):
        reg.register_triton("t.empty", _scale, [])


def test_variants_from_autotune_configs():
    variants = variants_from_configs(
        _scale_tuned.configs,
        SIG,
        min_arch=lambda cfg: 90 if cfg.kwargs["BLOCK"] > 512 else 80,
    )
    assert [(v.constexprs, v.num_warps, v.num_stages, v.min_arch) for v in variants] == [
        ({"BLOCK": 256}, 2, 2, 80),
        ({"BLOCK": 1024}, 8, 4, 90),
    ]
    reg = Registry()
    reg.register_triton("t.tuned", _scale_tuned, variants, hot=True)
    kernel = reg.triton["t.tuned"]
    assert kernel.hot and len(kernel.variants) == 2
    assert kernel.python_fn.__name__ == "_scale_tuned"


def test_python_function_unwraps_every_wrapper():
    # JITFunction, or InterpretedFunction under TRITON_INTERPRET=1, possibly autotuned
    assert python_function(_scale).__name__ == "_scale"
    assert python_function(_scale_tuned).__qualname__ == "_scale_tuned"
    with pytest.raises(TypeError):
        python_function(42)


def test_use_registry_keeps_the_package_registry_clean():
    package = current_registry()
    with use_registry() as reg:
        assert current_registry() is reg is not package
        register_triton("t.private", _scale, [TritonVariant(SIG, {"BLOCK": 64})])
        register_cuda_hot("my_kernel", "ns::other")
        assert triton_kernels() is reg  # no package kernels imported into it
    assert current_registry() is package
    assert "t.private" in reg.triton and "t.private" not in package.triton
    assert reg.cuda_hot == {"my_kernel", "ns::other"}
    assert "my_kernel" not in package.cuda_hot
    with pytest.raises(ValueError):
        Registry().register_cuda_hot("")


def test_package_kernels_are_collected_from_their_modules():
    reg = triton_kernels()
    assert not reg.import_errors, reg.import_errors
    assert reg.triton  # the op families' kernels, imported lazily or not
    for kernel in reg.triton.values():
        assert kernel.python_fn.__module__.startswith("millkernels.ops."), kernel.name
    declared = {
        entry.name
        for name, module in sys.modules.items()
        if name.startswith("millkernels.ops.")
        for entry in getattr(module, "ANALYSIS", ())
        if isinstance(entry, TritonAnalysis)
    }
    assert declared == set(reg.triton)
    assert {"decode_split_kernel", "one_shot_kernel", "copy_kernel"} <= reg.cuda_hot


def test_collect_records_each_kind_of_entry():
    reg = Registry()
    reg.collect(
        (
            TritonAnalysis("t.scale", _scale, [TritonVariant(SIG, {"BLOCK": 32})], hot=True),
            CudaHot(("one_kernel", "ns::two")),
        )
    )
    assert reg.triton["t.scale"].hot and reg.triton["t.scale"].variants[0].constexprs["BLOCK"] == 32
    assert reg.cuda_hot == {"one_kernel", "ns::two"}


@pytest.mark.parametrize(
    ("analysis", "error", "match"),
    [
        ((TritonVariant(SIG, {"BLOCK": 32}),), TypeError, "entries are TritonAnalysis or CudaHot"),
        ("copy_kernel", TypeError, "a tuple of TritonAnalysis / CudaHot"),
        ((TritonAnalysis("t.s", _scale, [TritonVariant(SIG, {})]),), ValueError, "BLOCK"),
    ],
)
def test_collect_rejects_bad_declarations(analysis, error, match):
    with pytest.raises(error, match=match):
        Registry().collect(analysis, "m.ANALYSIS")


def test_declarations_reject_bad_fields():
    with pytest.raises(TypeError, match="kernels is a tuple"):
        CudaHot("copy_kernel")
    with pytest.raises(ValueError, match="name"):
        TritonAnalysis("", _scale, [TritonVariant(SIG, {"BLOCK": 32})])


def test_a_bad_declaration_is_reported_not_raised(monkeypatch):
    fresh = Registry()
    monkeypatch.setattr(registry_module, "_DEFAULT", fresh)
    monkeypatch.setattr(registry_module, "_ACTIVE", [fresh])
    good = types.ModuleType("millkernels.ops.fake_good")
    good.ANALYSIS = (TritonAnalysis("t.good", _scale, [TritonVariant(SIG, {"BLOCK": 32})]),)
    bad = types.ModuleType("millkernels.ops.fake_bad")
    bad.ANALYSIS = (CudaHot(("",)),)
    monkeypatch.setitem(sys.modules, good.__name__, good)
    monkeypatch.setitem(sys.modules, bad.__name__, bad)
    reg = triton_kernels()
    assert reg is fresh and "t.good" in reg.triton
    assert "kernel names are non-empty" in reg.import_errors["millkernels.ops.fake_bad"]
