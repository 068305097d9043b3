"""The NVIDIA command-line tools the analysis runs, and parsers for what they print.

Tools are looked up without importing Triton: Triton's own copies first (its wheel bundles
``ptxas``, ``cuobjdump`` and ``nvdisasm`` under ``triton/backends/nvidia/bin``, and the
``TRITON_<TOOL>_PATH`` variables override them, as in Triton), then ``PATH``, then
``$CUDA_HOME/bin``. ``nvcc`` comes from ``PATH`` or ``$CUDA_HOME``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

#: Opcodes of TMA bulk copies (Hopper+): tensor-map loads/stores/prefetch and bulk copies.
TMA_PREFIXES = ("UTMALDG", "UTMASTG", "UTMAPF", "UTMAREDG", "UBLKCP", "UBLKRED", "UBLKPF")


def _cuda_home_bins() -> list[Path]:
    homes = [os.environ.get(k) for k in ("CUDA_HOME", "CUDA_PATH")] + ["/usr/local/cuda"]
    return [Path(h) / "bin" for h in homes if h]


@functools.cache
def triton_bin_dir() -> Path | None:
    """``triton/backends/nvidia/bin`` of the installed Triton (found without importing it)."""
    try:
        spec = importlib.util.find_spec("triton")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "backends" / "nvidia" / "bin"
        if d.is_dir():
            return d
    return None


def _executable(p: Path | str | None) -> str | None:
    if p and Path(p).is_file() and os.access(p, os.X_OK):
        return str(p)
    return None


def tool_candidates(name: str, *, prefer_triton: bool = True) -> list[str]:
    """Every executable copy of an NVIDIA tool found, in order of preference, without repeats.

    ``prefer_triton``: Triton's copies first (right for Triton's own cubins); else the CUDA
    toolkit's first (right for nvcc's cubins, which a Triton-bundled tool older than nvcc
    may not read).
    """
    triton_side: list[Path | str | None] = [
        os.environ.get(f"TRITON_{name.upper().replace('-', '_')}_PATH")
    ]
    if (tb := triton_bin_dir()) is not None:
        triton_side.append(tb / name)
    toolkit_side: list[Path | str | None] = [shutil.which(name)]
    toolkit_side += [d / name for d in _cuda_home_bins()]
    nvcc = shutil.which("nvcc")
    if nvcc:
        toolkit_side.append(Path(os.path.realpath(nvcc)).parent / name)
    ordered = triton_side + toolkit_side if prefer_triton else toolkit_side + triton_side
    out: list[str] = []
    for c in ordered:
        found = _executable(c)
        if found and os.path.realpath(found) not in {os.path.realpath(o) for o in out}:
            out.append(found)
    return out


def find_tool(name: str, *, prefer_triton: bool = True) -> str | None:
    """Path of an NVIDIA tool (``ptxas``, ``cuobjdump``, ``nvdisasm``, ...) or None."""
    found = tool_candidates(name, prefer_triton=prefer_triton)
    return found[0] if found else None


def find_nvcc() -> str | None:
    """``nvcc`` from ``PATH`` or ``$CUDA_HOME/bin``; None when there is none."""
    for c in [shutil.which("nvcc"), *[d / "nvcc" for d in _cuda_home_bins()]]:
        if found := _executable(c):
            return found
    return None


def find_demangler() -> str | None:
    """``cu++filt`` (next to nvcc or on PATH), else ``c++filt``; None when neither exists."""
    nvcc = find_nvcc()
    cands: list[Path | str | None] = [shutil.which("cu++filt")]
    if nvcc:
        cands.append(Path(os.path.realpath(nvcc)).parent / "cu++filt")
        cands.append(Path(nvcc).parent / "cu++filt")
    cands.append(shutil.which("c++filt"))
    for c in cands:
        if found := _executable(c):
            return found
    return None


def run(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run a tool, capturing text output; never raises for a non-zero exit."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


# ---------------------------------------------------------------------------- ptxas -v


@dataclass
class PtxasStats:
    """What ``ptxas -v`` says about one entry function."""

    registers: int | None = None
    spill_stores: int = 0
    spill_loads: int = 0
    stack_bytes: int = 0
    smem_bytes: int = 0


_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(\w+)'")
_PROPS = re.compile(r"Function properties for (\S+)")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas_log(log: str) -> dict[str, PtxasStats]:
    """Per entry function (mangled name) the registers, spills, stack and static shared memory.

    Reads the ``-v`` output of ptxas (also as ``nvcc -Xptxas -v`` prints it). Lines about
    non-entry functions (``Function properties for`` a device function) are not entries and
    are left out.
    """
    out: dict[str, PtxasStats] = {}
    current: str | None = None  # the entry whose "Used N registers" line is next
    props_for: str | None = None
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            current = m.group(1)
            out[current] = PtxasStats()
            continue
        if m := _PROPS.search(line):
            props_for = m.group(1)
            continue
        if m := _SPILL.search(line):
            if props_for in out:
                st = out[props_for]
                st.stack_bytes = int(m.group(1))
                st.spill_stores = int(m.group(2))
                st.spill_loads = int(m.group(3))
            continue
        if (m := _USED.search(line)) and current in out:
            st = out[current]
            st.registers = int(m.group(1))
            if s := _SMEM.search(line):
                st.smem_bytes = int(s.group(1))
            current = None
    return out


# ---------------------------------------------------------------------------- SASS


@dataclass
class SassStats:
    """Tensor-core and TMA instructions found in one function's SASS."""

    tensor_core: Counter[str] = field(default_factory=Counter)
    tma: bool = False

    @property
    def tensor_core_ops(self) -> list[str]:
        return sorted(self.tensor_core)


