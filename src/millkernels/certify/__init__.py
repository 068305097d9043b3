"""Pod acceptance: preflight (NVML), probes (each in its own process, with a timeout), a
verdict against per-SKU targets, a signed certificate, and reports.

Entry points: :func:`millkernels.certify.node.certify_node` (one node),
:mod:`millkernels.certify.pod` (torchrun pods), :mod:`millkernels.certify.certificate`
(keygen / sign / verify), :mod:`millkernels.certify.cli` (the ``millkernels`` commands).
Nothing here touches a GPU at import time.
"""
