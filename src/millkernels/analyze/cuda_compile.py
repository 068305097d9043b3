"""Compile the package's CUDA sources with nvcc for one architecture and measure each kernel.

Every ``.cu`` file under ``csrc/`` is compiled on its own to a cubin (``nvcc -cubin
-arch=sm_90a -Xptxas -v``), as the CMake build compiles it (C++17, ``-I csrc``, release
flags); ptxas' ``-v`` report gives each ``__global__`` function's registers, spills and static
shared memory, and ``cuobjdump -sass`` of the cubin its tensor-core instructions.

Without nvcc, the kernels of the built extension ``millkernels._C`` are read instead
(``cuobjdump -res-usage`` and ``-sass`` on its fatbinary): registers, shared memory and
tensor-core instructions, but no spill counts (ptxas' report is not kept in the binary).

Where the sources are: ``$MILLKERNELS_CSRC``; else ``millkernels/csrc`` in the installed
package (the build installs the sources there); else ``csrc/`` of the source checkout the
package is imported from (an editable install).
"""

from __future__ import annotations

import hashlib
import os
import re
import sysconfig
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from millkernels.analyze import cache, sass_loops, tools
from millkernels.analyze.expect import judge
from millkernels.analyze.report import Arch, KernelReport, measured, selected
from millkernels.ops.analysis_spec import Expect

CSRC_ENV = "MILLKERNELS_CSRC"


def find_csrc() -> Path | None:
    """The directory holding the CUDA sources, or None when there is none."""
    env = os.environ.get(CSRC_ENV)
    if env:
        return Path(env) if Path(env).is_dir() else None
    import millkernels

    pkg = Path(millkernels.__file__).resolve().parent
    if (pkg / "csrc").is_dir():
        return pkg / "csrc"
    for parent in pkg.parents:
        if (parent / "csrc").is_dir() and (parent / "CMakeLists.txt").is_file():
            return parent / "csrc"
    return None


def cuda_sources(csrc: Path) -> list[Path]:
    """Every ``.cu`` file under ``csrc``, sorted."""
    return sorted(p for p in csrc.rglob("*.cu") if p.is_file())


def _include_flags(csrc: Path) -> list[str]:
    flags = ["-I", str(csrc)]
    try:  # for sources that include pybind11 (headers outside the CUDA toolkit)
        import pybind11

        flags += ["-I", pybind11.get_include()]
    except ImportError:
        pass
    py_inc = sysconfig.get_paths().get("include")
    if py_inc:
        flags += ["-I", py_inc]
    return flags


@dataclass
class CudaFileResult:
    """The kernels of one ``.cu`` file (empty with ``error`` set when it did not compile)."""

    source: str
    reports: list[KernelReport] = field(default_factory=list)
    error: str = ""


