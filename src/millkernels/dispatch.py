"""Backend dispatch: one capability table per op family.

A table lists the family's backends in the order ``backend="auto"`` tries them. Each backend
answers two questions with a reason string, or ``None`` when it can: is it usable on this
machine at all (``available``), and can it serve this particular call (``serves``). A named
backend that cannot serve raises :class:`BackendUnavailable` with the reason; there is no
silent fallback. ``MILLKERNELS_BACKEND`` overrides ``auto``: either one name for every family
(``triton``) or per family (``probes=cuda,attention=triton``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

BACKENDS = ("triton", "cuda", "reference")
ENV_VAR = "MILLKERNELS_BACKEND"

Reason = str | None


class BackendUnavailable(RuntimeError):
    """A named backend cannot serve a call; the message says why."""


@dataclass(frozen=True)
class CallFacts:
    """The facts a capability table decides on, with the same meaning in every family.

    Families subclass it (frozen dataclasses) to add their own fields (``head_dim``,
    ``scheme``, ``world``...). ``dtype`` is the torch dtype's name ("bfloat16"), ``device`` the
    device type ("cpu", "cuda"), ``capability`` the GPU's (major, minor) or None off a GPU.
    """

    op: str
    device: str
    dtype: str
    capability: tuple[int, int] | None = None

    @staticmethod
    def of_tensor(t: Any) -> dict[str, Any]:
        """``device``, ``dtype`` and ``capability`` of tensor ``t``, as keyword arguments."""
        from millkernels import runtime

        device = t.device.type
        return {
            "device": device,
            "dtype": str(t.dtype).removeprefix("torch."),
            "capability": runtime.capability(t.device) if device == "cuda" else None,
        }


@dataclass(frozen=True)
class BackendSpec:
    """What one backend of a family supports, as data for ``info`` and as checks for dispatch.

    ``available()`` returns why the backend cannot run on this machine at all (None: it can).
    ``serves(call)`` returns why it cannot serve this call (None: it can); ``call`` is the
    family's :class:`CallFacts` (a subclass adding the family's own fields).
    """

    name: str
    archs: str
    dtypes: tuple[str, ...]
    notes: str = ""
    available: Callable[[], Reason] = lambda: None
    serves: Callable[[Any], Reason] = lambda call: None


@dataclass(frozen=True)
class CapabilityTable:
    """The backends of one op family, in ``auto`` preference order, and the rule behind it."""

    family: str
    backends: tuple[BackendSpec, ...]
    auto_rule: str
    ops: tuple[str, ...] = field(default_factory=tuple)
    #: The family's other choices on this machine, in words, by name (``millkernels info``
    #: prints them; e.g. attention's TMA kernels: ``{"tma": "off: ..."}``).
    choices: Callable[[], dict[str, str]] = dict

    def __post_init__(self) -> None:
        for spec in self.backends:
            if spec.name not in BACKENDS:
                raise ValueError(f"{self.family}: unknown backend {spec.name!r}")
        TABLES[self.family] = self

    def names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.backends)

    def spec(self, name: str) -> BackendSpec:
        for b in self.backends:
            if b.name == name:
                return b
        raise BackendUnavailable(
            f"{self.family} has no {name!r} backend; it has {', '.join(self.names())}"
        )

    def reason(self, name: str, call: CallFacts) -> Reason:
        """Why backend ``name`` cannot serve ``call`` (None when it can)."""
        spec = self.spec(name)
        return spec.available() or spec.serves(call)

    def select(self, backend: str, call: CallFacts, op: str = "") -> str:
        """Resolve ``backend`` ("auto" or a name) for ``call``; raise when it cannot serve."""
        what = f"{self.family}.{op}" if op else self.family
        if not isinstance(backend, str):
            raise TypeError(f"backend: expected a str, got {type(backend).__name__}")
        if backend != "auto" and backend not in BACKENDS:
            raise ValueError(f"backend: expected 'auto' or one of {BACKENDS}, got {backend!r}")
        if backend == "auto":
            forced = env_override(self.family)
            if forced is not None:
                backend = forced
                what += f" (forced by {ENV_VAR})"
        if backend != "auto":
            why = self.reason(backend, call)
            if why:
                raise BackendUnavailable(f"backend {backend!r} cannot serve {what}: {why}")
            return backend
        reasons = {}
        for spec in self.backends:
            why = self.reason(spec.name, call)
            if why is None:
                return spec.name
            reasons[spec.name] = why
        detail = "; ".join(f"{k}: {v}" for k, v in reasons.items())
        raise BackendUnavailable(f"no backend can serve {what}: {detail}")


TABLES: dict[str, CapabilityTable] = {}


def env_override(family: str) -> str | None:
    """The backend ``MILLKERNELS_BACKEND`` forces for ``family``, or None."""
    raw = os.environ.get(ENV_VAR, "").strip()
    if not raw:
        return None
    chosen = None
    for part in raw.split(","):
        key, sep, value = part.strip().partition("=")
        name, fam = (value.strip(), key.strip()) if sep else (key, None)
        if name not in (*BACKENDS, "auto"):
            raise ValueError(
                f"{ENV_VAR}={raw!r}: expected a backend from {BACKENDS} or 'family=backend' pairs"
            )
        if fam is None or fam == family:
            chosen = name
    return None if chosen == "auto" else chosen


def constant_under_compile(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.compiler.assume_constant_result(fn)`` without importing ``torch._dynamo``.

    Backend choices are plain facts that ``torch.compile`` should run once at trace time and
    bake into the graph. The torch decorator only marks ``fn`` (the attribute below) but
    imports ``torch._dynamo`` first, about a second at import time; this sets the same mark
    and leaves the import to ``torch.compile``. When dynamo is already loaded it defers to
    the torch decorator itself.
    """
    if "torch._dynamo" in sys.modules:
        import torch

        return torch.compiler.assume_constant_result(fn)
    fn._dynamo_marked_constant = True  # type: ignore[attr-defined]
    return fn
