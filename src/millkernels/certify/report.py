"""Reports: the terminal (rich), a self-contained HTML page (jinja2 + matplotlib, images
inline as base64 PNG), and a Prometheus text file in dcgm-exporter's style (upper-case names,
``gpu``/``UUID``/``modelName``/``Hostname`` labels).

Without matplotlib the HTML report has no charts and says so.
"""

from __future__ import annotations

import base64
import io
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from millkernels.certify import verdict as V
from millkernels.certify.outdir import write_atomic

_STATUS_STYLE = {V.PASS: "green", V.FAIL: "bold red", V.ERROR: "bold magenta", V.SKIPPED: "yellow"}


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _limit_text(lim: dict[str, Any] | None) -> str:
    if not lim:
        return ""
    parts = []
    if lim.get("min") is not None:
        parts.append(f">= {_fmt(lim['min'])}")
    if lim.get("max") is not None:
        parts.append(f"<= {_fmt(lim['max'])}")
    return ", ".join(parts)


def _col(gpu: Any) -> str:
    return "node" if gpu is None else f"GPU {gpu}"


def where(cert: dict[str, Any], gpu: Any, node: str | None = None) -> str:
    """Where a check was measured, the same words in every report: ``GPU i``, ``node`` for a
    GPU node's node-wide checks, ``cpu`` on a CPU certificate; a pod check leads with its
    node's name."""
    label = "cpu" if cert["device_class"] == "cpu" and gpu is None else _col(gpu)
    return f"{node} {label}" if node else label


