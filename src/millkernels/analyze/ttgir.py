"""What a Triton kernel's TTGIR (Triton's GPU dialect, after layout assignment) says about its
dots: how many put several warps on the same part of the result tile.

A dot's result has an MMA layout ``#ttg.nvidia_mma<{versionMajor = v, warpsPerCTA = [wm, wn],
instrShape = [im, in, ...]}>``. One repetition of the layout covers ``wm * 16`` rows (an MMA
instruction of one warp covers 16 rows, on Hopper a warpgroup's 4 warps cover 64) and
``wn * in`` columns. When that exceeds the result's rows ``M`` (or columns ``N``), the layout
wraps around: warps along that dimension hold the same elements and compute the same products,
so the dot does the work of fewer warps with more. Such a dot is a *duplicating* dot
(``dup_warp_dots``). Batched dots (rank 3) are judged on their last two dimensions.
"""

from __future__ import annotations

import re

_DOT = re.compile(r"=\s*(?:tt\.dot|ttng\.warp_group_dot)\s")
_RESULT = re.compile(r"->\s*tensor<([0-9x]+)x[a-z][a-z0-9]*,\s*(#[\w.]+(?:<\{[^}]*\}>)?)")
_ALIAS = re.compile(r"^(#\w+)\s*=\s*(.*)$", re.MULTILINE)
_WARPS = re.compile(r"warpsPerCTA\s*=\s*\[([0-9,\s]+)\]")
_INSTR = re.compile(r"instrShape\s*=\s*\[([0-9,\s]+)\]")
_TOTAL_WARPS = re.compile(r'"ttg\.total-num-warps"\s*=\s*(\d+)')
_NUM_WARPS = re.compile(r'"ttg\.num-warps"\s*=\s*(\d+)')

#: Rows one warp's MMA instruction covers (mma v2 m16nNkK; a Hopper warpgroup: 4 x 16 = 64).
ROWS_PER_WARP = 16


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.replace(" ", "").split(",") if x]


def duplicating(shape: list[int], layout: str) -> bool:
    """Whether an MMA ``layout`` (its attribute text) over a result of ``shape`` puts more
    warps along M or N than the tile has room for (see the module doc)."""
    warps, instr = _WARPS.search(layout), _INSTR.search(layout)
    if "mma" not in layout or warps is None or instr is None or len(shape) < 2:
        return False
    wm, wn = _ints(warps.group(1))[-2:]
    im_in = _ints(instr.group(1))
    cols = im_in[1] if len(im_in) > 1 else 8
    m, n = shape[-2:]
    return wm * ROWS_PER_WARP > m or wn * cols > n


def dup_warp_dots(ttgir: str) -> int:
    """The number of dots (``tt.dot``, ``ttng.warp_group_dot``) in ``ttgir`` whose result
    layout duplicates warps (:func:`duplicating`)."""
    aliases = {m.group(1): m.group(2) for m in _ALIAS.finditer(ttgir)}
    count = 0
    for line in ttgir.splitlines():
        if not _DOT.search(line):
            continue
        results = _RESULT.findall(line)
        if not results:
            continue
        shape, enc = results[-1]
        layout = aliases.get(enc, enc)
        count += duplicating(_ints(shape.replace("x", ",")), layout)
    return count


def total_warps(ttgir: str) -> int | None:
    """Warps of the compiled kernel, a warp-specialised kernel's partitions included."""
    m = _TOTAL_WARPS.search(ttgir) or _NUM_WARPS.search(ttgir)
    return int(m.group(1)) if m else None
