"""Drop-in linear layers: :class:`QuantLinear` and :func:`quantize_model`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from millkernels.ops.quant import api
from millkernels.ops.quant.formats import (
    FP8_SCHEMES,
    QuantizedWeight,
    _check_scheme,
    quantize,
)

log = logging.getLogger(__name__)


def _check_loaded(module: QuantLinear, incompatible_keys: Any) -> None:
    """After ``load_state_dict``: the loaded buffers must make a valid weight (dtypes, shapes
    and values: finite scales, zero points in range), else ValueError naming the field."""
    module._weight(check=True)


class QuantLinear(nn.Module):
    """``y = x @ W^T + b`` with a quantised ``W`` (:class:`QuantizedWeight`).

    The weight's tensors are buffers (``qweight``, ``scales``, optionally ``zeros`` and
    ``perm``, and ``meta``), so ``state_dict()`` / ``load_state_dict()`` and ``.to(device)``
    work as for ``nn.Linear``; the bias, if any, is a parameter. Inputs are (..., in_features)
    float16/bfloat16.
    """

    # registered in __init__ (buffers from the weight's state dict; the bias a parameter)
    qweight: torch.Tensor
    scales: torch.Tensor
    bias: torch.Tensor | None

    def __init__(
        self,
        qweight: QuantizedWeight,
        bias: torch.Tensor | None = None,
        *,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if not isinstance(qweight, QuantizedWeight):
            raise TypeError(f"qweight: expected a QuantizedWeight, got {type(qweight).__name__}")
        self.in_features = qweight.in_features
        self.out_features = qweight.out_features
        self.scheme = qweight.scheme
        self.backend = backend
        self._group_size = qweight.group_size
        self._symmetric = qweight.symmetric
        for name, t in qweight.state_dict().items():
            self.register_buffer(name, t)
        self._optional = tuple(k for k in ("zeros", "perm") if k in qweight.tensors())
        self.register_load_state_dict_post_hook(_check_loaded)
        if bias is not None:
            if tuple(bias.shape) != (self.out_features,):
                raise ValueError(
                    f"bias: expected shape ({self.out_features},), got {tuple(bias.shape)}"
                )
            self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, scheme: str, **kw: Any) -> QuantLinear:
        """Quantise ``linear.weight`` with :func:`quantize` (``**kw``: ``group_size``,
        ``symmetric``; ``backend`` goes to the layer); the bias is kept in the weight's dtype."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear: expected an nn.Linear, got {type(linear).__name__}")
        backend = kw.pop("backend", "auto")
        qw = quantize(linear.weight.detach(), scheme, **kw)
        return cls(qw, linear.bias, backend=backend)

    def _apply(self, fn, recurse=True):
        # .half()/.to(dtype) must not convert the quantised buffers (fp8 codes, fp32 scales):
        # they only follow device moves. The bias converts like nn.Linear's.
        names = [k for k in self._buffers if self._buffers[k] is not None]
        saved = {k: self._buffers.pop(k) for k in names}
        try:
            super()._apply(fn, recurse)
        finally:
            for k, t in saved.items():
                target = fn(torch.empty(0, device=t.device)).device
                self._buffers[k] = t.to(target)
        return self

    @property
    def weight(self) -> QuantizedWeight:
        """The quantised weight (views of this module's buffers, checked when they were set)."""
        return self._weight(check=False)

    def _weight(self, check: bool) -> QuantizedWeight:
        return QuantizedWeight(
            scheme=self.scheme,
            shape=(self.out_features, self.in_features),
            qweight=self.qweight,
            scales=self.scales,
            zeros=getattr(self, "zeros", None) if "zeros" in self._optional else None,
            perm=getattr(self, "perm", None) if "perm" in self._optional else None,
            group_size=self._group_size,
            symmetric=self._symmetric,
            check=check,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias
        if bias is not None and bias.dtype != x.dtype:
            bias = bias.to(x.dtype)
        return api.matmul(x, self.weight, bias, backend=self.backend)

    def extra_repr(self) -> str:
        g = "" if self.scheme in FP8_SCHEMES else f", group_size={self._group_size}"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"scheme={self.scheme!r}{g}, bias={self.bias is not None}"
        )


def quantize_model(
    model: nn.Module,
    scheme: str,
    *,
    filter: Callable[[str, nn.Linear], bool] | None = None,
    **kw: Any,
) -> tuple[list[str], dict[str, str]]:
    """Replace every ``nn.Linear`` of ``model`` (in place) by a :class:`QuantLinear`.

    Parameters
    ----------
    filter
        ``filter(name, linear) -> bool``: replace only where True (e.g. skip ``lm_head``).
    **kw
        ``group_size``, ``symmetric``, ``backend`` (as for :meth:`QuantLinear.from_linear`).

    Returns
    -------
    (replaced, skipped)
        The qualified names replaced, and ``{name: reason}`` for the linears left as they
        were (a shape the scheme cannot serve, or the filter). Skips are also logged.
    """
    _check_scheme(scheme)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    replaced: list[str] = []
    skipped: dict[str, str] = {}
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    for name, linear in targets:
        if not name:
            skipped[name] = "the model itself is an nn.Linear (use QuantLinear.from_linear)"
            continue
        if filter is not None and not filter(name, linear):
            skipped[name] = "excluded by filter"
            continue
        try:
            q = QuantLinear.from_linear(linear, scheme, **dict(kw))
        except (ValueError, TypeError) as exc:
            skipped[name] = str(exc)
            log.info("quantize_model: skipped %s: %s", name, exc)
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, q)
        replaced.append(name)
    return replaced, skipped
