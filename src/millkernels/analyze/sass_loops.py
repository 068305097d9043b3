"""Loops in a kernel's SASS, and per-iteration statistics of its hot loop.

A loop is a backward branch (a ``BRA`` to an earlier address); its body is the address range
from the branch target to the branch. Backward branches to one target are one loop (several
back edges). Two kinds of backward branch are not loops of the program:

* the return of a wait's out-of-line retry stub: warp-specialised kernels branch from a
  barrier wait (``@!P0 BRA stub``) to a stub after ``EXIT`` that retries the wait and jumps
  back (``BRA next``) to the instruction after the wait. That jump is an unconditional backward
  branch whose target follows a conditional branch into the range it spans; taken as a loop
  it would span almost the whole kernel;
* a branch to itself (the trap loop after the last ``EXIT``).

Spin loops, at most :data:`SPIN_MAX` instructions with no tensor-core instruction (a wait's
retry, a register reallocation's retry), are not counted in ``loops`` and do not make the loop
around them any less innermost.

The hot loop is the innermost loop with the most tensor-core instructions (innermost among
those with any: it holds no other loop with tensor-core instructions; the first of equals);
without any, the innermost loop (it holds no other loop) with the most instructions.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from millkernels.analyze.tools import TMA_PREFIXES, is_tensor_core_opcode

#: Loops of at most this many instructions without tensor-core instructions are spin loops.
SPIN_MAX = 4

_FUNC = re.compile(r"^\s*Function\s*:\s*(\S+)|^\s*\.text\.(\S+?):?\s*$")
_LINE = re.compile(
    r"/\*([0-9a-fA-F]{4,})\*/\s+(?:(@!?U?P[T0-9]+)\s+)?([A-Z][A-Z0-9_]*(?:\.[A-Za-z0-9_]+)*)"
    r"\s*([^;]*);"
)
_TARGET = re.compile(r"0x([0-9a-fA-F]+)\s*$")

#: Opcodes (up to the first dot) of each per-iteration load field.
GLOBAL_LOADS = frozenset({"LDG"})
SHARED_LOADS = frozenset({"LDS", "LDSM"})
ASYNC_COPIES = frozenset({"LDGSTS", "UTMALDG", "UBLKCP"})
I2F = frozenset({"I2F", "I2FP"})
#: A warpgroup MMA's shape in its opcode: ``HGMMA.64x128x16.F32.BF16`` (M x N x K).
_WGMMA_SHAPE = re.compile(r"^[A-Z]*GMMA\.(\d+)x(\d+)x(\d+)")


@dataclass(frozen=True)
class Instr:
    """One SASS instruction: address, guard predicate (``""`` when none), full opcode with its
    modifiers (``BAR.SYNC.DEFER_BLOCKING``) and operand text."""

    addr: int
    pred: str
    opcode: str
    operands: str

    @property
    def base(self) -> str:
        """The opcode up to its first dot (``HGMMA`` for ``HGMMA.64x128x16.F32.BF16``)."""
        return self.opcode.split(".", 1)[0]

    @property
    def never(self) -> bool:
        """Guarded by ``@!PT`` (never executes: ptxas' padding) or a ``NOP``."""
        return self.pred == "@!PT" or self.base == "NOP"

    @property
    def is_branch(self) -> bool:
        return self.base == "BRA"

    @property
    def target(self) -> int | None:
        """The branch target address, or None (not a branch, or an indirect one)."""
        if not self.is_branch:
            return None
        m = _TARGET.search(self.operands)
        return int(m.group(1), 16) if m else None

    @property
    def cta_barrier(self) -> bool:
        """``BAR.SYNC`` of barrier 0 without a thread count (``__syncthreads``); a named
        barrier of some warps (``BAR.SYNC 0x1, 0x100``, ``BAR.SYNC R1``) is not."""
        return self.opcode in ("BAR.SYNC", "BAR.SYNC.DEFER_BLOCKING") and self.operands.strip() in (
            "0x0",
            "0",
        )


@dataclass(frozen=True)
class Loop:
    """A loop: the address range ``[start, end]`` (target of the back edge to its branch)."""

    start: int
    end: int
    instructions: int
    mma: int

    @property
    def spin(self) -> bool:
        return self.mma == 0 and self.instructions <= SPIN_MAX

    def contains(self, other: Loop) -> bool:
        return other is not self and self.start <= other.start and other.end <= self.end


def parse_functions(text: str) -> dict[str, list[Instr]]:
    """Per function (as named by ``cuobjdump -sass`` or ``nvdisasm``), its instructions."""
    out: dict[str, list[Instr]] = {}
    cur: list[Instr] | None = None
    for line in text.splitlines():
        if m := _FUNC.match(line):
            cur = out.setdefault(next(g for g in m.groups() if g), [])
            continue
        if cur is not None and (i := _LINE.search(line)):
            addr, pred, opcode, operands = i.groups()
            cur.append(Instr(int(addr, 16), pred or "", opcode, operands.strip()))
    return out


def parse_instructions(text: str) -> list[Instr]:
    """The instructions of a SASS listing of one function (no function header needed)."""
    return parse_functions("Function : f\n" + text)["f"]


def _counted(instrs: list[Instr], start: int, end: int) -> list[Instr]:
    return [i for i in instrs if start <= i.addr <= end and not i.never]


def _stub_return(instrs: list[Instr], index: dict[int, int], branch: Instr, target: int) -> bool:
    """Whether ``branch`` (backward, to ``target``) returns from a wait's retry stub."""
    if branch.pred:
        return False
    pos = index.get(target)
    if not pos:
        return False
    before = instrs[pos - 1]
    entry = before.target
    return bool(before.pred) and entry is not None and target < entry <= branch.addr


def find_loops(instrs: list[Instr]) -> list[Loop]:
    """Every loop of one function's instructions, by start address (see the module doc)."""
    index = {ins.addr: n for n, ins in enumerate(instrs)}
    ends: dict[int, int] = {}
    for ins in instrs:
        t = ins.target
        if t is None or t >= ins.addr or ins.never:
            continue
        if _stub_return(instrs, index, ins, t):
            continue
        ends[t] = max(ends.get(t, t), ins.addr)
    loops = []
    for start, end in sorted(ends.items()):
        body = _counted(instrs, start, end)
        mma = sum(1 for i in body if is_tensor_core_opcode(i.base))
        loops.append(Loop(start, end, len(body), mma))
    return loops


def hot_loop(loops: list[Loop]) -> Loop | None:
    """The hot loop (see the module doc), or None when there is no loop but spin loops."""
    real = [lp for lp in loops if not lp.spin]
    with_mma = [lp for lp in real if lp.mma]
    if with_mma:
        inner = [lp for lp in with_mma if not any(lp.contains(o) for o in with_mma)]
        return max(inner, key=lambda lp: (lp.mma, -lp.start))
    inner = [lp for lp in real if not any(lp.contains(o) for o in real)]
    if not inner:
        return None
    return max(inner, key=lambda lp: (lp.instructions, -lp.start))


def _op_counts(instrs: list[Instr], prefix: str) -> dict[str, float]:
    counts = Counter(i.base for i in instrs)
    return {f"{prefix}{op}": float(n) for op, n in sorted(counts.items())}


def _wgmma_ns(body: list[Instr]) -> list[int]:
    """The N of every warpgroup MMA (HGMMA, QGMMA, ...) in ``body``."""
    return [int(m.group(2)) for i in body if (m := _WGMMA_SHAPE.match(i.opcode))]


def loop_fields(body: list[Instr]) -> dict[str, float]:
    """Per-iteration fields of a loop body (without ``loop.``; see Expect's docstring)."""
    mma = sum(1 for i in body if is_tensor_core_opcode(i.base))
    other = len(body) - mma
    fields = {
        "instructions": float(len(body)),
        "mma": float(mma),
        "mma_ratio": mma / other if other else float("inf"),
        "barriers": float(sum(1 for i in body if i.cta_barrier)),
        "global_loads": float(sum(1 for i in body if i.base in GLOBAL_LOADS)),
        "shared_loads": float(sum(1 for i in body if i.base in SHARED_LOADS)),
        "async_copies": float(sum(1 for i in body if i.base in ASYNC_COPIES)),
        "i2f": float(sum(1 for i in body if i.base in I2F)),
        "mufu": float(sum(1 for i in body if i.base == "MUFU")),
        "wgmma_min_n": float(min(_wgmma_ns(body), default=0)),
    }
    fields.update(_op_counts(body, "op."))
    return fields


def sass_metrics(instrs: list[Instr]) -> dict[str, float]:
    """The SASS metrics of one function: ``kernel.op.*``, ``loops``, ``tma`` and, when it has
    a hot loop, ``loop.*`` (names as in :class:`~millkernels.ops.analysis_spec.Expect`)."""
    executed = [i for i in instrs if not i.never]
    metrics = _op_counts(executed, "kernel.op.")
    loops = find_loops(instrs)
    metrics["loops"] = float(sum(1 for lp in loops if not lp.spin))
    metrics["tma"] = float(any(i.base.startswith(TMA_PREFIXES) for i in executed))
    hot = hot_loop(loops)
    if hot is not None:
        body = _counted(instrs, hot.start, hot.end)
        metrics.update({f"loop.{k}": v for k, v in loop_fields(body).items()})
    return metrics
