"""Training runs on the surrogate from the CLI (`promptopt flow train`, `promptopt neuro train`):
start or resume one, follow it with an epoch bar, then report it and write its results."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from promptopt.operations.v1 import operations_pb2
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console()


LABELS = {"flow": "flow training", "neuro": "Neuro-Latent training"}  # command group -> what it trains


def start(client, request, command: str, args, describe: Callable[[dict], str], write) -> int:
    """Start `request` on `client` (the `command` group's FlowClient or NeuroClient) and, unless
    --no-watch, finish it."""
    run = client.start(request)
    console.print(f"started {LABELS[command]} [bold]{run.run_id}[/] ({run.total_steps} epochs)")
    if args.no_watch:
        print(run.run_id)
        return 0
    return finish(client, run.run_id, command, Path(args.results_dir), describe, write)


def resume(client, run_id: str, command: str, results_dir: Path, describe, write) -> int:
    run = client.resume(run_id)
    console.print(f"resumed {LABELS[command]} [bold]{run.run_id}[/] at epoch {run.step}/{run.total_steps}")
    return finish(client, run.run_id, command, results_dir, describe, write)


def finish(client, run_id: str, command: str, results_dir: Path, describe, write) -> int:
    """Watch a training run to its end, then print `describe(report)` and `write(run_id, report,
    results_dir)` its results JSON and plot; 1 (with how to resume it) if it did not succeed."""
    report = watch_training(client, run_id)
    run = client.get(run_id)
    console.print(f"\n[bold]{run.run_id}[/] {operations_pb2.RunState.Name(run.state)}")
    if run.state == operations_pb2.RUN_STATE_SUCCEEDED and report:
        console.print(describe(report))
        json_path, png_path = write(run.run_id, report, results_dir)
        console.print(f"results: {json_path}  plot: {png_path}")
        return 0
    console.print(f"[red]{run.error or 'not finished'}[/]; continue it with: promptopt {command} resume {run.run_id}")
    return 1


def watch_training(client, run_id: str) -> dict | None:
    """Follow a training run (flow or Neuro-Latent) with an epoch bar; its report (None if it did
    not succeed)."""
    run, report = client.get(run_id), None
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[losses]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("epochs", total=run.total_steps, completed=run.step, losses="")
        for event in client.watch(run_id):
            kind = event.WhichOneof("event")
            if kind == "progress" and event.progress.total_steps:
                progress.update(task, completed=event.progress.step)
            elif kind == "progress":  # the job's own line: the epoch's losses
                progress.update(task, losses=event.progress.message)
            elif kind == "result":
                report = json.loads(event.result.report_json)
            elif kind == "error":
                progress.console.log(f"[red]{event.error.message}")
    return report
