"""Probe process entry point.

``python -m millkernels.certify.probes.run NAME --out FILE [--gpu I] [--gpus I,J,..]
[--uuids U,V,..] [--quick] [--params JSON]``

Writes ``{"ok": true, "measurements": [...], "unavailable": [...], "info": {...},
"series": {...}}`` to FILE (atomically) and exits 0, or ``{"ok": false, "error": ...,
"reason": ...}`` and exits 1 when the probe raised. A crash or hang leaves no file: the
runner records it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="millkernels.certify.probes.run")
    ap.add_argument("name")
    ap.add_argument("--out", required=True)
    ap.add_argument("--gpu", type=int, default=None)
    ap.add_argument("--gpus", default="")
    ap.add_argument("--uuids", default="")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--params", default="{}")
    a = ap.parse_args(argv)

    from millkernels.certify.probes.registry import ProbeContext, get
    from millkernels.certify.verdict import error_reason_for

    spec = get(a.name)
    ctx = ProbeContext(
        name=a.name,
        device=a.device,
        quick=a.quick,
        gpu=a.gpu,
        gpus=[int(x) for x in a.gpus.split(",") if x],
        uuids=[x for x in a.uuids.split(",") if x],
        params=json.loads(a.params),
    )
    try:
        module, func = spec.target.split(":")
        getattr(importlib.import_module(module), func)(ctx)
        payload = {"ok": True, **ctx.result()}
        code = 0
    except Exception as exc:  # recorded as an error check, never a pass
        msg = f"{type(exc).__name__}: {exc}"
        payload = {
            "ok": False,
            "error": msg,
            "reason": error_reason_for(msg),
            "traceback": traceback.format_exc()[-4000:],
            **ctx.result(),
        }
        code = 1
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(_finite(payload), f, allow_nan=False, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, a.out)
    return code


def _finite(x: object) -> object:
    """NaN and infinities become None (JSON has no such numbers; the verdict errors on None)."""
    if isinstance(x, float) and (x != x or x in (float("inf"), float("-inf"))):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


if __name__ == "__main__":
    sys.exit(main())
