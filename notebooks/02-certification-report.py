# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Certification report: a fleet of certificates
#
# `millkernels certify --out DIR` writes `DIR/certificate.json` per node: `{"certificate":
# {...}, "signature": {...}}`, where the certificate holds the node and GPU identity, the
# profile, the `verdict` and a list of `checks` (`name`, `gpu`, `value`, `unit`, `status`,
# `reason`). This notebook loads every certificate it finds and plots the fleet: verdicts per
# node, the status of every check on every GPU, measured values against their floors, and the
# reasons for failures.
#
# Where it looks: the directories in `$MILLKERNELS_CERTIFICATES` (separated by `:`), then
# `benchmarks/results/` and `notebooks/data/` under the repository. Where it finds none (or
# `millkernels.certify` is not installed), it **generates a small synthetic fleet** of
# certificate-like dicts and says so: its values are ratios to made-up floors, not
# measurements of any GPU.

# %%
import importlib
import json
import os
import random
from collections import Counter
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.colors import ListedColormap


def repo_root() -> Path:
    here = Path.cwd().resolve()
    for p in (here, *here.parents):
        if (p / "pyproject.toml").is_file() and (p / "notebooks").is_dir():
            return p
    return here


def find_certificates() -> list[Path]:
    dirs = [Path(d) for d in os.environ.get("MILLKERNELS_CERTIFICATES", "").split(":") if d]
    dirs += [repo_root() / "benchmarks" / "results", repo_root() / "notebooks" / "data"]
    found: list[Path] = []
    for d in dirs:
        if d.is_dir():
            found += sorted(d.rglob("certificate.json"))
    return found


try:
    importlib.import_module("millkernels.certify")
    CERTIFY = True
except ImportError as exc:
    print(f"millkernels.certify is not available: {exc}")
    CERTIFY = False

paths = find_certificates() if CERTIFY else []
print(f"certificate files found: {len(paths)}")

# %% [markdown]
# ## Load, or make a synthetic fleet
# The synthetic fleet: 4 nodes of 8 GPUs. Throughput checks are expressed as a ratio to the
# profile's floor (1.0 is the floor); preflight checks as read. A few faults are planted, the
# kind certification exists to catch: a GPU 8% slower than its siblings, a PCIe link trained
# down to Gen4, a lowered power limit, and a probe that hung.

# %%
SPREAD = 0.05  # a GPU more than 5% below its node's median fails
THROUGHPUT = {"hbm_copy": 1.18, "gemm_bf16": 1.12, "gemm_fp8": 1.10, "pcie_h2d": 1.15}


def synthetic_fleet(nodes: int = 4, gpus: int = 8, seed: int = 3) -> list[dict]:
    """Certificate-like dicts (the certificate part only, unsigned) for a made-up fleet."""
    rng = random.Random(seed)
    faults = {
        ("node-2", 5, "gemm_bf16"): 0.92,  # one GPU 8% below its siblings
        ("node-3", 1, "pcie_gen"): 4,  # link trained down
        ("node-1", 6, "power_limit"): 0.86,  # lowered power cap
        ("node-0", 2, "hbm_copy"): None,  # the probe hung
    }
    fleet = []
    for n in range(nodes):
        node = f"node-{n}"
        checks = []
        for name, level in THROUGHPUT.items():
            values = {g: level * (1 + rng.gauss(0, 0.008)) for g in range(gpus)}
            for g in range(gpus):
                factor = faults.get((node, g, name))
                if factor is not None:
                    values[g] *= factor
            median = sorted(values.values())[gpus // 2]
            for g, v in values.items():
                if (node, g, name) in faults and faults[(node, g, name)] is None:
                    checks.append(
                        dict(
                            name=name,
                            gpu=g,
                            value=None,
                            unit="x floor",
                            status="error",
                            reason="MK_PROBE_TIMEOUT",
                        )
                    )
                    continue
                if v < 1.0:
                    status, reason = "fail", "DCGM_FR_STRESS_LEVEL"
                elif v < median * (1 - SPREAD):
                    status, reason = "fail", "MK_SPREAD_BELOW_MEDIAN"
                else:
                    status, reason = "pass", "OK"
                checks.append(
                    dict(
                        name=name,
                        gpu=g,
                        value=round(v, 4),
                        unit="x floor",
                        floor=1.0,
                        status=status,
                        reason=reason,
                    )
                )
        for g in range(gpus):
            gen = faults.get((node, g, "pcie_gen"), 5)
            checks.append(
                dict(
                    name="pcie_gen",
                    gpu=g,
                    value=gen,
                    unit="gen",
                    floor=5,
                    status="pass" if gen >= 5 else "fail",
                    reason="OK" if gen >= 5 else "DCGM_FR_PCIE_GENERATION",
                )
            )
            limit = faults.get((node, g, "power_limit"), 1.0)
            checks.append(
                dict(
                    name="power_limit",
                    gpu=g,
                    value=limit,
                    unit="x default",
                    floor=1.0,
                    status="pass" if limit >= 1.0 else "fail",
                    reason="OK" if limit >= 1.0 else "DCGM_FR_ENFORCED_POWER_LIMIT",
                )
            )
        verdict = "pass" if all(c["status"] == "pass" for c in checks) else "fail"
        fleet.append(
            {
                "node": {"hostname": node},
                "profile": "synthetic",
                "verdict": verdict,
                "checks": checks,
                "synthetic": True,
            }
        )
    return fleet


def node_name(cert: dict, path: Path | None) -> str:
    node = cert.get("node") or {}
    name = node.get("hostname") or node.get("name") if isinstance(node, dict) else node
    return str(name or (path.parent.name if path else "?"))


if paths:
    certificates = []
    for p in paths:
        doc = json.loads(p.read_text())
        cert = doc.get("certificate", doc)
        cert.setdefault("node", {"hostname": node_name(cert, p)})
        certificates.append(cert)
    SYNTHETIC = False
    print(f"loaded {len(certificates)} certificates: {[str(p) for p in paths]}")
else:
    certificates = synthetic_fleet()
    SYNTHETIC = True
    print(
        "No certificate files found: using a SYNTHETIC fleet of 4 nodes x 8 GPUs "
        "(ratios to made-up floors, not measurements)."
    )

# %% [markdown]
# ## One table of checks

# %%
rows = []
for cert in certificates:
    node = node_name(cert, None)
    for check in cert.get("checks", []):
        rows.append({"node": node, **check})
checks = sorted({r["name"] for r in rows})
nodes = [node_name(c, None) for c in certificates]
print(f"{len(rows)} checks over {len(nodes)} nodes; check names: {checks}")
status_counts = Counter(r["status"] for r in rows)
print("statuses:", dict(status_counts))
for r in rows:
    if r["status"] not in ("pass", "skipped"):
        print(
            f"  {r['node']} gpu {r.get('gpu')}: {r['name']} = {r.get('value')} "
            f"{r.get('unit', '')} -> {r['status']} ({r.get('reason')})"
        )

# %% [markdown]
# ## Verdicts per node

# %%
title_tag = " (SYNTHETIC fleet)" if SYNTHETIC else ""
fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(certificates)))
for i, cert in enumerate(certificates):
    name = node_name(cert, None)
    failed = sum(r["status"] in ("fail", "error") for r in rows if r["node"] == name)
    colour = "tab:green" if cert.get("verdict") == "pass" else "tab:red"
    ax.barh(i, max(failed, 0.2), color=colour)
    ax.text(max(failed, 0.2) + 0.1, i, f"{cert.get('verdict', '?')}", va="center")
