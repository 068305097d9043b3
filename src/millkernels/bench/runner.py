"""Running suites: each suite's rows go to a callback as they come, so a run cut short keeps
what it measured; failures and errors are collected for the exit code."""

from __future__ import annotations

import shlex
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from millkernels.bench import registry
from millkernels.bench.context import BenchContext, SuiteUnavailable
from millkernels.bench.rows import Row

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_COULD_NOT_RUN = 0, 1, 2, 3


@dataclass
class RunReport:
    """What a run produced: rows, failed checks, suites that errored or were unavailable."""

    rows: list[Row] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def exit_code(self) -> int:
        """1 if a check failed, else 3 if a suite could not run, else 0."""
        if self.failures:
            return EXIT_FAILED
        return EXIT_COULD_NOT_RUN if self.errors else EXIT_OK


def command_for(suite: str, extra_args: Sequence[str] = ()) -> str:
    """The command line that reproduces ``suite``'s rows."""
    return shlex.join(["millkernels", "bench", suite, *extra_args])


def run_suites(
    names: Sequence[str],
    ctx: BenchContext,
    *,
    extra_args: Sequence[str] = (),
    explicit: bool = True,
    on_row: Callable[[Row], None] | None = None,
) -> RunReport:
    """Run the named suites in order with ``ctx``.

    A suite raising :class:`SuiteUnavailable` counts as an error when it was named
    (``explicit``) and as a note under ``bench all``. Any other exception is an error.
    """
    report = RunReport()
    known = registry.suites()
    for name in names:
        ctx.suite, ctx.command = name, command_for(name, extra_args)
        before_fail, before_skip = len(ctx.failures), len(ctx.skipped)
        try:
            for row in known[name].fn(ctx):
                report.rows.append(row)
                if on_row is not None:
                    on_row(row)
        except SuiteUnavailable as exc:
            target = report.errors if explicit else report.unavailable
            target[name] = f"cannot run here: {exc}"
            ctx.log(f"{name}: cannot run here: {exc}")
        except Exception as exc:
            report.errors[name] = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            ctx.log(f"{name}: error:\n{traceback.format_exc()}")
        report.failures += ctx.failures[before_fail:]
        report.skipped += ctx.skipped[before_skip:]
    return report
