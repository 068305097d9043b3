"""Reports of a baseline comparison: a rich table for the terminal and markdown for CI
summaries (``$GITHUB_STEP_SUMMARY``). Both list every benchmark that moved (regressions,
improvements, changes within the noise) with its old and new time, the ratio new / old, the
change and the noise band it was judged against."""

from __future__ import annotations

from typing import Any

from millkernels.bench.comparison import (
    IMPROVEMENT,
    MISSING,
    NEW,
    REGRESSION,
    UNCHANGED,
    WITHIN_NOISE,
    Change,
    Comparison,
)

#: New / missing benchmarks listed one per line in the terminal before "... and N more".
MAX_LISTED = 5
_STYLE = {REGRESSION: "bold red", IMPROVEMENT: "green", WITHIN_NOISE: "yellow", UNCHANGED: ""}


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


def _pct(value: float | None, sign: bool = True) -> str:
    if value is None:
        return "-"
    return f"{100 * value:+.1f}%" if sign else f"{100 * value:.1f}%"


def _ratio(change: Change) -> str:
    return "-" if change.ratio is None else f"{change.ratio:.3f}"


def verdict(comparison: Comparison) -> str:
    """One line: PASSED or FAILED and what moved."""
    n = comparison.counts()
    head = "FAILED" if comparison.failed else "PASSED"
    parts = [f"{n[REGRESSION]} regressed", f"{n[IMPROVEMENT]} improved"]
    parts += [f"{n[WITHIN_NOISE]} moved within the noise", f"{n[UNCHANGED]} unchanged"]
    if n[NEW]:
        parts.append(f"{n[NEW]} new")
    if n[MISSING]:
        parts.append(f"{n[MISSING]} missing")
    return f"{head}: {', '.join(parts)}"


def rule(comparison: Comparison) -> str:
    """The gate in words."""
    factor = "" if comparison.noise_factor == 1 else f"{comparison.noise_factor:g} x "
    return (
        f"a benchmark regresses when new / old - 1 > {_pct(comparison.threshold, sign=False)} "
        f"and > its noise ({factor}the sum of both sides' spreads: two robust standard deviations "
        "of the run medians, or half of p20..p80 for a single run)"
    )


def _baseline_line(comparison: Comparison) -> str:
    b = comparison.baseline
    shas = b.source.get("git_sha")
    sha = ", ".join(s[:12] for s in shas) if isinstance(shas, list) else str(shas or "?")[:12]
    runs = sorted({m.runs for m in b.entries.values()})
    runs_text = "/".join(str(r) for r in runs) or "?"
    tag = " (EXAMPLE, not a measured reference)" if b.example else ""
    where = b.path or "(not from a file)"
    return f"{where}: {b.device}{tag}, {runs_text} runs, git {sha}, {b.created}"


def print_report(comparison: Comparison, *, console: Any = None, show_all: bool = False) -> None:
    """Print the comparison as a table with a verdict line (rich)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console(width=max(140, Console().width))
    console.print(f"[bold]baseline[/bold] {escape(_baseline_line(comparison))}")
    console.print(f"[bold]results [/bold] {escape(comparison.device)}, {comparison.runs} run(s)")
    for warning in comparison.warnings:
        console.print(f"[yellow]warning: {escape(warning)}[/yellow]")
    shown = comparison.moved + (comparison.with_status(UNCHANGED) if show_all else [])
    if shown:
        table = Table(title="benchmarks that moved" if not show_all else "all benchmarks")
        for name, justify in [
            ("status", "left"), ("benchmark", "left"), ("old us", "right"),
            ("new us", "right"), ("ratio", "right"), ("change", "right"), ("noise", "right"),
        ]:  # fmt: skip
            table.add_column(name, justify=justify)  # type: ignore[arg-type]
        for c in shown:
            style = _STYLE.get(c.status, "")
            table.add_row(
                f"[{style}]{c.status}[/{style}]" if style else c.status,
                escape(c.name), _us(c.old.center_us if c.old else None),
                _us(c.new.center_us if c.new else None), _ratio(c), _pct(c.change),
                f"+-{_pct(c.noise, sign=False)}",
            )  # fmt: skip
        console.print(table)
    extra = ((NEW, "new (not in the baseline)", ""), (MISSING, "missing (not run)", "yellow"))
    for status, title, style in extra:
        found = comparison.with_status(status)
        shown_here = found if show_all else found[:MAX_LISTED]
        for c in shown_here:
            m = c.new if status == NEW else c.old
            line = f"{title}: {escape(c.name)}: {_us(m.center_us if m else None)} us"
            console.print(f"[{style}]{line}[/{style}]" if style else line)
        if len(found) > len(shown_here):
            console.print(f"... and {len(found) - len(shown_here)} more {title.split()[0]}")
    console.print(f"[dim]{rule(comparison)}[/dim]")
    style = "bold red" if comparison.failed else "bold green"
    console.print(f"[{style}]{verdict(comparison)}[/{style}]")


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(comparison: Comparison, *, show_all: bool = False) -> str:
    """The comparison as GitHub-flavoured markdown (for ``$GITHUB_STEP_SUMMARY``)."""
    mark = ":x:" if comparison.failed else ":white_check_mark:"
    lines = [f"### {mark} Benchmark comparison {verdict(comparison)}", ""]
    lines += [
        f"- **baseline**: `{_md(_baseline_line(comparison))}`",
        f"- **results**: {_md(comparison.device)}, {comparison.runs} run(s)",
        f"- **rule**: {rule(comparison)}",
    ]
    lines += [f"- **warning**: {_md(w)}" for w in comparison.warnings]
    lines.append("")
    shown = comparison.moved + (comparison.with_status(UNCHANGED) if show_all else [])
    if shown:
        lines += [
            "| status | benchmark | old (us) | new (us) | ratio new/old | change | noise |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for c in shown:
            status = f"**{c.status}**" if c.status == REGRESSION else c.status
            lines.append(
                f"| {status} | {_md(c.name)} | {_us(c.old.center_us if c.old else None)} | "
                f"{_us(c.new.center_us if c.new else None)} | {_ratio(c)} | {_pct(c.change)} | "
                f"±{_pct(c.noise, sign=False)} |"
            )
    else:
        lines.append("No benchmark moved beyond the threshold.")
    for status, title in ((NEW, "new (not in the baseline)"), (MISSING, "missing (not run)")):
        found = comparison.with_status(status)
        if not found:
            continue
        lines += ["", f"<details><summary>{len(found)} {title}</summary>", ""]
        for c in found:
            m = c.new if status == NEW else c.old
            lines.append(f"- {_md(c.name)}: {_us(m.center_us if m else None)} us")
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def markdown_error(baseline: str, message: str) -> str:
    """Markdown for a comparison that could not be made."""
    return f"### :warning: Benchmark comparison not made\n\n- baseline `{baseline}`: {message}\n"