def _tree_digest(csrc: Path) -> str:
    """sha256 of every file under ``csrc`` (a .cu file's headers decide its code too)."""
    h = hashlib.sha256()
    for path in sorted(p for p in csrc.rglob("*") if p.is_file()):
        h.update(path.relative_to(csrc).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _hot(plain: str, qualified: str, hot_names: set[str]) -> bool:
    return plain in hot_names or qualified in hot_names


@dataclass
class _Code:
    """One cubin's disassembly: per mangled kernel name its SASS statistics and instructions,
    and the Expects declared by kernel name."""

    sass: dict[str, tools.SassStats]
    functions: dict[str, list[sass_loops.Instr]]
    expects: Mapping[str, Sequence[Expect]]

    @classmethod
    def of(cls, text: str | None, expects: Mapping[str, Sequence[Expect]] | None) -> _Code:
        if not text:
            return cls({}, {}, expects or {})
        return cls(tools.parse_sass(text), sass_loops.parse_functions(text), expects or {})

    def report(
        self,
        mangled: str,
        demangled: str,
        arch: Arch,
        hot_names: set[str],
        source: str,
        spills_known: bool = True,
        **numbers: Any,
    ) -> KernelReport:
        """The kernel's report from ``numbers`` (registers, spills, shared memory, note) and
        its SASS, with its metrics and Expects judged (spills None when not ``spills_known``)."""
        plain, qualified = tools.plain_name(demangled)
        s = self.sass.get(mangled)
        rep = measured(
            kernel=plain,
            backend="cuda",
            arch=arch,
            variant=tools.template_args(demangled),
            hot=_hot(plain, qualified, hot_names),
            source=source,
            symbol=demangled,
            tensor_core=dict(s.tensor_core) if s else {},
            tma=bool(s.tma) if s else False,
            **numbers,
        )
        if not spills_known:
            rep.spill_bytes = rep.spill_stores = rep.spill_loads = None
        instrs = self.functions.get(mangled)
        code = sass_loops.sass_metrics(instrs) if instrs is not None else {}
        judge(rep, code, self.expects.get(plain) or self.expects.get(qualified) or (), None)
        return rep


def compile_file(
    nvcc: str,
    src: Path,
    csrc: Path,
    arch: Arch,
    hot_names: set[str],
    tmp: Path,
    expects: Mapping[str, Sequence[Expect]] | None = None,
) -> CudaFileResult:
    """Compile one ``.cu`` file and report each of its kernels."""
    rel = src.relative_to(csrc).as_posix() if src.is_relative_to(csrc) else str(src)
    cubin = tmp / (rel.replace("/", "__") + ".cubin")
    flags = [
        "-cubin",
        f"-arch={arch.gpu_name}",
        "-Xptxas",
        "-v",
        "-std=c++17",
        "-O3",
        "-DNDEBUG",
        "-DMILLKERNELS_ANALYZE=1",
        *_include_flags(csrc),
    ]

    def run_tools() -> cache.Outputs:
        try:
            timeout = float(os.environ.get("MILLKERNELS_ANALYZE_TIMEOUT") or 300)
            r = tools.run([nvcc, *flags, "-o", str(cubin), str(src)], timeout=timeout)
        except Exception as exc:
            return {"error": f"nvcc did not finish: {exc}"}
        log = r.stderr + "\n" + r.stdout
        if r.returncode != 0:
            errors = [ln for ln in log.splitlines() if "error" in ln.lower()] or log.splitlines()
            return {"error": "nvcc failed: " + "\n".join(errors[:12])[-1500:]}
        sass, sass_err = tools.disassemble(cubin, prefer_triton=False)
        return {"error": "", "log": log, "sass": sass or "", "sass_err": sass_err}

    key = cache.key(
        rel,
        " ".join(flags),
        cache.tool_identity(nvcc),
        _tree_digest(csrc),
        tools.disassembler_identity(prefer_triton=False),
    )
    outputs = cache.cached(key, run_tools)
    if outputs["error"]:
        return CudaFileResult(rel, error=str(outputs["error"]))
    stats = tools.parse_ptxas_log(str(outputs["log"]))
    sass_text, sass_err = str(outputs["sass"]) or None, str(outputs["sass_err"])
    code = _Code.of(sass_text, expects)
    names = tools.demangle(list(stats))
    out = CudaFileResult(rel)
    for mangled, st in sorted(stats.items(), key=lambda kv: names.get(kv[0], kv[0])):
        rep = code.report(
            mangled,
            names.get(mangled, mangled),
            arch,
            hot_names,
            rel,
            registers=st.registers,
            spill_stores=st.spill_stores,
            spill_loads=st.spill_loads,
            shared_bytes=st.smem_bytes,
            note="" if sass_text else f"no SASS: {sass_err}",
        )
        out.reports.append(rep)
    return out


def analyze_cuda(
    arch: Arch,
    hot_names: set[str],
    *,
    csrc: Path | None = None,
    hot_only: bool = False,
    expects: Mapping[str, Sequence[Expect]] | None = None,
    only: Sequence[str] | None = None,
) -> tuple[list[KernelReport], str | None]:
    """Report every CUDA kernel under ``csrc`` (default :func:`find_csrc`) for ``arch``.

    Returns ``(reports, missing)``: ``missing`` names what is missing (nvcc, sources) when
    nothing could be compiled, else None. Without nvcc, the package's kernels (``csrc`` not
    given) are read from the built extension when there is one. Never raises for a compile
    failure: a file that does not compile is one ``error`` report named after the file.
    ``expects``: kernel name (plain or qualified) -> the Expects judged on its SASS.
    ``only``: report only kernels whose name contains one of these (and compile only the
    files whose text does).
    """
    own_sources = csrc is None
    csrc = csrc if csrc is not None else find_csrc()
    if csrc is None:
        return [], "no CUDA sources (csrc/) found"
    sources = cuda_sources(csrc)
    if not sources:
        return [], f"no .cu files under {csrc}"
    if only is not None:
        sources = [s for s in sources if selected(s.read_text(errors="replace"), only)]
    nvcc = tools.find_nvcc()
    if nvcc is None:
        built = (
            analyze_built_extension(arch, hot_names, hot_only=hot_only, expects=expects)
            if own_sources
            else None
        )
        if built is not None:
            return [r for r in built if selected(r.symbol, only)], None
        reason = "nvcc not found (install the CUDA toolkit or put nvcc on PATH)"
        skipped = [
            KernelReport(
                kernel=src.relative_to(csrc).as_posix(),
                backend="cuda",
                arch=arch.name,
                status="skipped",
                reason=reason,
                source=src.relative_to(csrc).as_posix(),
            )
            for src in sources
        ]
        return skipped, reason
    reports: list[KernelReport] = []
    with tempfile.TemporaryDirectory(prefix="mk-cuda-") as tmp:
        workers = max(1, min(len(sources), os.cpu_count() or 1))
        with ThreadPoolExecutor(workers) as pool:
            results = list(
                pool.map(
                    lambda s: compile_file(nvcc, s, csrc, arch, hot_names, Path(tmp), expects),
                    sources,
                )
            )
    for res in results:
        if res.error:
            text = (csrc / res.source).read_text(errors="replace")
            hot = any(re.search(rf"\b{re.escape(n.split('::')[-1])}\b", text) for n in hot_names)
            if hot_only and not hot:
                continue
            reports.append(
                KernelReport(
                    kernel=res.source,
                    backend="cuda",
                    arch=arch.name,
                    hot=hot,
                    status="error",
                    reason=res.error,
                    source=res.source,
                )
            )
        reports.extend(
            r for r in res.reports if (r.hot or not hot_only) and selected(r.symbol, only)
        )
    found = {r.kernel for r in reports} | {tools.plain_name(r.symbol)[1] for r in reports}
    declared = {n for n in hot_names | set(expects or {}) if selected(n, only)}
    if not any(r.status == "error" for r in reports):
        for name in sorted(declared - found):
            reports.append(
                KernelReport(
                    kernel=name,
                    backend="cuda",
                    arch=arch.name,
                    hot=True,
                    status="error",
                    reason="declared in CudaHot, but no such kernel in csrc/",
                )
            )
    return reports, None


_RES_FUNC = re.compile(r"^\s*Function\s+(\S+?):\s*$")
_RES_USAGE = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")
#: Shared memory sm_90 reserves per block (counted in cuobjdump's SHARED when a kernel uses
#: any), not part of the 227 KiB a kernel may ask for.
_SM90_RESERVED_SHARED = 1024


def analyze_built_extension(
    arch: Arch,
    hot_names: set[str],
    *,
    hot_only: bool = False,
    expects: Mapping[str, Sequence[Expect]] | None = None,
) -> list[KernelReport] | None:
    """Reports read from the built ``millkernels._C`` (no nvcc needed), or None when there is
    no extension, no cuobjdump, or no code for ``arch`` in it."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("millkernels._C")
    except (ImportError, ValueError):
        return None
    cuobjdump = tools.find_tool("cuobjdump", prefer_triton=False)
    if spec is None or not spec.origin or not os.path.isfile(spec.origin) or not cuobjdump:
        return None
    res = tools.run([cuobjdump, "-res-usage", "-arch", arch.gpu_name, spec.origin])
    if res.returncode != 0:
        return None
    usage: dict[str, tuple[int, int, int, int]] = {}
    current = None
    for line in res.stdout.splitlines():
        if m := _RES_FUNC.match(line):
            current = m.group(1)
        elif (m := _RES_USAGE.search(line)) and current:
            usage[current] = tuple(int(g) for g in m.groups())  # type: ignore[assignment]
            current = None
    if not usage:
        return None
    sass_run = tools.run([cuobjdump, "-sass", "-arch", arch.gpu_name, spec.origin])
    code = _Code.of(sass_run.stdout if sass_run.returncode == 0 else None, expects)
    names = tools.demangle(list(usage))
    reports = []
    for mangled, (regs, _stack, shared, local) in sorted(
        usage.items(), key=lambda kv: names.get(kv[0], kv[0])
    ):
        if arch.capability >= 90 and shared >= _SM90_RESERVED_SHARED:
            shared -= _SM90_RESERVED_SHARED
        rep = code.report(
            mangled,
            names.get(mangled, mangled),
            arch,
            hot_names,
            "millkernels._C",
            spills_known=False,
            registers=regs,
            spill_stores=0,
            spill_loads=0,
            shared_bytes=shared,
            note=f"read from the built extension (nvcc not found): spills unknown, "
            f"{local} B local memory per thread",
        )
        if not hot_only or rep.hot:
            reports.append(rep)
    # dedupe: the fatbinary may hold the same kernel twice (one cubin per translation unit)
    seen: set[str] = set()
    unique = []
    for r in reports:
        if r.symbol not in seen:
            seen.add(r.symbol)
            unique.append(r)
    return unique