def _status_summary(cert: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """One row's status: ``pass``, or each non-passing status with where it happened."""
    bad: dict[str, list[str]] = {}
    for c in rows:
        if c["status"] != V.PASS:
            bad.setdefault(c["status"], []).append(where(cert, c["gpu"], c.get("node")))
    if not bad:
        return V.PASS
    return "; ".join(f"{st}: {', '.join(w)}" for st, w in bad.items())


# ------------------------------------------------------------------------------ terminal


def escape(text: str) -> str:
    """``text`` with rich markup characters escaped (messages may hold ``[...]``)."""
    from rich.markup import escape as _escape

    return _escape(text)


def print_summary(doc: dict[str, Any], notes: list[str], console: Any = None) -> None:
    """Every check with its status and limit, then the verdict. On a terminal wide enough for
    it: a check x GPU table and a table of the checks that did not pass (long text wraps, never
    cut); otherwise (CI logs, pipes, narrow terminals): one full line per check."""
    from rich.console import Console

    console = console or Console()
    cert = doc["certificate"]
    if not (console.is_terminal and _print_tables(console, cert)):
        _print_lines(console, cert)
    style = "bold green" if cert["verdict"] == V.PASS else "bold red"
    counts = ", ".join(f"{k} {v}" for k, v in cert["summary"]["counts"].items() if v)
    until = cert["valid_until"]
    console.print(
        f"[{style}]verdict: {cert['verdict'].upper()}[/] ({cert['mode']} mode; {counts}); "
        f"valid until {until}",
        soft_wrap=True,
    )
    for note in notes:
        console.print(f"[yellow]{escape(note)}[/]", soft_wrap=True)


def _print_lines(console: Any, cert: dict[str, Any]) -> None:
    """Plain text, nothing cut: one line per check with its limit, status and value at every
    place, then one line per check that did not pass with its reason and message."""

    def out(text: str) -> None:
        console.print(text, markup=False, highlight=False, soft_wrap=True)

    out(f"{cert['label']} - {cert['node'].get('hostname', '')}")
    checks = cert["checks"]
    for name in dict.fromkeys(c["name"] for c in checks):
        rows = [c for c in checks if c["name"] == name]
        worst = next(
            (s for s in (V.ERROR, V.FAIL, V.SKIPPED) if any(c["status"] == s for c in rows)), V.PASS
        )
        limit = next((_limit_text(c.get("limit")) for c in rows if c.get("limit")), "")
        head = ", ".join(x for x in (rows[0]["unit"], limit and f"limit {limit}") if x)
        values = ", ".join(
            f"{where(cert, c['gpu'], c.get('node'))} {_fmt(c['value'])}"
            + ("" if c["status"] == V.PASS else f" {c['status']}")
            for c in rows
        )
        out(f"{worst.upper():<7} {name}" + (f" ({head})" if head else "") + f": {values}")
    bad = [c for c in checks if c["status"] != V.PASS]
    if bad:
        out("not passed:")
    for c in bad:
        parts = [
            f"{c['status'].upper():<7}",
            c["name"],
            f"[{where(cert, c['gpu'], c.get('node'))}]",
            f"value {_fmt(c['value'])}" + (f" {c['unit']}" if c["unit"] else ""),
        ]
        if c.get("limit"):
            parts.append(f"limit {_limit_text(c['limit'])}")
        parts.append(c["reason"])
        if c.get("message"):
            parts.append(f"- {c['message']}")
        out(" ".join(parts))


def _print_tables(console: Any, cert: dict[str, Any]) -> bool:
    """The check x GPU table and the not-passed table; False (nothing printed) when the first
    does not fit the terminal unwrapped."""
    from rich.measure import Measurement
    from rich.table import Table

    checks = cert["checks"]
    cols = sorted(
        {c["gpu"] for c in checks}, key=lambda g: (g is not None, g if g is not None else -1)
    )
    names = list(dict.fromkeys(c["name"] for c in checks))
    t = Table(title=escape(f"{cert['label']} - {cert['node'].get('hostname', '')}"))
    for h in ("check", "unit", "limit", "status"):
        t.add_column(h, overflow="fold")
    for g in cols:
        t.add_column(where(cert, g), justify="right", overflow="fold")
    by = {(c["name"], c["gpu"]): c for c in checks}
    for n in names:
        rows = [c for c in checks if c["name"] == n]
        limit = next((_limit_text(c.get("limit")) for c in rows if c.get("limit")), "")
        row = [escape(n), escape(rows[0]["unit"]), limit, escape(_status_summary(cert, rows))]
        for g in cols:
            c = by.get((n, g))
            if c is None:
                row.append("")
                continue
            v = _fmt(c["value"])
            v = v[:8] if c["unit"] == "sha256" else v
            mark = "" if c["status"] == V.PASS else f" {c['status']}"
            row.append(f"[{_STATUS_STYLE[c['status']]}]{escape(v)}{mark}[/]")
        t.add_row(*row)
    if Measurement.get(console, console.options.update_width(1 << 16), t).maximum > console.width:
        return False
    console.print(t)
    bad = [c for c in checks if c["status"] != V.PASS]
    if bad:
        p = Table(title="not passed")
        for h in ("check", "where", "status", "reason", "value", "limit", "message"):
            p.add_column(h, overflow="fold")
        for c in bad:
            p.add_row(
                escape(c["name"]),
                escape(where(cert, c["gpu"], c.get("node"))),
                f"[{_STATUS_STYLE[c['status']]}]{c['status']}[/]",
                escape(c["reason"]),
                escape(_fmt(c["value"])),
                _limit_text(c.get("limit")),
                escape(c.get("message", "")),
            )
        console.print(p)
    return True


# ------------------------------------------------------------------------------ charts


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _charts(
    cert: dict[str, Any], records: dict[Any, dict[str, Any]]
) -> tuple[list[dict[str, str]], str | None]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return [], f"charts need matplotlib ({exc})"
    charts = []
    floors = cert["profile"]["targets"].get("floors", {})
    checks = cert["checks"]
    metric_names = [m for m in dict.fromkeys(c["name"] for c in checks) if m in floors]
    for metric in metric_names:
        rows = [c for c in checks if c["name"] == metric and isinstance(c["value"], (int, float))]
        if not rows:
            continue
        if all(c["value"] == 0 for c in rows) and floors[metric].get("max") == 0:
            continue  # error counts that are all zero: the table says it; a chart adds nothing
        labels = [where(cert, c["gpu"], c.get("node")) for c in rows]
        spread_bad = {
            c["gpu"] for c in checks if c["name"] == f"spread.{metric}" and c["status"] == V.FAIL
        }
        colors = [
            "#c62828"
            if c["status"] != V.PASS
            else "#ef6c00"
            if c["gpu"] in spread_bad
            else "#2e7d32"
            for c in rows
        ]
        fig, ax = plt.subplots(figsize=(max(3.5, 0.6 * len(rows) + 2), 2.6))
        values = [c["value"] for c in rows]
        bars = ax.bar(labels, values, color=colors, width=0.6)
        ax.bar_label(bars, labels=[_fmt(v) for v in values], fontsize=7)
        lim = floors[metric]
        _value_axis(ax, values, lim)
        if lim.get("min") is not None:
            ax.axhline(
                lim["min"], color="#c62828", linestyle="--", label=f"floor {_fmt(lim['min'])}"
            )
        if lim.get("max") is not None:
            ax.axhline(
                lim["max"], color="#ef6c00", linestyle="--", label=f"limit {_fmt(lim['max'])}"
            )
        title = f"{metric} ({lim.get('unit', rows[0]['unit'])})"
        if ax.get_yscale() == "log":
            title += ", log scale"
        if spread_bad:
            title += "; orange: >limit below node median"
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, loc="upper right")
        charts.append({"title": metric, "png": _png(fig)})
    spread = [c for c in checks if c["name"].startswith("spread.")]
    if spread:
        metrics = list(dict.fromkeys(c["name"] for c in spread))
        gpus = sorted({c["gpu"] for c in spread})
        fig, ax = plt.subplots(figsize=(max(4.5, 0.5 * len(gpus) * len(metrics) / 2 + 3), 3))
        w = 0.8 / len(metrics)
        for k, m in enumerate(metrics):
            vals = {c["gpu"]: c["value"] for c in spread if c["name"] == m}
            ax.bar(
                [g + k * w for g in gpus], [100 * (vals.get(g) or 0) for g in gpus], w, label=m[7:]
            )
        limit = cert["profile"]["targets"].get("spread", {}).get("limit", 0.05)
        ax.axhline(-100 * limit, color="#c62828", linestyle="--", label=f"-{limit:.0%} limit")
        ax.set_xticks([g + 0.4 - w / 2 for g in gpus], [f"GPU {g}" for g in gpus])
        ax.set_ylabel("% vs node median", fontsize=8)
        ax.set_title("spread against the node median", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, ncol=2)
        charts.append({"title": "spread", "png": _png(fig)})
    series = [(k, r["series"]) for k, r in records.items() if r.get("series", {}).get("power_w")]
    if series:
        fig, ax = plt.subplots(figsize=(6, 2.8))
        for (_, gpu), s in sorted(series, key=lambda x: (x[0][1] is None, x[0][1] or 0)):
            pts = [(t, p) for t, p in zip(s["t"], s["power_w"], strict=False) if p is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=_col(gpu), linewidth=1)
        ax.set_xlabel("s into the sustained load", fontsize=8)
        ax.set_ylabel("board power (W, NVML)", fontsize=8)
        ax.set_title("power over time", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, ncol=4)
        charts.append({"title": "power over time", "png": _png(fig)})
    return charts, None


