"""The analysis: compile every registered Triton kernel and every CUDA kernel for one
architecture, without a GPU, and judge the results against that architecture's limits."""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from millkernels.analyze import tools
from millkernels.analyze.expect import judge
from millkernels.analyze.registry import Registry, TritonVariant, triton_kernels
from millkernels.analyze.report import Arch, KernelReport, measured, parse_arch, selected

EXIT_OK, EXIT_FAILED, EXIT_COULD_NOT_RUN = 0, 1, 3

#: ``on_report(report)``: one finished report (compiled, failed or skipped), as it is known.
OnReport = Callable[[KernelReport], None]


@dataclass
class Analysis:
    """The reports of one run, and whether the tools were there at all."""

    arch: Arch
    reports: list[KernelReport] = field(default_factory=list)
    #: Why Triton kernels could not be compiled (None: they could).
    triton_missing: str | None = None
    #: Why no CUDA kernel could be analysed (no nvcc and no built extension, or no sources).
    cuda_missing: str | None = None
    #: True when neither Triton's compiler nor nvcc is usable: nothing could be compiled.
    toolchain_missing: bool = False

    @property
    def failures(self) -> list[KernelReport]:
        """Hot kernels that spill, overflow shared memory or do not compile."""
        return [r for r in self.reports if r.failed]

    def exit_code(self, check: bool) -> int:
        """3 when the toolchain is missing, 1 when ``check`` and a hot kernel fails, else 0."""
        if self.toolchain_missing:
            return EXIT_COULD_NOT_RUN
        if check and self.failures:
            return EXIT_FAILED
        return EXIT_OK


def triton_toolchain_missing() -> str | None:
    """Why Triton kernels cannot be compiled here, or None."""
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed"
    if tools.find_tool("ptxas") is None:
        return "ptxas not found (neither Triton's bundled copy nor one on PATH)"
    return None


def analyze_triton(
    registry: Registry,
    arch: Arch,
    *,
    hot_only: bool = False,
    on_report: OnReport | None = None,
    only: Sequence[str] | None = None,
) -> tuple[list[KernelReport], str | None]:
    """Compile every variant of every registered Triton kernel for ``arch`` (in workers);
    ``on_report`` gets each report as soon as it is final (from the workers' threads)."""
    from millkernels.analyze import triton_compile

    missing = triton_toolchain_missing()
    reports: list[KernelReport] = []
    pending: list[tuple[int, triton_compile.TritonJob, TritonVariant]] = []  # row, job, variant
    for kernel in registry.triton.values():
        if (hot_only and not kernel.hot) or not selected(kernel.name, only):
            continue
        for variant in kernel.variants:
            row = KernelReport(
                kernel=kernel.name,
                backend="triton",
                arch=arch.name,
                variant=variant.describe(),
                hot=kernel.hot,
            )
            reports.append(row)
            try:
                f = kernel.python_fn
                row.source = f"{f.__module__}:{f.__qualname__}"
            except TypeError as exc:
                row.status, row.reason = "error", str(exc)
                continue
            if variant.min_arch > arch.capability:
                row.status = "skipped"
                row.reason = f"variant needs sm_{variant.min_arch} or newer"
            elif missing:
                row.status, row.reason = "skipped", missing
            else:
                job = triton_compile.make_job(len(pending), kernel.fn, variant)
                pending.append((len(reports) - 1, job, variant))
    compiling = {i for i, _, _ in pending}
    for i, row in enumerate(reports):
        if on_report and i not in compiling:
            on_report(row)  # known without compiling: skipped, or a bad registration
    if not pending:
        return reports, missing
    by_job = {job.index: (i, variant) for i, job, variant in pending}
    finished: set[int] = set()
    lock = threading.Lock()

    def finish(index: int, res: dict[str, Any]) -> None:
        with lock:
            if index in finished:
                return
            finished.add(index)
            i, variant = by_job[index]
            reports[i] = _triton_report(reports[i], variant, arch, res)
        if on_report:
            on_report(reports[i])

    try:
        results = triton_compile.run_jobs(
            [j for _, j, _ in pending], arch.capability, on_result=finish
        )
    except Exception as exc:  # the worker could not even be started
        results = {j.index: {"error": f"{type(exc).__name__}: {exc}"} for _, j, _ in pending}
    for _, job, _ in pending:
        finish(
            job.index, results.get(job.index) or {"error": "the compile worker returned no result"}
        )
    return reports, missing