ax.set_yticks(range(len(certificates)), nodes)
ax.set_xlabel("failed or errored checks")
ax.set_title("node verdicts" + title_tag)
plt.show()

# %% [markdown]
# ## Every check on every GPU

# %%
STATUS_CODE = {"pass": 0, "skipped": 1, "error": 2, "fail": 3}
gpu_keys = sorted({(r["node"], r.get("gpu")) for r in rows}, key=lambda k: (k[0], str(k[1])))
grid = [[-1] * len(checks) for _ in gpu_keys]
for r in rows:
    grid[gpu_keys.index((r["node"], r.get("gpu")))][checks.index(r["name"])] = STATUS_CODE.get(
        r["status"], 2
    )
cmap = ListedColormap(["white", "tab:green", "lightgrey", "tab:orange", "tab:red"])
fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(checks), 0.8 + 0.18 * len(gpu_keys)))
ax.imshow([[v + 1 for v in line] for line in grid], cmap=cmap, vmin=0, vmax=4, aspect="auto")
ax.set_xticks(range(len(checks)), checks, rotation=30, ha="right")
ax.set_yticks(range(len(gpu_keys)), [f"{n} gpu {g}" for n, g in gpu_keys], fontsize=7)
ax.set_title("check status: green pass, red fail, orange error, grey skipped" + title_tag)
plt.show()

# %% [markdown]
# ## Measured values against their floors
# One panel per numeric check; each dot is a GPU, coloured by status; the dashed line is the
# floor where the certificate records one.


# %%
def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


numeric = [c for c in checks if any(is_number(r.get("value")) and r["name"] == c for r in rows)]
cols = min(3, len(numeric)) or 1
fig, axes = plt.subplots(
    (len(numeric) + cols - 1) // cols or 1,
    cols,
    figsize=(4.2 * cols, 3.0 * ((len(numeric) + cols - 1) // cols or 1)),
    squeeze=False,
)
colours = {"pass": "tab:green", "fail": "tab:red", "error": "tab:orange", "skipped": "grey"}
for ax, name in zip(axes.flat, numeric, strict=False):
    mine = [r for r in rows if r["name"] == name and is_number(r.get("value"))]
    for r in mine:
        x = nodes.index(r["node"]) + random.Random(str(r.get("gpu"))).uniform(-0.2, 0.2)
        ax.scatter(x, r["value"], color=colours.get(r["status"], "black"), s=18)
    floors = {r.get("floor") for r in mine if r.get("floor") is not None}
    for floor in floors:
        ax.axhline(floor, color="black", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(nodes)), nodes, rotation=30, fontsize=8)
    ax.set_title(f"{name} ({mine[0].get('unit', '') if mine else ''})", fontsize=10)
for ax in list(axes.flat)[len(numeric) :]:
    ax.axis("off")
fig.suptitle("values per GPU" + title_tag)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Why checks failed

# %%
reasons = Counter(r.get("reason") for r in rows if r["status"] in ("fail", "error"))
fig, ax = plt.subplots(figsize=(7, 0.6 + 0.4 * max(len(reasons), 1)))
labels = list(reasons) or ["(no failures)"]
ax.barh(range(len(labels)), [reasons[k] for k in reasons] or [0], color="tab:red")
ax.set_yticks(range(len(labels)), labels)
ax.set_xlabel("checks")
ax.set_title("failure reasons" + title_tag)
plt.show()
