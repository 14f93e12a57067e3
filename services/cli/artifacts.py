"""`promptopt artifacts put | list | get | delete`: the files a service keeps for its runs, uploaded
as content and named by id (`--on optimizer|surrogate|tuner`, default optimizer). `promptopt run`
uploads the files its flags name by itself; this group lists, fetches and removes them."""

from __future__ import annotations

import datetime
from pathlib import Path

from rich.console import Console
from rich.table import Column, Table

from services.common.artifact_client import ArtifactClient

console = Console()
SERVICES = ("optimizer", "surrogate", "tuner")


def add_commands(sub, client_config) -> None:
    """The `artifacts` command group; `client_config(address, args)` builds a ClientConfig."""
    group = sub.add_parser("artifacts", help="upload, list, fetch and delete a service's uploaded files")
    commands = group.add_subparsers(dest="artifacts_command", required=True)

    def command(name, help_text, func):
        p = commands.add_parser(name, help=help_text)
        p.add_argument("--on", choices=SERVICES, default="optimizer", help="the service that keeps them")
        p.set_defaults(func=lambda args: func(args, ArtifactClient(client_config(getattr(args, args.on), args))))
        return p

    p = command("put", "upload a local file; prints its id", put)
    p.add_argument("kind", help="instructions | exemplar_sets | evaluations (optimizer); embeddings (surrogate)")
    p.add_argument("file")
    command("list", "list the uploaded artifacts", show).add_argument("--kind", default="")
    p = command("get", "write an artifact's content to a file", get)
    p.add_argument("artifact_id")
    p.add_argument("-o", "--output", required=True, help="the local file to write")
    command("delete", "delete an artifact", delete).add_argument("artifact_id")


def put(args, client: ArtifactClient) -> int:
    with client:
        print(client.upload(args.kind, args.file))
    return 0


def show(args, client: ArtifactClient) -> int:
    with client:
        found = client.list(args.kind)
    table = Table(Column("id", no_wrap=True, min_width=32), "kind", "name", "bytes", "uploaded")  # ids copied whole
    for a in found:
        when = datetime.datetime.fromtimestamp(a.create_time.seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M")
        table.add_row(a.artifact_id, a.kind, a.name, str(a.size_bytes), when)
    console.print(table)
    return 0


def get(args, client: ArtifactClient) -> int:
    with client:
        response = client.get(args.artifact_id)
    Path(args.output).write_bytes(response.content)
    console.print(f"wrote {response.artifact.size_bytes} bytes ({response.artifact.kind}) to {args.output}")
    return 0


def delete(args, client: ArtifactClient) -> int:
    with client:
        deleted = client.delete(args.artifact_id)
    console.print(f"deleted {args.artifact_id}" if deleted else f"no artifact {args.artifact_id}")
    return 0 if deleted else 1
