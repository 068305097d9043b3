"""What a Triton ``@triton.autotune`` kernel chose, as plain data (kernels report it in
``chosen_config()`` / ``tuned_config()``; benchmark rows carry it as ``config``)."""

from __future__ import annotations

from typing import Any


def autotune_config(kernel: Any) -> dict[str, Any] | None:
    """The config a Triton ``@triton.autotune`` kernel chose last (for a row's ``config``),
    or None when it has not been tuned yet or is not autotuned."""
    cfg = getattr(kernel, "best_config", None)
    if cfg is None:
        return None
    out: dict[str, Any] = dict(getattr(cfg, "kwargs", {}) or {})
    for key in ("num_warps", "num_stages", "num_ctas", "maxnreg"):
        value = getattr(cfg, key, None)
        if value is not None:
            out[key] = value
    return out
