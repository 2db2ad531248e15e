"""`image-analyzer schemas ...`: show, verify and fetch Elephant schema sets.

A Typer sub-app the main CLI mounts with `app.add_typer(schemas_app, name="schemas")`. Like the rest of
the CLI it loads nothing heavy at import time, and prints our errors as one line with their exit code.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from image_analyzer import cli_options as o
from image_analyzer.cliutil import guarded

schemas_app = typer.Typer(
    help="Show, verify and fetch Elephant schema sets (by IPFS CID).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

SCHEMA_SET_ENV = "IMAGE_ANALYZER_SCHEMA_SET"
GATEWAY_ENV = "IMAGE_ANALYZER_IPFS_GATEWAY"


Debug = o.Debug


def _run(work: Callable[[], int], *, debug: bool) -> None:
    raise typer.Exit(guarded(work, debug=debug))


def _describe_root(root: Path) -> str:
    from image_analyzer.schemas import bundled_schema_dir

    return f"{root} (bundled)" if root == bundled_schema_dir() else str(root)


@schemas_app.command("list")
def list_command(
    schema_set: Annotated[
        Path | None,
        typer.Option(
            "--schema-set",
            envvar=SCHEMA_SET_ENV,
            help="A schema set folder, or the data-group CID of a fetched set [default: the bundled set].",
        ),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the set as JSON.")] = False,
    debug: Debug = False,
) -> None:
    """Show the active schema set: each schema's name, kind and CID."""

    def work() -> int:
        from image_analyzer.schemas import SchemaSet

        loaded = SchemaSet.load(schema_set)
        rows = [(name, loaded.kinds[name], loaded.cids[name]) for name in sorted(loaded.cids)]
        if json_output:
            payload = {
                "root": str(loaded.root),
                "data_group_cid": loaded.data_group_cid,
                "schemas": [{"name": n, "kind": k, "cid": c} for n, k, c in rows],
            }
            sys.stdout.write(json.dumps(payload, indent=2, sort_keys=True) + "\n")
            return 0
        _print_table(f"Schema set {_describe_root(loaded.root)}", ("name", "kind", "CID"), rows)
        return 0

    _run(work, debug=debug)


def _print_table(title: str, headers: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for header in headers:
        # Names and kinds stay whole; a CID folds onto a second line on a narrow terminal.
        table.add_column(header, no_wrap=header != "CID", overflow="fold")
    for row in rows:
        table.add_row(*row)
    Console(soft_wrap=True).print(table)


@schemas_app.command("verify")
def verify_command(
    directory: Annotated[
        Path | None,
        typer.Argument(
            help="A schema set folder, or the data-group CID of a fetched set [default: the active set]."
        ),
    ] = None,
    schema_set: Annotated[
        Path | None,
        typer.Option("--schema-set", envvar=SCHEMA_SET_ENV, hidden=True),
    ] = None,
    debug: Debug = False,
) -> None:
    """Check a schema set: every file matches its CID and is a JSON Schema, and a run can use the set.

    Exits 1 naming each bad file.
    """

    def work() -> int:
        from image_analyzer.schemas import bundled_schema_dir, verify_schema_set

        target = directory or schema_set
        root = bundled_schema_dir() if target is None else _resolve(target)
        report = verify_schema_set(root)
        for line in report.lines():
            sys.stdout.write(line + "\n")
        return 0 if report.ok else 1

    _run(work, debug=debug)


def _resolve(value: Path) -> Path:
    from image_analyzer.ipfs import resolve_schema_set

    return resolve_schema_set(value)


@schemas_app.command("fetch")
def fetch_command(
    cids: Annotated[list[str], typer.Argument(help="CIDs to fetch, usually one data-group schema.")],
    gateway: Annotated[
        list[str] | None,
        typer.Option(
            "--gateway",
            envvar=GATEWAY_ENV,
            help="Gateway URL, tried in the order given (repeatable; https://host, https://host/ipfs/ "
            "or a {cid} template) [default: ipfs.io, dweb.link, w3s.link].",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds per gateway request.")] = 30.0,
    dest: Annotated[
        Path | None,
        typer.Option("--dest", help="Write the set here [default: the user cache, by data-group CID]."),
    ] = None,
    debug: Debug = False,
) -> None:
    """Download schemas by CID, verify each against its CID, follow their links, and cache the set.

    Later runs use it offline with `--schema-set <folder or data-group CID>`.
    """

    def work() -> int:
        from image_analyzer.ipfs import DEFAULT_GATEWAYS, fetch_schema_set_blocking

        result = fetch_schema_set_blocking(
            cids, gateways=tuple(gateway or DEFAULT_GATEWAYS), timeout=timeout, dest=dest
        )
        _print_fetched(result)
        return 0 if result.unusable is None else 1

    _run(work, debug=debug)


def _print_fetched(result: Any) -> None:
    for entry in result.entries:
        sys.stdout.write(f"{entry.cid}  {entry.kind:<12}  {entry.name}  ({entry.origin})\n")
    for cid, reason in sorted(result.missing.items()):
        sys.stderr.write(f"warning: linked schema {cid} not fetched: {reason}\n")
    sys.stdout.write(f"schema set written to {result.folder}\n")
    if result.unusable is not None:
        sys.stderr.write(f"error: a run cannot use this set: {result.unusable}\n")
    else:
        sys.stdout.write(f"run with: --schema-set {result.folder}\n")