def _value_axis(ax: Any, values: list[float], limit: dict[str, Any]) -> None:
    """Y axis of a per-metric bar chart: log (plain-number ticks) when :func:`value_scale` says
    so, always spanning the floor/limit line, with headroom for the bar labels and legend."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    nums = [*values, *_limit_lines(limit)]
    top = max(nums)
    if value_scale(values, limit) == "log":
        ax.set_yscale("log")
        ax.set_ylim(min(nums) / 3, top * 4)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _fmt(float(v))))
        ax.yaxis.set_minor_formatter(NullFormatter())
    elif top > 0:
        ax.set_ylim(top=top * 1.35)


def _limit_lines(limit: dict[str, Any]) -> list[float]:
    """The floor and limit a chart draws as lines (those ``limit`` sets)."""
    return [limit[k] for k in ("min", "max") if limit.get(k) is not None]


def value_scale(values: list[float], limit: dict[str, Any]) -> str:
    """``"log"`` when a chart's bars and its floor/limit line are more than 10x apart (a
    0.4 GB/s floor under 70 GB/s bars would sit on the axis), else ``"linear"``; log needs
    every number positive."""
    nums = [*values, *_limit_lines(limit)]
    if not nums or min(nums) <= 0:
        return "linear"
    return "log" if max(nums) / min(nums) > 10 else "linear"


def energy_source(cert: dict[str, Any], records: dict[Any, dict[str, Any]]) -> str:
    """Where the report's power and energy figures come from, as its footer says it: RAPL
    package counters on a CPU certificate (the domains the probe read, or why none), NVML
    board readings on a GPU certificate. Never wall power."""
    if cert["device_class"] != "cpu":
        return "Board power and energy come from NVML (GPU board only), not wall power."
    for r in records.values():
        domains = r.get("info", {}).get("rapl_domains")
        if domains:
            return (
                f"CPU power and energy come from RAPL ({', '.join(domains)}: CPU package "
                "counters), not wall power."
            )
    why = next(
        (
            u.get("reason")
            for r in records.values()
            for u in r.get("unavailable", [])
            if u.get("metric") == "cpu_energy_j"
        ),
        None,
    )
    if why:
        return f"No energy was measured ({why})."
    return "CPU energy, where measured, comes from RAPL package counters, not wall power."


# ------------------------------------------------------------------------------ HTML


def render_html(doc: dict[str, Any], records: dict[Any, dict[str, Any]], notes: list[str]) -> str:
    """The report page as one self-contained HTML string."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("millkernels.certify", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
    )
    cert = doc["certificate"]
    if doc.get("signature") is None:  # the page says it once, in its own box
        notes = [n for n in notes if "NOT signed" not in n]
    charts, chart_note = _charts(cert, records)
    if chart_note:
        notes = [*notes, chart_note]
    checks = sorted(
        cert["checks"],
        key=lambda c: (c["status"] == V.PASS, c["name"], c["gpu"] if c["gpu"] is not None else -1),
    )
    sig = doc.get("signature")
    p2p = next(
        (
            r["info"]
            for k, r in records.items()
            if k[0] == "p2p" and r.get("info", {}).get("matrix_gbps")
        ),
        None,
    )
    return env.get_template("report.html.j2").render(
        p2p=p2p,
        cert=cert,
        checks=checks,
        charts=charts,
        notes=notes,
        signature=sig,
        unsigned_reason=doc.get("unsigned_reason"),
        fmt=_fmt,
        limit_text=_limit_text,
        where=where,
        energy=energy_source(cert, records),
        generated=datetime.now().astimezone().isoformat(timespec="seconds"),
        profile_json=json.dumps(cert["profile"]["targets"], indent=2),
    )


