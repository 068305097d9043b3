"""Parsers of ptxas -v and SASS output, name demangling, limits and statuses."""

from __future__ import annotations

import pytest

from millkernels.analyze import tools
from millkernels.analyze.report import ARCHS, KernelReport, measured, parse_arch

PTXAS_LOG = """\
ptxas info    : 0 bytes gmem
ptxas info    : Function properties for _Z6helperv
    8 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Compiling entry function '_ZN2mk4copyEPfi' for 'sm_80'
ptxas info    : Function properties for _ZN2mk4copyEPfi
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 10 registers, used 0 barriers, 368 bytes cmem[0]
ptxas-blackwell info    : Compiling entry function 'mm' for 'sm_90a'
ptxas-blackwell info    : Function properties for mm
    48 bytes stack frame, 44 bytes spill stores, 52 bytes spill loads
ptxas-blackwell info    : Used 255 registers, used 1 barriers, 4096 bytes smem, 48 bytes cumul\
ative stack size
ptxas info    : Compile time = 18.259 ms
"""


def test_parse_ptxas_log():
    stats = tools.parse_ptxas_log(PTXAS_LOG)
    assert set(stats) == {"_ZN2mk4copyEPfi", "mm"}  # the device function is not an entry
    copy = stats["_ZN2mk4copyEPfi"]
    assert (copy.registers, copy.spill_stores, copy.spill_loads, copy.smem_bytes) == (10, 0, 0, 0)
    mm = stats["mm"]
    assert (mm.registers, mm.spill_stores, mm.spill_loads) == (255, 44, 52)
    assert (mm.smem_bytes, mm.stack_bytes) == (4096, 48)


SASS = """\
\tcode for sm_90a
\t\tFunction : mm
\t.headerflags\t@"EF_CUDA_TEXMODE_UNIFIED EF_CUDA_64BIT_ADDRESS EF_CUDA_SM90"
        /*0000*/                   LDC R1, c[0x0][0x28] ;          /* 0x00000a00ff017b82 */
        /*0aa0*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4].tnspB, RZ, !UPT ;
        /*0af0*/              @P0  HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4].tnspB, R24 ;
        /*0b00*/             @!UP1 UTMALDG.2D [UR8], [UR4] ;
        /*0b10*/                   EXIT ;
\t\tFunction : _Z4copyPfi
        /*0000*/                   HMMA.16816.F32.BF16 R32, R68.reuse, R52, RZ ;
        /*0010*/                   IMMA.16832.S8.S8 R8, R12, R16, R8 ;
"""


def test_parse_sass_counts_tensor_cores_and_tma_per_function():
    sass = tools.parse_sass(SASS)
    assert sass["mm"].tensor_core == {"HGMMA": 2}
    assert sass["mm"].tma
    assert sass["_Z4copyPfi"].tensor_core_ops == ["HMMA", "IMMA"]
    assert not sass["_Z4copyPfi"].tma


def test_parse_sass_nvdisasm_layout():
    text = (
        '\t.section\t.text.kern,"ax",@progbits\n.text.kern:\n'
        "  /*0010*/  QGMMA.64x64x32 R0, gdesc[UR4], R0 ;\n"
    )
    assert tools.parse_sass(text)["kern"].tensor_core == {"QGMMA": 1}


@pytest.mark.parametrize(
    ("demangled", "plain", "qualified", "targs"),
    [
        ("copy(float*, int)", "copy", "copy", ""),
        (
            "void mk::probes::copy_kernel<4>(uint4 const*, long)",
            "copy_kernel",
            "mk::probes::copy_kernel",
            "<4>",
        ),
        (
            "void mk::probes::(anonymous namespace)::check<2>(unsigned int const*, mk::X<1>*)",
            "check",
            "mk::probes::{anonymous}::check",
            "<2>",
        ),
        ("mm", "mm", "mm", ""),
    ],
)
def test_plain_name(demangled, plain, qualified, targs):
    assert tools.plain_name(demangled) == (plain, qualified)
    assert tools.template_args(demangled) == targs


def test_demangle_without_a_demangler(monkeypatch):
    monkeypatch.setattr(tools, "find_demangler", lambda: None)
    out = tools.demangle(["_Z4copyPfi", "_ZN2mk6probes4copyEPfi", "triton_kernel"])
    assert out == {
        "_Z4copyPfi": "copy",
        "_ZN2mk6probes4copyEPfi": "mk::probes::copy",
        "triton_kernel": "triton_kernel",
    }


def test_demangle_with_the_system_demangler():
    if tools.find_demangler() is None:
        pytest.skip("no c++filt / cu++filt here")
    assert tools.demangle(["_Z4copyPfi"]) == {"_Z4copyPfi": "copy(float*, int)"}


def test_parse_arch():
    assert parse_arch("sm_90") is ARCHS["sm_90"] is parse_arch("SM_90A")
    assert parse_arch("sm_80").capability == 80
    assert ARCHS["sm_90"].max_shared_per_block == 232448
    assert ARCHS["sm_80"].max_shared_per_block == 166912
    assert ARCHS["sm_90"].gpu_name == "sm_90a"
    with pytest.raises(ValueError, match="sm_70"):
        parse_arch("sm_70")


def _measure(**kw):
    args = dict(
        kernel="k",
        backend="triton",
        arch=ARCHS["sm_80"],
        variant="v",
        hot=True,
        source="m:k",
        registers=32,
        spill_stores=0,
        spill_loads=0,
        shared_bytes=0,
        tensor_core={},
        tma=False,
    )
    return measured(**{**args, **kw})


def test_status_rules():
    assert _measure().status == "ok" and not _measure().failed
    assert _measure(shared_bytes=166912).status == "ok"  # exactly the limit fits
    over = _measure(shared_bytes=166913)
    assert over.status == "smem_overflow" and over.failed and "166912" in over.reason
    sp = _measure(spill_stores=4, spill_loads=8)
    assert sp.status == "spills" and sp.spill_bytes == 12 and sp.failed
    both = _measure(spill_stores=4, shared_bytes=10**6)
    assert both.status == "smem_overflow" and "spills" in both.reason
    assert not _measure(spill_stores=4, hot=False).failed
    assert not KernelReport("k", "cuda", "sm_80", hot=True, status="skipped").failed
    assert KernelReport("k", "cuda", "sm_80", hot=True, status="error").failed


def test_tools_are_found_without_importing_triton():
    # Triton's wheel bundles ptxas and cuobjdump; the analysis relies on them being found
    import importlib.util

    if importlib.util.find_spec("triton") is None:
        pytest.skip("Triton is not installed")
    assert tools.find_tool("ptxas") is not None
    assert tools.find_tool("cuobjdump") is not None