_FUNC_CUOBJDUMP = re.compile(r"^\s*Function\s*:\s*(\S+)")
_FUNC_NVDISASM = re.compile(r"^\s*\.text\.(\S+?):?\s*$|^\s*\.section\s+\.text\.([^\s,]+)")
_INSTR = re.compile(r"/\*[0-9a-fA-F]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)")


def is_tensor_core_opcode(op: str) -> bool:
    """HMMA, HGMMA, IMMA, IGMMA, QGMMA, DMMA, BMMA, ... (every SASS ``*MMA`` opcode)."""
    return op.endswith("MMA")


def parse_sass(text: str) -> dict[str, SassStats]:
    """Per function (mangled name) the tensor-core opcodes (with counts) and TMA use.

    Reads ``cuobjdump -sass`` output (``Function : name`` headers) or ``nvdisasm`` output
    (``.text.name`` sections).
    """
    out: dict[str, SassStats] = {}
    cur: SassStats | None = None
    for line in text.splitlines():
        m = _FUNC_CUOBJDUMP.match(line) or _FUNC_NVDISASM.match(line)
        if m:
            name = next(g for g in m.groups() if g)
            cur = out.setdefault(name, SassStats())
            continue
        if cur is None:
            continue
        if i := _INSTR.search(line):
            op = i.group(1)
            if is_tensor_core_opcode(op):
                cur.tensor_core[op] += 1
            elif op.startswith(TMA_PREFIXES):
                cur.tma = True
    return out


def disassembler_identity(*, prefer_triton: bool = True) -> str:
    """Which disassemblers :func:`disassemble` would try, for cache keys."""
    from millkernels.analyze.cache import tool_identity

    return ";".join(
        tool_identity(tool)
        for name in ("cuobjdump", "nvdisasm")
        for tool in tool_candidates(name, prefer_triton=prefer_triton)
    )


