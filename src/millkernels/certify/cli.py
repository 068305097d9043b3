"""``millkernels keygen | certify | verify``: plain typer command functions; the main CLI mounts
them with ``app.command()(keygen)`` etc.

Exit codes: 0 pass, 1 a check failed (or verify rejected), 2 usage error, 3 could not run.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Any

import typer

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_COULD_NOT_RUN = 0, 1, 2, 3


class CertFormat(str, Enum):
    table = "table"
    json = "json"


def keygen(
    private: Path = typer.Option(
        ..., "--private", help="where to write the Ed25519 private key (PEM, mode 0600)"
    ),
    public: Path = typer.Option(..., "--public", help="where to write the public key (PEM)"),
    force: bool = typer.Option(False, "--force", help="overwrite existing key files"),
) -> None:
    """Make an Ed25519 key pair for signing certificates."""
    from millkernels.certify.certificate import keygen as _keygen

    try:
        kid = _keygen(private, public, overwrite=force)
    except FileExistsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    except (RuntimeError, OSError) as exc:  # cryptography missing, cannot write there
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_COULD_NOT_RUN) from None
    typer.echo(f"wrote {private} (private, mode 0600) and {public} (key id {kid})")


class _Progress:
    """Rich progress bar on stderr while probes run."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = Console(stderr=True)
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self.task: Any = None
        self.running: set[str] = set()

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        if event == "preflight":
            inv = data["inventory"]
            n = len(inv["gpus"])
            where = f"{n} GPU(s) via NVML" if inv["available"] else f"NVML: {inv['error']}"
            self.console.print(
                f"preflight: {where}; profile {data['profile']} ({data['mode']} mode)",
                markup=False,
                soft_wrap=True,
            )
        elif event == "plan":
            self.bar.start()
            self.task = self.bar.add_task("probes", total=data["total"], completed=data["resumed"])
            if data["resumed"]:
                self.console.print(f"resuming: {data['resumed']} probe(s) already finished")
        elif event == "start":
            self.running.add(self._name(data))
            self.bar.update(self.task, description="running " + ", ".join(sorted(self.running)))
        elif event == "done":
            self.running.discard(self._name(data))
            rec = data["record"]
            if rec["status"] != "ok":
                from rich.markup import escape

                self.console.print(
                    f"[magenta]{self._name(data)}: {rec['status']}[/] "
                    + escape(rec.get("message", "")),
                    soft_wrap=True,
                )
            self.bar.update(
                self.task, advance=1, description="running " + ", ".join(sorted(self.running))
            )
        elif event == "finished":
            self.bar.stop()

    @staticmethod
    def _name(d: dict[str, Any]) -> str:
        return d["probe"] + ("" if d.get("gpu") is None else f"@{d['gpu']}")


def certify(
    profile: str = typer.Option(
        "auto", "--profile", help="auto (detect the SKU) or a profile name"
    ),
    quick: bool = typer.Option(False, "--quick", help="short probes (about 2 minutes on a node)"),
    targets: Path | None = typer.Option(
        None, "--targets", help="an operator's targets file (JSON)"
    ),
    key: Path | None = typer.Option(
        None,
        "--key",
        help="Ed25519 private key to sign with (default: the node key, $MILLKERNELS_KEY or "
        "~/.config/millkernels/node-key.pem, made on first use)",
    ),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run in --out"),
    force: bool = typer.Option(
        False, "--force", help="replace a certificate already in --out (a new run)"
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        help="directory for certificate.json, report.html, metrics.prom, signer.pub, "
        "results.jsonl (created; one holding a certificate needs --force or --resume)",
    ),
    fmt: CertFormat = typer.Option(CertFormat.table, "--format", help="table or json"),
) -> None:
    """Certify this node (or, under torchrun, the pod): preflight, probes, verdict, signed
    certificate and reports."""
    from millkernels.certify import certificate as C
    from millkernels.certify import report
    from millkernels.certify.node import CouldNotRun, NodeConfig, UsageError, certify_node
    from millkernels.certify.outdir import OutputError
    from millkernels.certify.pod import pod_env, run_pod

    if key is None:
        try:
            key, key_notes = C.node_key()
            for note in key_notes:
                typer.echo(note, err=True)
        except RuntimeError:
            pass  # cryptography missing: the certificate is written unsigned and says so
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_USAGE) from None
        except OSError as exc:
            typer.echo(f"error: cannot create the node key {C.node_key_path()}: {exc}", err=True)
            raise typer.Exit(EXIT_COULD_NOT_RUN) from None
    progress = _Progress() if fmt is CertFormat.table else None
    cfg = NodeConfig(
        out=out,
        profile=profile,
        quick=quick,
        targets=targets,
        key=key,
        resume=resume,
        force=force,
        progress=progress,
    )
    if targets is not None and profile != "auto":
        typer.echo("error: give --profile or --targets, not both", err=True)
        raise typer.Exit(EXIT_USAGE)
    try:
        env = pod_env()
        if env is not None:
            raise typer.Exit(run_pod(cfg, env))
        res = certify_node(cfg)
    except (UsageError, ValueError) as exc:
        if progress:
            progress.bar.stop()
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    except (CouldNotRun, OutputError) as exc:
        if progress:
            progress.bar.stop()
        typer.echo(f"error: could not run: {exc}", err=True)
        raise typer.Exit(EXIT_COULD_NOT_RUN) from None
    doc = json.loads(res.paths["certificate"].read_text())
    if fmt is CertFormat.json:
        sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    else:
        report.print_summary(doc, res.notes)
        for name, p in res.paths.items():
            typer.echo(f"{name}: {p}")
    if fmt is CertFormat.json:
        for note in res.notes:
            typer.echo(note, err=True)
    raise typer.Exit(res.exit_code)


def verify(
    cert: Path = typer.Argument(..., help="certificate.json"),
    public: Path = typer.Option(
        ...,
        "--public",
        help="the pinned Ed25519 public key (PEM) the certificate must be signed by",
    ),
    allow_cpu: bool = typer.Option(
        False, "--allow-cpu", help="also accept a CPU certificate (it says nothing about any GPU)"
    ),
    node: str | None = typer.Option(
        None, "--node", help="the hostname or machine id the certificate must be for"
    ),
    gpu_uuid: list[str] | None = typer.Option(
        None, "--gpu-uuid", help="a GPU UUID the certificate must have certified (repeatable)"
    ),
) -> None:
    """Accept a certificate (exit 0, one `valid: ...` line) only when it is signed by the pinned
    key, its content is consistent and passing, it has not expired, it is a GPU certificate (or
    --allow-cpu) and it is for --node / every --gpu-uuid given; otherwise exit 1 with
    `rejected: <reason>`."""
    from millkernels.certify.certificate import verify_file

    ok, reason = verify_file(
        cert, public, allow_cpu=allow_cpu, node=node, gpu_uuids=list(gpu_uuid or [])
    )
    if ok:
        typer.echo(reason)
        raise typer.Exit(EXIT_OK)
    typer.echo(f"rejected: {reason}", err=True)
    raise typer.Exit(EXIT_FAILED)