def _triton_report(
    row: KernelReport, variant: TritonVariant, arch: Arch, res: dict[str, Any]
) -> KernelReport:
    """The report of one compiled variant from the worker's result ``res``."""
    if "error" in res:
        row.status, row.reason = "error", res["error"]
        return row
    rep = measured(
        kernel=row.kernel,
        backend="triton",
        arch=arch,
        variant=row.variant,
        hot=row.hot,
        source=row.source,
        registers=res["registers"],
        spill_stores=res["spill_stores"],
        spill_loads=res["spill_loads"],
        shared_bytes=res["shared_bytes"],
        tensor_core=res["tensor_core"],
        tma=res["tma"],
        note=f"no SASS: {res['sass_error']}" if res.get("sass_error") else "",
        symbol=res.get("symbol", ""),
    )
    rep.triton_version = str(res.get("triton_version", ""))
    judge(rep, res.get("metrics", {}), variant.expect, rep.triton_version)
    allowed = variant.spill_allowance.get(arch.capability, 0)
    if rep.status == "spills" and (rep.spill_bytes or 0) <= allowed:
        rep.status = "waived"
        rep.reason += f"; within its allowance of {allowed} B: {variant.allowance_reason}"
    return rep


def analyze_kernels(
    arch: str | Arch = "sm_90",
    *,
    registry: Registry | None = None,
    hot_only: bool = False,
    csrc: Path | None = None,
    include_cuda: bool = True,
    on_report: OnReport | None = None,
    only: Sequence[str] | None = None,
) -> Analysis:
    """Compile and report every kernel for ``arch``; no GPU is needed.

    Parameters
    ----------
    arch
        ``"sm_90"`` (``"sm_90a"``) or ``"sm_80"``, or an :class:`Arch`.
    registry
        The Triton kernels to compile; default: every kernel of the package
        (:func:`~millkernels.analyze.registry.triton_kernels`). CUDA kernels marked hot are
        taken from it too.
    hot_only
        Only kernels marked hot.
    csrc
        Where the CUDA sources are (default: found from the package).
    include_cuda
        False: Triton kernels only.
    only
        Only kernels whose name contains one of these substrings (CUDA: only the files
        whose text contains one are compiled).
    on_report
        Called with each report as soon as it is final (progress; one call at a time, from
        any thread). ``Analysis.reports`` keeps the registry's order regardless.

    Compile failures, missing tools and bad registrations become reports with status
    ``error`` or ``skipped``; this raises only ``ValueError`` for an unknown ``arch``.
    """
    arch = parse_arch(arch) if isinstance(arch, str) else arch
    analysis = Analysis(arch)
    lock = threading.Lock()

    def emit(report: KernelReport) -> None:
        if on_report is not None:
            with lock:
                on_report(report)

    if registry is None:
        registry = triton_kernels()
    for module, error in sorted(registry.import_errors.items()):
        # the kernels of a module that does not import cannot be checked: a failure
        analysis.reports.append(
            KernelReport(
                kernel=module,
                backend="triton",
                arch=arch.name,
                hot=True,
                status="error",
                reason=f"importing the kernel module failed: {error}",
                source=module,
            )
        )
        emit(analysis.reports[-1])

    cuda_out: dict[str, tuple[list[KernelReport], str | None]] = {}

    def run_cuda() -> None:
        from millkernels.analyze.cuda_compile import analyze_cuda

        try:
            found = analyze_cuda(
                arch,
                set(registry.cuda_hot),
                csrc=csrc,
                hot_only=hot_only,
                expects=registry.cuda_expect,
                only=only,
            )
        except Exception as exc:  # never let the CUDA side take the Triton results down
            failed = KernelReport(
                kernel="csrc",
                backend="cuda",
                arch=arch.name,
                hot=bool(registry.cuda_hot),
                status="error",
                reason=f"CUDA analysis failed: {type(exc).__name__}: {exc}",
            )
            found = ([failed], None)
        cuda_out["result"] = found
        for report in found[0]:
            emit(report)

    thread = threading.Thread(target=run_cuda, daemon=True) if include_cuda else None
    if thread:
        thread.start()  # nvcc runs while the Triton worker compiles
    triton_reports, analysis.triton_missing = analyze_triton(
        registry, arch, hot_only=hot_only, on_report=emit, only=only
    )
    analysis.reports.extend(triton_reports)
    if thread:
        thread.join()
        cuda_reports, analysis.cuda_missing = cuda_out["result"]
        analysis.reports.extend(cuda_reports)
    cuda_unusable = analysis.cuda_missing is not None or not include_cuda
    analysis.toolchain_missing = analysis.triton_missing is not None and cuda_unusable
    return analysis