def disassemble(cubin: Path, *, prefer_triton: bool = True) -> tuple[str | None, str]:
    """SASS text of a cubin file, via cuobjdump (else nvdisasm). Returns ``(text, error)``.

    Every copy of the tools found is tried in turn (see :func:`tool_candidates`).
    """
    errors = []
    for name, args in (("cuobjdump", ["-sass"]), ("nvdisasm", [])):
        copies = tool_candidates(name, prefer_triton=prefer_triton)
        if not copies:
            errors.append(f"{name} not found")
        for tool in copies:
            r = run([tool, *args, str(cubin)])
            if r.returncode == 0 and r.stdout.strip():
                return r.stdout, ""
            errors.append(f"{tool} failed: {(r.stderr or r.stdout).strip()[-300:]}")
    return None, "; ".join(errors)


# ---------------------------------------------------------------------------- names


def demangle(names: list[str]) -> dict[str, str]:
    """Mangled -> demangled C++ names (one demangler call for all); unmangled names map to
    themselves, and without a demangler a best-effort plain name is used."""
    out = {n: n for n in names}
    mangled = [n for n in names if n.startswith("_Z")]
    if not mangled:
        return out
    tool = find_demangler()
    if tool:
        try:
            r = subprocess.run(
                [tool], input="\n".join(mangled) + "\n", capture_output=True, text=True, timeout=60
            )
            lines = r.stdout.splitlines()
            if r.returncode == 0 and len(lines) == len(mangled):
                out.update(zip(mangled, lines, strict=True))
                return out
        except (OSError, subprocess.SubprocessError):
            pass
    for n in mangled:
        out[n] = _itanium_plain(n) or n
    return out


def _itanium_plain(name: str) -> str | None:
    """The (qualified) function name of a simply mangled symbol, without a demangler.

    ``_Z4copyPfi`` -> ``copy``; ``_ZN2mk6probes4copyEPfi`` -> ``mk::probes::copy``. Template
    arguments and anything unusual end the parse early.
    """
    nested = name.startswith("_ZN")
    i = 3 if nested else 2
    ids: list[str] = []
    while i < len(name):
        while i < len(name) and name[i] in "rVKL":  # cv-qualifiers, internal linkage
            i += 1
        m = re.match(r"\d+", name[i:])
        if not m:
            break
        n = int(m.group())
        i += len(m.group())
        ids.append(name[i : i + n])
        i += n
        if not nested:
            break
    return "::".join(ids) or None


def plain_name(demangled: str) -> tuple[str, str]:
    """``(plain, qualified)`` function name of a demangled signature.

    ``void mk::probes::copy_kernel<4>(uint4 const*, uint4*, long)`` gives
    ``("copy_kernel", "mk::probes::copy_kernel")``.
    """
    s = demangled.strip().replace("(anonymous namespace)", "{anonymous}")
    # drop the parameter list: the last top-level "(...)"
    depth = 0
    cut = len(s)
    for i in range(len(s) - 1, -1, -1):
        c = s[i]
        if c == ")":
            depth += 1
        elif c == "(":
            depth -= 1
            if depth == 0:
                cut = i
                break
    s = s[:cut]
    # drop template arguments (every top-level <...>)
    out, depth = [], 0
    for c in s:
        if c == "<":
            depth += 1
        elif c == ">":
            depth -= 1
        elif depth == 0:
            out.append(c)
    s = "".join(out).strip()
    # drop the return type: the last whitespace-separated token is the qualified name
    qualified = s.split()[-1] if s.split() else demangled
    return qualified.split("::")[-1], qualified


def template_args(demangled: str) -> str:
    """The template arguments of the function in a demangled signature (``"<4>"``), or ``""``."""
    s = demangled.strip().replace("(anonymous namespace)", "{anonymous}")
    # the function name ends where its parameter list starts: the last top-level "("
    depth, cut = 0, len(s)
    for i in range(len(s) - 1, -1, -1):
        if s[i] == ")":
            depth += 1
        elif s[i] == "(":
            depth -= 1
            if depth == 0:
                cut = i
                break
    head = s[:cut].rstrip()
    if not head.endswith(">"):
        return ""
    depth = 0
    for i in range(len(head) - 1, -1, -1):
        if head[i] == ">":
            depth += 1
        elif head[i] == "<":
            depth -= 1
            if depth == 0:
                return head[i:]
    return ""
