"""The kernel registry: variant checks at registration, autotune configs, private registries."""

from __future__ import annotations

import pytest
import triton
import triton.language as tl

from millkernels.analyze.registry import (
    Registry,
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


def test_package_kernels_register_on_import():
    reg = triton_kernels()
    assert not reg.import_errors, reg.import_errors
    assert reg.triton  # the op families' kernels, imported lazily or not
    for kernel in reg.triton.values():
        assert kernel.python_fn.__module__.startswith("millkernels.ops."), kernel.name
