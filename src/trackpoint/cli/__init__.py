"""The `trackpoint` command: run the tracker, check and describe configuration files."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from trackpoint.config import ConfigError, LoadedConfig, json_schema, load

app = typer.Typer(
    name="trackpoint",
    help="A fast, configurable event tracker for AdTech and MarTech.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Check a configuration file or print its JSON schema.", no_args_is_help=True)
app.add_typer(config_app, name="config")

err = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML configuration file; without it the embedded default is used."),
]


def _load_or_exit(path: Path | None) -> LoadedConfig:
    try:
        return load(path)
    except ConfigError as exc:
        for issue in exc.issues:
            err.print(f"[bold red]error[/] {issue}", highlight=False, soft_wrap=True)
        err.print(f"{len(exc.issues)} error(s) in {exc.issues[0].source}", highlight=False)
        raise typer.Exit(2) from None


@app.command()
def run(
    config: ConfigOption = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", "-w", min=1, help="Worker processes (default: one per CPU core)."),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address of the tracking port (default 0.0.0.0).")] = None,
    port: Annotated[
        int | None, typer.Option("--port", "-p", min=1, max=65535, help="Tracking port (default 8080).")
    ] = None,
    admin_port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Admin port on 127.0.0.1 (default 8081).")
    ] = None,
) -> None:
    """Run the tracker: workers on the tracking port, health and metrics on the admin port."""
    from trackpoint.edge.supervisor import Overrides
    from trackpoint.edge.supervisor import run as run_supervisor

    loaded = _load_or_exit(config)
    overrides = Overrides(host=host, port=port, workers=workers, admin_port=admin_port)
    raise typer.Exit(run_supervisor(loaded, None if config is None else str(config), overrides))


@config_app.command("check")
def config_check(
    file: Annotated[Path, typer.Argument(help="The YAML configuration file to validate.")],
) -> None:
    """Validate a configuration file; every error is printed with its file, line and key."""
    loaded = _load_or_exit(file)
    types = ", ".join(loaded.config.event_types)
    print(f"{file}: ok (version {loaded.version}; event types: {types})")


@config_app.command("schema")
def config_schema() -> None:
    """Print the JSON schema of the configuration file."""
    json.dump(json_schema(), sys.stdout, indent=2)
    sys.stdout.write("\n")


@app.command()
def docs(
    out_dir: Annotated[Path, typer.Argument(help="Directory for the generated Markdown pages.")],
    config: ConfigOption = None,
) -> None:
    """Generate the reference pages: every configuration option, and the endpoints of a configuration."""
    from trackpoint.config.reference import write_docs

    for path in write_docs(_load_or_exit(config), out_dir):
        print(path)


def main() -> None:
    app()
