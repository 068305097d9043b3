"""Compile registered Triton kernels for a ``GPUTarget`` without a GPU, and measure them.

Why separate processes (a few per analysis run, not one per kernel):

* Under ``TRITON_INTERPRET=1`` (how the test-suite runs Triton on a CPU) ``@triton.jit`` returns
  interpreter objects, not ``JITFunction`` s. Wrapping the kernel's ``.fn`` in a new
  ``JITFunction`` is not enough: the ``@triton.jit`` helpers it calls are interpreter objects
  too, and module-level constants computed from the interpreter switch (e.g.
  ``millkernels.ops.triton_common.INTERPRET``) would select the CPU code path. The worker
  starts with ``TRITON_INTERPRET`` removed from its environment and re-imports each kernel's
  module, so it compiles exactly what a GPU run compiles.
* A crash of LLVM or ptxas on one kernel costs that kernel (reported as an error), not the run:
  the worker is restarted for the kernels left.
* A kernel that takes longer than ``MILLKERNELS_ANALYZE_TIMEOUT`` seconds (default 300) to
  compile is stopped and reported as an error.
* Kernels compile in parallel: one worker per CPU (at most 8; ``MILLKERNELS_ANALYZE_JOBS``
  overrides), each importing the kernel modules once.

The worker reports, per variant: registers, spill stores/loads and static shared memory from
``ptxas -v`` run on Triton's PTX with the ptxas Triton uses for that architecture and the same
options (Triton discards its own ptxas log); dynamic shared memory from
``compiled.metadata.shared``; tensor-core opcodes and TMA from ``cuobjdump -sass`` of Triton's
cubin.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import json
import os
import pickle
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from millkernels.analyze.registry import TritonVariant, python_function

WORKER_ENV = "MILLKERNELS_ANALYZE_WORKER"
TIMEOUT_ENV = "MILLKERNELS_ANALYZE_TIMEOUT"
JOBS_ENV = "MILLKERNELS_ANALYZE_JOBS"
DEFAULT_TIMEOUT_S = 300.0
_WORKER_MODULE = "millkernels.analyze.triton_compile"

#: ``on_result(job index, result)``: one job's result, as it arrives.
OnResult = Callable[[int, dict[str, Any]], None]


@dataclass(frozen=True)
class TritonJob:
    """One variant of one kernel to compile, with where the worker finds the kernel."""

    index: int
    module: str
    qualname: str
    file: str | None
    firstlineno: int
    variant: TritonVariant


def make_job(index: int, fn: Any, variant: TritonVariant) -> TritonJob:
    """Describe ``fn`` so that another process can import it again."""
    f = python_function(fn)
    try:
        file = inspect.getsourcefile(f)
    except TypeError:
        file = None
    return TritonJob(index, f.__module__, f.__qualname__, file, f.__code__.co_firstlineno, variant)


def _short(text: str, limit: int = 1500) -> str:
    text = text.strip()
    if len(text) <= limit:
        return text
    return text[: limit // 2] + "\n[...]\n" + text[-limit // 2 :]


# ---------------------------------------------------------------------------- parent side


def worker_count(n_jobs: int) -> int:
    """Compile workers to start: ``$MILLKERNELS_ANALYZE_JOBS``, else one per CPU (at most 8)."""
    env = os.environ.get(JOBS_ENV)
    wanted = int(env) if env and env.isdigit() and int(env) > 0 else min(os.cpu_count() or 1, 8)
    return max(1, min(wanted, n_jobs))


def run_jobs(
    jobs: list[TritonJob], capability: int, on_result: OnResult | None = None
) -> dict[int, dict[str, Any]]:
    """Compile ``jobs`` for ``sm_<capability>`` in worker processes; results by job index.

    Each result is a dict with either the measurements (``registers``, ``spill_stores``,
    ``spill_loads``, ``shared_bytes``, ``tensor_core``, ``tma``) or ``error``. The jobs are
    dealt round-robin to :func:`worker_count` workers that run side by side.
    ``on_result(index, result)`` is called for each job as its result arrives (from the
    workers' threads, so it must be thread-safe).
    """
    if os.environ.get(WORKER_ENV):
        raise RuntimeError("millkernels analyze was started inside its own compile worker")
    timeout = float(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT_S)
    n = worker_count(len(jobs))
    shares = [jobs[i::n] for i in range(n)]
    with tempfile.TemporaryDirectory(prefix="mk-analyze-") as tmp:
        dirs = [Path(tmp) / str(i) for i in range(n)]
        for d in dirs:
            d.mkdir()
        if n == 1:
            return _run_share(shares[0], capability, dirs[0], timeout, on_result)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(n) as pool:
            parts = pool.map(
                lambda i: _run_share(shares[i], capability, dirs[i], timeout, on_result),
                range(n),
            )
            return {k: v for part in parts for k, v in part.items()}


def _run_share(
    jobs: list[TritonJob],
    capability: int,
    tmp: Path,
    timeout: float,
    on_result: OnResult | None = None,
) -> dict[int, dict[str, Any]]:
    """One worker's jobs; the worker is restarted after a crash or a time-out."""
    results: dict[int, dict[str, Any]] = {}
    told: set[int] = set()

    def tell() -> None:
        """Pass on the results that arrived since the last call."""
        for index in [i for i in results if i not in told]:
            told.add(index)
            if on_result is not None:
                on_result(index, results[index])

    remaining = list(jobs)
    attempt = 0
    while remaining:
        attempt += 1
        done_before = len(results)
        _run_worker(remaining, capability, tmp, attempt, timeout, results, tell)
        tell()
        remaining = [j for j in remaining if j.index not in results]
        if len(results) == done_before:  # no progress: the worker cannot start at all
            break
    return results


def _worker_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env[WORKER_ENV] = "1"
    # the worker must import millkernels and the kernels' modules as this process does, also
    # when they are importable only through sys.path entries added at run time
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _run_worker(
    jobs: list[TritonJob],
    capability: int,
    tmp: Path,
    attempt: int,
    timeout: float,
    results: dict[int, dict[str, Any]],
    tell: Callable[[], None] = lambda: None,
) -> None:
    job_file = tmp / f"jobs{attempt}.pkl"
    out_file = tmp / f"results{attempt}.jsonl"
    log_file = tmp / f"worker{attempt}.log"
    payload = []
    for j in jobs:
        try:
            payload.append(pickle.dumps(j))
        except Exception as exc:  # an unpicklable constexpr value
            results[j.index] = {"error": f"cannot send the variant to the compile worker: {exc}"}
    job_file.write_bytes(pickle.dumps({"sys_path": sys.path, "jobs": payload, "cap": capability}))
    out_file.touch()
    current: int | None = None
    rc: int | None = None
    with open(log_file, "w") as log, open(out_file, "rb") as progress:
        proc = subprocess.Popen(
            [sys.executable, "-m", _WORKER_MODULE, str(job_file), str(out_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_worker_env(),
        )
        try:
            started = time.monotonic()
            pending = b""
            while True:
                rc = proc.poll()
                pending += progress.read()
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    msg = json.loads(line)
                    if "start" in msg:
                        current, started = msg["start"], time.monotonic()
                    elif "index" in msg:
                        results[msg["index"]] = msg["result"]
                        current = None
                        tell()
                if rc is not None:
                    break
                if current is not None and time.monotonic() - started > timeout:
                    results[current] = {"error": f"compilation took longer than {timeout:.0f} s"}
                    return
                time.sleep(0.05)
        finally:
            if proc.poll() is None:  # timed out, or this process is being interrupted
                proc.kill()
                proc.wait()
    if current is not None and current not in results:
        tail = _short(log_file.read_text(errors="replace"), 1200)
        results[current] = {"error": f"the compiler process died (exit {rc}): {tail}"}
    elif rc != 0 and not any(j.index in results for j in jobs):
        tail = _short(log_file.read_text(errors="replace"), 1200)
        for j in jobs:
            results.setdefault(j.index, {"error": f"the compile worker failed (exit {rc}): {tail}"})


def ptx_of(kernel: str, capability: int = 90) -> dict[str, str]:
    """The PTX of every registered variant of ``kernel`` (its report name, e.g.
    ``"quant.fp8_act_quant"``) compiled for ``sm_<capability>``, by variant label.

    Compiled in a child process without the interpreter, like the analysis workers, so it
    works under ``TRITON_INTERPRET=1`` (the tests). Raises RuntimeError with the child's
    output when the compilation fails, KeyError (in the child's message) for an unknown name.
    """
    code = (
        "import json, sys\n"
        "from millkernels.analyze.triton_compile import _ptx_main\n"
        "json.dump(_ptx_main(sys.argv[1], int(sys.argv[2])), sys.stdout)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, kernel, str(capability)],
        capture_output=True,
        text=True,
        env=_worker_env(),
    )
    if r.returncode != 0:
        raise RuntimeError(f"compiling {kernel} for sm_{capability} failed:\n{_short(r.stderr)}")
    return json.loads(r.stdout)


#: float32 PTX instructions a bit-for-bit match with torch cannot have: approximate
#: division and reciprocal (what a plain ``/`` in Triton compiles to), and ``fma`` (a contracted
#: multiply-add rounds once where torch rounds twice).
_INEXACT_F32 = re.compile(r"\b(div\.approx|div\.full|rcp\.approx|fma\.rn)(?:\.ftz)?\.f32\b")


def inexact_f32_ops(ptx: str) -> list[str]:
    """The distinct inexact float32 instructions in ``ptx`` (see ``_INEXACT_F32``)."""
    return sorted(set(_INEXACT_F32.findall(ptx)))


def _ptx_main(kernel: str, capability: int) -> dict[str, str]:
    """:func:`ptx_of`'s child process: compile the package's registered ``kernel``."""
    from triton.runtime.jit import JITFunction

    from millkernels.analyze.registry import triton_kernels

    registered = triton_kernels().triton[kernel]
    fn = registered.fn
    while not isinstance(fn, JITFunction):  # autotune / heuristics wrappers
        fn = fn.fn
    with contextlib.redirect_stdout(sys.stderr):
        return {
            v.describe(): compile_variant(fn, v, capability).asm["ptx"] for v in registered.variants
        }


# ---------------------------------------------------------------------------- worker side


def _load_module(job: TritonJob) -> Any:
    if job.module != "__main__":
        try:
            return importlib.import_module(job.module)
        except ImportError:
            if not job.file:
                raise
    if not job.file or not os.path.exists(job.file):
        raise ImportError(f"cannot import {job.module!r} (no source file)")
    name = f"_mk_analyze_{abs(hash(job.file))}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, job.file)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _kernel_name_line(obj: Any) -> tuple[str, int] | None:
    try:
        f = python_function(obj)
    except Exception:
        return None
    return f.__qualname__, f.__code__.co_firstlineno


def resolve_kernel(job: TritonJob) -> Any:
    """Import the kernel's module again (without the interpreter) and return its JITFunction.

    The kernel is looked up by its qualified name; when that attribute is something else
    (the kernel was bound to another name), the module's globals are searched for the function
    with that name (and, among several, the one defined at the same line).
    """
    from triton.runtime.jit import JITFunction

    if "<locals>" in job.qualname:
        raise LookupError(
            f"{job.module}.{job.qualname} is defined inside a function; register kernels "
            "defined at module level so that the analysis can import them"
        )
    mod = _load_module(job)
    obj: Any = mod
    for part in job.qualname.split("."):
        obj = getattr(obj, part, None)
    found = _kernel_name_line(obj)
    if found is None or found[0] != job.qualname:
        same_name = [
            v for v in vars(mod).values() if (_kernel_name_line(v) or ("",))[0] == job.qualname
        ]
        exact = [v for v in same_name if _kernel_name_line(v) == (job.qualname, job.firstlineno)]
        obj = (exact or same_name or [None])[0]
    if obj is None:
        raise LookupError(f"no kernel {job.qualname} in {job.module}")
    for _ in range(16):
        if isinstance(obj, JITFunction):
            return obj
        obj = getattr(obj, "fn", None)
    raise LookupError(f"{job.module}.{job.qualname} is not a @triton.jit kernel")


def _ptxas_for(capability: int) -> str:
    try:
        from triton.backends.nvidia import compiler as nv

        return nv.get_ptxas(capability).path
    except Exception:
        from millkernels.analyze.tools import find_tool

        path = find_tool("ptxas")
        if path is None:
            raise FileNotFoundError("ptxas not found") from None
        return path


def _ptxas_extra_options() -> list[str]:
    """Options Triton's own ptxas call adds in this Triton version (3.9: --regAllocOptLevel=2)."""
    try:
        from triton.backends.nvidia.compiler import CUDABackend

        src = inspect.getsource(CUDABackend.make_cubin)
    except Exception:
        return []
    return ["--regAllocOptLevel=2"] if "--regAllocOptLevel=2" in src else []


def compile_variant(jit_fn: Any, variant: TritonVariant, capability: int) -> Any:
    """``triton.compile`` one variant for ``sm_<capability>`` (in a process without the
    interpreter); the compiled kernel, whose ``asm`` holds its PTX and cubin."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = list(variant.signature)
    aligned = (
        [n for n, t in variant.signature.items() if t.startswith("*")]
        if variant.divisible_by_16 is None
        else list(variant.divisible_by_16)
    )
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    src = ASTSource(
        fn=jit_fn,
        signature=dict(variant.signature),
        constexprs=dict(variant.constexprs),
        attrs=attrs,
    )
    options: dict[str, Any] = {"num_warps": variant.num_warps, "num_stages": variant.num_stages}
    if not variant.enable_fp_fusion:  # else Triton's default, as at the kernel's launch
        options["enable_fp_fusion"] = False
    if variant.maxnreg:
        options["maxnreg"] = variant.maxnreg
    return triton.compile(src, target=GPUTarget("cuda", capability, 32), options=options)


def compiled_metrics(compiled: Any, sass_text: str | None) -> dict[str, float]:
    """The metrics Expects read that come from the compiled kernel itself: the SASS loop
    statistics (:mod:`~millkernels.analyze.sass_loops`), ``dup_warp_dots`` from the TTGIR and
    ``num_warps`` (a warp-specialised kernel's producer warps included)."""
    from millkernels.analyze import sass_loops, ttgir

    meta = compiled.metadata
    ir = compiled.asm.get("ttgir", "")
    metrics: dict[str, float] = {}
    functions = sass_loops.parse_functions(sass_text) if sass_text else {}
    if meta.name in functions:
        metrics.update(sass_loops.sass_metrics(functions[meta.name]))
    metrics["dup_warp_dots"] = float(ttgir.dup_warp_dots(ir))
    metrics["num_warps"] = float(max(int(meta.num_warps), ttgir.total_warps(ir) or 0))
    return metrics


def compile_one(jit_fn: Any, variant: TritonVariant, capability: int, tmp: Path) -> dict[str, Any]:
    """Compile one variant and measure it (in the worker)."""
    import triton

    from millkernels.analyze import cache, tools

    compiled = compile_variant(jit_fn, variant, capability)
    meta = compiled.metadata
    name = meta.name
    gpu_name = f"sm_{capability}a" if capability >= 90 else f"sm_{capability}"

    ptxas = _ptxas_for(capability)
    flags = ["-lineinfo", "-v", *_ptxas_extra_options()]
    if not getattr(meta, "enable_fp_fusion", True):
        flags.append("--fmad=false")
    if getattr(meta, "ptx_options", None):
        flags += str(meta.ptx_options).split()
    flags.append(f"--gpu-name={gpu_name}")

    def run_tools() -> cache.Outputs:
        ptx = tmp / f"{name}.ptx"
        ptx.write_text(compiled.asm["ptx"])
        r = tools.run([ptxas, *flags, str(ptx), "-o", str(tmp / f"{name}.ptxas.cubin")])
        if r.returncode != 0:
            return {"returncode": r.returncode, "log": r.stderr or r.stdout}
        cubin = tmp / f"{name}.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        sass, sass_err = tools.disassemble(cubin)
        log = r.stderr + r.stdout
        return {"returncode": 0, "log": log, "sass": sass or "", "sass_err": sass_err}

    key = cache.key(
        compiled.asm["ptx"],
        " ".join(flags),
        cache.tool_identity(ptxas),
        compiled.asm["cubin"],
        tools.disassembler_identity(),
    )
    outputs = cache.cached(key, run_tools)
    if outputs["returncode"] != 0:
        return {"error": "ptxas failed: " + _short(str(outputs["log"]), 1200)}
    stats = tools.parse_ptxas_log(str(outputs["log"])).get(name)
    if stats is None:
        return {"error": "ptxas -v printed no statistics for " + name}
    sass_text, sass_err = str(outputs["sass"]) or None, str(outputs["sass_err"])
    sass = tools.parse_sass(sass_text).get(name) if sass_text else None
    return {
        "metrics": compiled_metrics(compiled, sass_text),
        "triton_version": triton.__version__,
        "symbol": name,
        "registers": stats.registers,
        "spill_stores": stats.spill_stores,
        "spill_loads": stats.spill_loads,
        "shared_bytes": int(meta.shared) + stats.smem_bytes,
        "tensor_core": dict(sass.tensor_core) if sass else {},
        "tma": bool(sass.tma) if sass else False,
        "sass_error": sass_err if sass_text is None else "",
        "num_warps": variant.num_warps,
        "num_stages": variant.num_stages,
    }


def worker_main(job_file: str, out_file: str) -> int:
    """Entry point of the compile worker: compile every job, append JSON lines to out_file."""
    data = pickle.loads(Path(job_file).read_bytes())
    for p in reversed(data["sys_path"]):
        if p not in sys.path:
            sys.path.insert(0, p)
    cap = int(data["cap"])
    try:  # before the first job, so that importing Triton does not count to its time limit
        import triton.compiler  # noqa: F401

        triton_error = ""
    except Exception as exc:
        triton_error = f"Triton cannot be imported: {type(exc).__name__}: {exc}"
    # Inside the parent's folder (the job file's), which the parent removes even when it
    # kills this worker (a crash or a time-out) before the worker can remove its own.
    scratch = Path(job_file).parent
    with (
        open(out_file, "a") as out,
        tempfile.TemporaryDirectory(prefix="mk-tc-", dir=scratch) as tmp,
    ):

        def emit(msg: dict[str, Any]) -> None:
            out.write(json.dumps(msg) + "\n")
            out.flush()

        for blob in data["jobs"]:
            job: TritonJob = pickle.loads(blob)
            emit({"start": job.index})
            if triton_error:
                emit({"index": job.index, "result": {"error": triton_error}})
                continue
            try:
                with contextlib.redirect_stdout(sys.stderr):
                    jit_fn = resolve_kernel(job)
                    sub = Path(tmp) / str(job.index)
                    sub.mkdir()
                    result = compile_one(jit_fn, job.variant, cap, sub)
            except Exception as exc:
                msg = f"{type(exc).__name__}: {exc}"
                if not str(exc).strip():
                    msg += "\n" + traceback.format_exc(limit=3)
                result = {"error": _short(msg)}
            emit({"index": job.index, "result": result})
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1], sys.argv[2]))