def write_html(
    path: Path, doc: dict[str, Any], records: dict[Any, dict[str, Any]], notes: list[str]
) -> None:
    write_atomic(Path(path), render_html(doc, records, notes))


# ------------------------------------------------------------------------------ Prometheus


def _metric_name(check: str) -> str:
    return "MK_CERT_" + re.sub(r"[^A-Za-z0-9]+", "_", check).strip("_").upper()


def _labels(d: dict[str, Any]) -> str:
    def esc(v: Any) -> str:
        return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in d.items() if v is not None) + "}"


def prometheus_text(doc: dict[str, Any]) -> str:
    """Gauges: node verdict, validity end, per-GPU verdict, every numeric check, and each
    check's status (1 = pass) with its reason as a label."""
    cert = doc["certificate"]
    host = cert["node"].get("hostname") or "unknown"
    base = {"Hostname": host, "profile": cert["profile"]["name"], "mode": cert["mode"]}
    gpu_info = {g["index"]: g for g in cert["node"].get("gpus", [])}

    def gl(gpu: Any) -> dict[str, Any]:
        if gpu is None:
            return {"gpu": where(cert, None)}
        g = gpu_info.get(gpu, {})
        return {"gpu": gpu, "UUID": g.get("uuid"), "modelName": g.get("name")}

    series: dict[str, tuple[str, list[str]]] = {}

    def add(name: str, help_: str, labels: dict[str, Any], value: float) -> None:
        series.setdefault(name, (help_, []))[1].append(f"{name}{_labels(labels)} {value}")

    add(
        "MK_CERT_NODE_PASS",
        "1 when the node's certificate verdict is pass",
        base,
        1 if cert["verdict"] == V.PASS else 0,
    )
    until = datetime.fromisoformat(cert["valid_until"].replace("Z", "+00:00")).timestamp()
    add("MK_CERT_VALID_UNTIL_SECONDS", "certificate expiry, Unix seconds", base, int(until))
    add(
        "MK_CERT_SIGNED", "1 when the certificate is signed", base, 1 if doc.get("signature") else 0
    )
    for g in cert["summary"]["gpus"]:
        add(
            "MK_CERT_GPU_PASS",
            "1 when the GPU passed every check",
            {**base, **gl(g["gpu"])},
            1 if g["verdict"] == V.PASS else 0,
        )
    for c in cert["checks"]:
        labels = {**base, **gl(c["gpu"])}
        if c.get("node"):  # pod certificates
            labels["node"] = c["node"]
        if isinstance(c["value"], (int, float)) and not isinstance(c["value"], bool):
            add(_metric_name(c["name"]), f"{c['name']} ({c['unit']})", labels, c["value"])
        add(
            "MK_CERT_CHECK_PASS",
            "1 when the check passed; status and reason as labels",
            {**labels, "check": c["name"], "status": c["status"], "reason": c["reason"]},
            1 if c["status"] == V.PASS else 0,
        )
    lines = []
    for name, (help_, rows) in series.items():
        lines += [f"# HELP {name} {help_}", f"# TYPE {name} gauge", *rows]
    return "\n".join(lines) + "\n"


def write_prometheus(path: Path, doc: dict[str, Any]) -> None:
    write_atomic(Path(path), prometheus_text(doc))
