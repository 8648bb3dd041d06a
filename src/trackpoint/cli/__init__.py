"""The `trackpoint` command: run the tracker, check and describe configuration files."""

from __future__ import annotations

import inspect
import json
import re
import sys
import time
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import typer.core
from rich.console import Console
from rich.markup import escape

from trackpoint import __version__
from trackpoint.config import ConfigError, LoadedConfig, json_schema, load
from trackpoint.config.model import Config
from trackpoint.plugins import registry
from trackpoint.security.resolve import resolve_secrets

if TYPE_CHECKING:  # the commands import what they use when they run
    from trackpoint.collectors.log.reader import ReadStats
    from trackpoint.collectors.rollup.config import RollupCollectorConfig
    from trackpoint.collectors.rollup.model import Row
    from trackpoint.collectors.rollup.store import Query


class _Commands(typer.core.TyperGroup):
    """The command tree, made for reading before it runs: plain metavars (`FILE`, `N`, `TEXT`) instead of typer's
    Python types (`{file}`, `<list[Path]>`), and help paragraphs joined into lines the terminal wraps itself
    (typer keeps a docstring's line breaks, which cut a sentence in the middle)."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        _for_reading(self)
        return super().main(*args, **kwargs)


app = typer.Typer(
    name="trackpoint",
    cls=_Commands,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Check a configuration file or print its JSON schema.", no_args_is_help=True)
app.add_typer(config_app, name="config")
banker_app = typer.Typer(help="The banker: budgets and spend.", no_args_is_help=True)
app.add_typer(banker_app, name="banker")

_METAVARS: dict[Any, str] = {Path: "PATH", int: "N", float: "NUMBER", str: "TEXT"}


def _for_reading(command: Any) -> None:
    """Rewrites the help of `command` and every command under it, and the metavars of their parameters:
    arguments by their name (`LOG...`, `[FILE]`), options by their kind of value (`PATH`, `N`; nothing for a flag)."""
    for sub in getattr(command, "commands", {}).values():
        _for_reading(sub)
    if command.help:
        paragraphs = re.split(r"\n\s*\n", inspect.cleandoc(command.help))
        command.help = "\n\n".join(" ".join(paragraph.split()) for paragraph in paragraphs)
    for param in command.params:
        if param.metavar is not None:
            continue
        if param.param_type_name == "argument":
            name = (param.name or "").upper()
            usage = (name if param.required else f"[{name}]") + ("..." if param.nargs == -1 else "")
            param.metavar = name
            param.get_usage_pieces = lambda ctx, usage=usage: [usage]  # typer's: `{name}`
            param.display_type_rich = lambda ctx: None  # typer's: the Python type, beside the name
        elif param.is_flag:
            param.metavar = ""
        else:
            annotation = getattr(getattr(param, "type_descriptor", None), "annotation", str)
            if typing.get_origin(annotation) is list:
                annotation = typing.get_args(annotation)[0]
            param.metavar = _METAVARS.get(annotation, "TEXT")
    help_option = command.get_help_option

    def plain_help_option(ctx: Any) -> Any:  # made on demand, so typed on demand: a flag (typer: `<bool>`)
        option = help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option

    command.get_help_option = plain_help_option


def _show_version(value: bool) -> None:
    if value:
        print(f"trackpoint {__version__}")
        raise typer.Exit


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", "-V", callback=_show_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """A fast, configurable event tracker for AdTech and MarTech."""  # the help of `trackpoint` itself


err = Console(stderr=True)


def _error(message: str) -> None:
    """Prints `error MESSAGE` on stderr. The message is text, never markup: a path, a key or a reason holding
    brackets (`logs[old]`, `trackpoint[gcs]`, `[/x]`) is printed as it is, where rich took it for a style (dropped,
    or a MarkupError traceback)."""
    err.print(f"[bold red]error[/] {escape(message)}", highlight=False, soft_wrap=True)


ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar="TRACKPOINT_CONFIG",
        help="YAML configuration file (or $TRACKPOINT_CONFIG); without either the embedded default is used.",
    ),
]


def _names_in_config(ctx: typer.Context, section: str, incomplete: str) -> list[str]:
    """Shell completion: the names a section of the command's configuration (--config, $TRACKPOINT_CONFIG or the
    embedded default) defines; none when it does not load."""
    try:
        loaded = load(ctx.params.get("config"), registry=registry())
    except ConfigError:
        return []
    names: dict[str, object] = getattr(loaded.config, section)
    return [name for name in names if name.startswith(incomplete)]


def _collector_names(ctx: typer.Context, incomplete: str) -> list[str]:
    return _names_in_config(ctx, "collectors", incomplete)


def _event_types(ctx: typer.Context, incomplete: str) -> list[str]:
    return _names_in_config(ctx, "event_types", incomplete)


def _load_or_exit(path: Path | None, secrets: bool = False) -> LoadedConfig:
    """The validated configuration (with `secrets`: every secret it names resolved too), or exit 2 with every error."""
    try:
        loaded = load(path, registry=registry())
        if secrets:
            resolve_secrets(loaded)
        return loaded
    except ConfigError as exc:
        for issue in exc.issues:
            _error(str(issue))
        err.print(escape(f"{len(exc.issues)} error(s) in {exc.issues[0].source}"), highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@app.command()
def run(  # noqa: PLR0917 - typer maps each parameter to an option
    config: ConfigOption = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", "-w", min=1, help="Worker processes (default: one per available core)."),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address of the tracking port (default 0.0.0.0).")] = None,
    port: Annotated[
        int | None, typer.Option("--port", "-p", min=1, max=65535, help="Tracking port (default 8080).")
    ] = None,
    admin_port: Annotated[int | None, typer.Option(min=1, max=65535, help="Admin port (default 8081).")] = None,
    admin_host: Annotated[
        str | None,
        typer.Option(help="Address of the admin port (default 127.0.0.1; 0.0.0.0 in a container, for probes)."),
    ] = None,
) -> None:
    """Run the tracker: workers on the tracking port, health and metrics on the admin port."""
    from trackpoint.process.supervisor import Overrides
    from trackpoint.process.supervisor import run as run_supervisor

    loaded = _load_or_exit(config, secrets=True)  # before any worker starts (the supervisor checks again on reload)
    overrides = Overrides(host=host, port=port, workers=workers, admin_port=admin_port, admin_host=admin_host)
    raise typer.Exit(run_supervisor(loaded, None if config is None else str(config), overrides, registry()))


@config_app.command("check")
def config_check(
    ctx: typer.Context,
    file: Annotated[
        Path | None,
        typer.Argument(
            help="The YAML configuration file to validate (or --config, or $TRACKPOINT_CONFIG).", show_default=False
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Validate a configuration file and resolve every secret it names (environment variables, files). Every
    problem is printed at once, each with its file, line and key, and for a misspelt name the closest valid one.

    Without a file (as an argument, --config or $TRACKPOINT_CONFIG) the embedded default is checked."""
    source = ctx.get_parameter_source("config")
    from_option = source is not None and source.name == "COMMANDLINE"  # not $TRACKPOINT_CONFIG
    if file is not None and config is not None and file != config and from_option:
        _error(f"two files to check: {file} and --config {config}; give one")
        raise typer.Exit(2)
    path = file or config  # the argument before $TRACKPOINT_CONFIG
    loaded = _load_or_exit(path, secrets=True)
    types = ", ".join(loaded.config.event_types)
    print(f"{loaded.source}: ok (version {loaded.version}; event types: {types})")


@config_app.command("schema")
def config_schema() -> None:
    """Print the JSON schema of the configuration file."""
    json.dump(json_schema(registry()), sys.stdout, indent=2)
    sys.stdout.write("\n")


@app.command()
def sign(  # noqa: PLR0917 (one argument per option)
    url: Annotated[
        str,
        typer.Argument(
            help="The tracking URL to sign: every query parameter is covered, or only the `signed_params` of the "
            "event type whose path it has (the others, such as ${AUCTION_PRICE}, are left free after `sig`)."
        ),
    ],
    config: ConfigOption = None,
    key_id: Annotated[
        str | None, typer.Option("--key-id", help="Key to sign with (default: signing.sign_with, else the first key).")
    ] = None,
    ttl: Annotated[
        int | None, typer.Option("--ttl", min=1, help="The signed URL expires after this many seconds.")
    ] = None,
    data: Annotated[
        str | None, typer.Option("--data", help="The POST body the URL will carry: its digest is signed (`bd`).")
    ] = None,
    body_file: Annotated[
        Path | None, typer.Option("--body", help="A file holding the POST body to sign (instead of --data).")
    ] = None,
) -> None:
    """Sign a tracking URL with the tracker's key (the same key `trackpoint run` uses with the same config)."""
    from urllib.parse import urlsplit

    from trackpoint.security.signing import SigningKeyError, covered_params, load_key, sign_url, signing_key_id

    try:
        parts = urlsplit(url)
        tracking = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # an unclosed IPv6 bracket, a port past 65535 (read by .port): a traceback before
        tracking = False
    if not tracking:
        _error(
            f"not a tracking URL: {url!r} (give the whole URL the tracker will receive, "
            "`https://t.example.com/c?imp=...`)"
        )
        raise typer.Exit(2)
    tracker = _load_or_exit(config).config
    signing = tracker.signing
    if not signing.keys:
        _error("the configuration has no signing keys (signing.keys)")
        raise typer.Exit(2)
    chosen = key_id or signing_key_id(signing)
    key = signing.keys.get(chosen)
    if key is None:
        _error(f"no signing key {chosen!r} (keys: {', '.join(signing.keys)})")
        raise typer.Exit(2)
    if data is not None and body_file is not None:
        _error("give the body once: --data or --body")
        raise typer.Exit(2)
    body = None if data is None else data.encode("utf-8")
    if body_file is not None:
        try:
            body = body_file.read_bytes()
        except OSError as exc:
            _error(f"--body {body_file}: {exc.strerror or exc}")
            raise typer.Exit(2) from None
    try:
        secret = load_key(chosen, key, tracker.data_dir)
    except SigningKeyError as exc:
        _error(str(exc))
        raise typer.Exit(2) from None
    expires_at = None if ttl is None else int(time.time()) + ttl
    print(sign_url(url, chosen, secret, expires_at, covered_params(tracker, url), body))


def _print_unread(out: Console, read: ReadStats, truncated_note: str, missing_note: str) -> None:
    """The files a reading command could not read to their end: cut short, or gone before it reached them."""
    for path in read.truncated:
        out.print(escape(f"  cut short: {path} (a compressed file that ends early: {truncated_note})"), highlight=False,
                  soft_wrap=True)  # fmt: skip
    for path in read.missing:
        out.print(escape(f"  gone: {path} (removed before it was read, under its name and compressed: {missing_note})"),
                  highlight=False, soft_wrap=True)  # fmt: skip


_LOGS_HELP = (
    "Log files (.jsonl, .jsonl.zst or .jsonl.gz) or directories holding them, searched down every subdirectory "
    "(logs copied back from object storage, one directory per host and day, or a whole data_dir)."
)


def _log_files_or_exit(logs: list[Path]) -> list[Path]:
    """The log files the LOG arguments name (files, or directories searched down every subdirectory), or exit 2:
    none there, or a directory that cannot be listed (its files would be left out unseen)."""
    from trackpoint.collectors.log.reader import LogSearchError, log_files

    try:
        files = log_files(logs)
    except LogSearchError as exc:
        _error(str(exc))
        raise typer.Exit(2) from None
    if not files:
        _error("no log files (events-*.jsonl[.zst|.gz]) in " + ", ".join(map(str, logs)) + " or under them")
        raise typer.Exit(2)
    return files


def _parse_time(value: str | None, option: str) -> int | None:
    """Epoch seconds, epoch milliseconds or ISO 8601 (UTC unless it says otherwise) → epoch ms."""
    if value is None:
        return None
    from trackpoint.collectors.rollup.report import ReportError, parse_time

    try:
        return parse_time(value, option)
    except ReportError as exc:
        raise typer.BadParameter(str(exc).removeprefix(f"{option}: "), param_hint=option) from None


@app.command()
def replay(  # noqa: PLR0917 (typer: one parameter per option)
    logs: Annotated[
        list[Path],
        typer.Argument(help=_LOGS_HELP, exists=True),
    ],
    config: ConfigOption = None,
    collector: Annotated[
        list[str] | None,
        typer.Option(
            "--collector",
            help="Collector to re-feed (repeatable). Default: every collector in use except the log collectors.",
            autocompletion=_collector_names,
        ),
    ] = None,
    event_type: Annotated[
        list[str] | None,
        typer.Option("--type", help="Replay only events of this type (repeatable).", autocompletion=_event_types),
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Only events at or after this time (ISO 8601 or epoch seconds).")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Only events before this time (ISO 8601 or epoch seconds).")] = None,
    batch: Annotated[int, typer.Option(min=1, max=100_000, help="Events per batch sent.")] = 1024,
    give_up_after: Annotated[
        float, typer.Option(min=1, help="Seconds of failed retries of one batch before the replay stops.")
    ] = 300.0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as one JSON object on stdout (no progress, no table).")
    ] = False,
) -> None:
    """Re-feed collectors from log files. Safe to run any number of times: consumers dedupe on the event id.

    Each event id is sent once per run (repeats are counted as duplicates); the events read add up to filtered +
    duplicates + replayed, and each collector's to sent + refused. On a terminal a progress bar shows the bytes and
    events read, their rate and the time left. A file that is not a tracker log stops the replay before anything is
    sent; a compressed log cut short is replayed up to where it ends, counted as a torn line and named in the
    summary; a file compressed while the replay runs is read under its new name, and one gone is named and skipped.
    Exit code 1 when a collector refused events or gave up (the summary says what was sent before), 2 when nothing
    could start, 130 when interrupted (Ctrl-C: run it again to finish)."""
    from rich import filesize
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Table

    from trackpoint import replay as replaying
    from trackpoint.collectors.log.reader import stored_size
    from trackpoint.process import runner

    loaded = _load_or_exit(config)
    try:
        replay_plan = replaying.plan(
            loaded.config,
            collectors=collector or (),
            types=event_type or (),
            since_ms=_parse_time(since, "--since"),
            until_ms=_parse_time(until, "--until"),
            batch_events=batch,
            give_up_after_s=give_up_after,
        )
    except replaying.ReplayError as exc:
        _error(str(exc))
        raise typer.Exit(2) from None
    files = _log_files_or_exit(logs)
    out = Console(stderr=True)
    started = time.monotonic()
    columns = (
        TextColumn("[bold]replay"),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[bytes_rate]}/s · {task.fields[events]:,} events, {task.fields[rate]:,.0f}/s ·"),
        TimeRemainingColumn(),
    )
    # Quiet unless someone watches: no bar in a pipe, a log or under --json.
    with Progress(*columns, console=out, disable=as_json or not out.is_terminal) as bar:
        total = sum(stored_size(path) for path in files)
        task = bar.add_task("replay", total=total, events=0, rate=0.0, bytes_rate="0 B")

        def advance(events: int, read_bytes: int) -> None:
            elapsed = max(time.monotonic() - started, 1e-6)
            bytes_rate = filesize.decimal(int(read_bytes / elapsed))
            bar.update(task, completed=read_bytes, events=events, rate=events / elapsed, bytes_rate=bytes_rate)

        try:
            built = replaying.build_collectors(loaded.config, replay_plan, registry())
            # Not asyncio.run: a collector's send or close that ignores its cancellation must not hold the exit.
            report = runner.run(replaying.replay(files, built, replay_plan, advance))
        except replaying.ReplayError as exc:  # before anything was sent
            _error(str(exc))
            raise typer.Exit(2) from None
        except KeyboardInterrupt:  # the collectors were closed (drained) on the way out; nothing said so
            _error("interrupted: run the same replay again to finish it (what was sent counts once)")
            raise typer.Exit(130) from None
    if report.gave_up is not None:
        _error(report.gave_up)
    failed = report.gave_up is not None or any(result.refused for result in report.collectors.values())
    if as_json:
        print(json.dumps(report.summary(), indent=2))
        raise typer.Exit(1 if failed else 0)
    table = Table(title=f"replayed {report.files} files ({report.bytes:,} bytes) in {report.seconds:.1f} s")
    for column in ("collector", "events", "sent", "refused", "retries"):
        table.add_column(column, justify="left" if column == "collector" else "right")
    for name, result in report.collectors.items():
        table.add_row(name, f"{result.events:,}", f"{result.sent:,}", f"{result.refused:,}", f"{result.retries:,}")
    out.print(table)
    out.print(
        f"read {report.read.events:,} events = {report.replayed:,} replayed + {report.duplicates:,} duplicates "
        f"(sent once) + {report.filtered:,} filtered out · {report.read.skipped:,} torn lines skipped",
        highlight=False,
        soft_wrap=True,
    )
    for where in report.read.skipped_at[:10]:
        out.print(escape(f"  torn line at {where}"), highlight=False)
    _print_unread(out, report.read, "what decoded was replayed", "skipped")
    if failed:
        raise typer.Exit(1)


@app.command()
def ship(
    config: ConfigOption = None,
    collector: Annotated[
        list[str] | None,
        typer.Option(
            "--collector",
            help="Log collector to ship (repeatable). Default: every one with ship.url.",
            autocompletion=_collector_names,
        ),
    ] = None,
    once: Annotated[
        bool, typer.Option("--once", help="One pass, then exit (cron, after an incident); exit code 1 on failures.")
    ] = False,
) -> None:
    """Ship finished log files to object storage now, as the running tracker does every ship.interval_s: upload,
    verify, record in the manifests, delete. Without --once, keep shipping until SIGINT or SIGTERM."""
    import asyncio

    from trackpoint.collectors.log.shipping import PassReport, ShipError, Shipper, shippers
    from trackpoint.collectors.log.shipping.service import ShippingService

    loaded = _load_or_exit(config)
    try:
        selected = shippers(loaded.config, collector or ())
    except ShipError as exc:
        _error(str(exc))
        raise typer.Exit(2) from None
    out = Console()

    def show(shipper: Shipper, report: PassReport) -> None:
        for done in report.shipped:
            out.print(escape(f"shipped {shipper.collector} {done.name} → {done.url} ({done.bytes:,} bytes, "
                             f"verified by {done.verified_by})"), highlight=False, soft_wrap=True)  # fmt: skip

    if not once:
        # Failed passes are the service's log lines: when a streak begins, a reminder per interval, not one a pass.
        asyncio.run(ShippingService(lambda: loaded.config, collector or (), show).serve())
        return
    reports = {name: shipper.ship_pass() for name, shipper in selected.items()}
    for name, report in reports.items():
        show(selected[name], report)
        for what, reason in report.failed:
            err.print(f"[bold red]failed[/] {escape(f'{name} {what}: {reason}')}", highlight=False, soft_wrap=True)
    shipped = [done for report in reports.values() for done in report.shipped]
    failed = sum(len(report.failed) for report in reports.values())
    out.print(f"{len(shipped)} files shipped ({sum(done.bytes for done in shipped):,} bytes), {failed} failed",
              highlight=False)  # fmt: skip
    if failed:
        raise typer.Exit(1)


@banker_app.command("reconcile")
def banker_reconcile(
    logs: Annotated[
        list[Path],
        typer.Argument(help=_LOGS_HELP, exists=True),
    ],
    config: ConfigOption = None,
    collector: Annotated[
        str | None,
        typer.Option(
            "--collector", help="The banker collector (needed when there are several).", autocompletion=_collector_names
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Recompute each campaign's spend from the logs and compare it with the banker's store. Of an id logged more
    than once, its earliest line counts (as the banker debits the first it gets). Exits 1 on any difference, and
    when a file could not be read to its end (cut short, or gone): its debits are missing from the sums; logged
    debits the store lacks are applied (exactly once) by `trackpoint replay --collector`."""
    import asyncio

    from rich.table import Table
    from rich.text import Text

    from trackpoint.collectors.banker.reconcile import ReconcileError, reconcile
    from trackpoint.collectors.banker.store import StoreUnavailable

    loaded = _load_or_exit(config)
    files = _log_files_or_exit(logs)
    try:
        report = asyncio.run(reconcile(loaded.config, files, collector))
    except ReconcileError as exc:
        _error(str(exc))
        raise typer.Exit(2) from None
    except StoreUnavailable as exc:
        _error(f"the banker's store is unavailable: {exc}")
        raise typer.Exit(2) from None
    if as_json:
        document = {
            "collector": report.collector,
            "matches": report.matches,
            "duplicates_in_logs": report.duplicates,
            "skipped": report.skipped,
            "torn_lines": report.read.skipped,
            "truncated_files": report.read.truncated,
            "missing_files": report.read.missing,
            "campaigns": [
                {
                    "campaign": c.campaign, "log_micros": c.log_micros, "log_debits": c.log_debits,
                    "store_micros": c.store_micros, "difference_micros": c.difference_micros,
                    "missing_debits": c.missing_debits, "missing_micros": c.missing_micros,
                    "matches": c.matches and not report.read.incomplete,
                }
                for c in report.campaigns
            ],
        }  # fmt: skip
        print(json.dumps(document, indent=2))
    else:
        out = Console()
        incomplete = bool(report.read.incomplete)  # a campaign can match only over logs read whole
        table = Table(title=f"banker {report.collector}: logs vs store (micros)")
        for column in ("campaign", "logs", "debits", "store", "store - logs", "missing debits", ""):
            table.add_column(column, justify="left" if column == "campaign" else "right")
        for c in report.campaigns:
            store = "—" if c.store_micros is None else f"{c.store_micros:,}"
            mark = "[bold red]differs[/]" if not c.matches else "[yellow]unsure[/]" if incomplete else "[green]ok[/]"
            table.add_row(Text(c.campaign), f"{c.log_micros:,}", f"{c.log_debits:,}", store,
                          f"{c.difference_micros:+,}", f"{c.missing_debits:,}", mark)  # fmt: skip
        out.print(table)
        skipped = ", ".join(f"{reason} {count:,}" for reason, count in report.skipped.items()) or "none"
        out.print(
            f"read {report.read.events:,} events · {report.duplicates:,} repeated ids counted once · "
            f"not debits: {skipped} · torn lines {report.read.skipped:,}",
            highlight=False,
        )
        _print_unread(out, report.read, "its later debits are not counted", "not counted")
        if report.read.incomplete:
            out.print("[bold red]logs incomplete[/]: the files above were not read to their end; the comparison "
                      "cannot vouch for them", soft_wrap=True)  # fmt: skip
        elif not report.matches:
            out.print("[bold red]differences found[/]: `trackpoint replay --collector "
                      f"{report.collector} LOG...` applies the missing debits (exactly once)")  # fmt: skip
    if not report.matches:
        raise typer.Exit(1)


@app.command()
def report(  # noqa: PLR0917 (typer: one parameter per option)
    logs: Annotated[
        list[Path] | None,
        typer.Argument(help=f"With --logs: {_LOGS_HELP[0].lower()}{_LOGS_HELP[1:]}", exists=True),
    ] = None,
    from_logs: Annotated[
        bool, typer.Option("--logs", help="Report straight over the log files given, with DuckDB (the reports extra).")
    ] = False,
    config: ConfigOption = None,
    since: Annotated[
        str | None, typer.Option("--from", help="First hour (ISO 8601 or epoch seconds; default: today, UTC).")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--to", help="End, exclusive (ISO 8601 or epoch seconds; default: this hour's end).")
    ] = None,
    event_type: Annotated[list[str] | None, typer.Option("--type", help="Only this event type (repeatable).")] = None,
    by: Annotated[
        str | None,
        typer.Option(help="Dims to group by, comma-separated (default: the rollup's dims; '' for per type only)."),
    ] = None,
    where: Annotated[
        list[str] | None, typer.Option("--where", help="Keep rows whose dim has this value: DIM=VALUE (repeatable).")
    ] = None,
    output: Annotated[
        str, typer.Option("--format", help="table (default), csv or json (the admin route's document).")
    ] = "table",
    collector: Annotated[
        str | None, typer.Option("--collector", help="The rollup collector (needed when there are several).")
    ] = None,
) -> None:
    """Hourly report per event type and dims: impressions, clicks, CTR, conversions and value, wins and spend, VAST
    quartiles and watch time. From the rollups the running tracker keeps (the same rows as GET /reports/hourly), or
    with --logs straight over log files (any period, any dims), each event id counted once either way."""
    from trackpoint.collectors.rollup import report as reporting

    if output not in {"table", "csv", "json"}:
        raise typer.BadParameter(f"{output!r}: choose table, csv or json", param_hint="--format")
    if bool(logs) != from_logs:
        _error("--logs reads the LOG files given after it (and LOG files need --logs)")
        raise typer.Exit(2)
    loaded = _load_or_exit(config)
    try:
        name, rollup = reporting.rollup_collector(loaded.config, collector)
    except LookupError as exc:
        if collector is not None or not from_logs:
            _error(str(exc))
            raise typer.Exit(2) from None
        from trackpoint.collectors.rollup.config import RollupCollectorConfig as DefaultRollup

        name, rollup = "rollup", DefaultRollup()  # the logs need only the default roles and dims
    try:
        query = reporting.make_query(
            since,
            until,
            types=event_type or (),
            by=None if by is None else by.split(","),
            where=where or (),
            default_by=rollup.dims,
        )
        rows, source, note = _report_rows(loaded.config, rollup, name, query, logs if from_logs else None)
    except reporting.ReportError as exc:
        _error(str(exc))
        raise typer.Exit(2) from None
    if output == "json":
        sys.stdout.write(reporting.to_json(rows, query, source).decode() + "\n")
    elif output == "csv":
        sys.stdout.write(reporting.to_csv(rows, query.by))
    else:
        out = Console()
        out.print(reporting.to_table(rows, query.by, source))
        if not rows:
            out.print("no rows in this period", highlight=False)
    if note:
        err.print(escape(note), highlight=False, soft_wrap=True)


def _report_rows(
    config: Config, rollup: RollupCollectorConfig, name: str, query: Query, logs: list[Path] | None
) -> tuple[list[Row], str, str]:
    """The report's rows, what they come from, and a note for stderr (the logs' reading rate, or a database missing)."""
    from trackpoint.collectors.rollup import report as reporting

    if logs is None:
        import sqlite3

        database = reporting.rollups_path(config, rollup)
        # None written yet holds no rows, but a path no tracker writes (another data_dir) must not pass for one.
        note = "" if database.exists() else f"no rollups at {database} (yet): no tracker has written one there"
        try:
            return reporting.store_report(config, rollup, query), f"rollups:{name}", note
        except sqlite3.Error as exc:
            _error(f"the rollups' database cannot be read: {exc}")
            raise typer.Exit(1) from None
    from trackpoint.collectors.rollup.logs import LogsReportError, logs_report

    files = _log_files_or_exit(logs)
    try:
        result = logs_report(files, query, rollup.roles)
    except LogsReportError as exc:
        _error(str(exc))
        raise typer.Exit(2) from None
    note = (
        f"read {result.events:,} events ({result.distinct:,} distinct ids) from {len(files)} files in "
        f"{result.seconds:.2f} s: {result.events_per_second:,.0f} events/s"
        + (f" · {result.skipped:,} torn lines skipped" if result.skipped else "")
        + "".join(f"\n  gone: {path} (removed before it was read, under its name and compressed; skipped)"
                  for path in result.missing)
        + "".join(f"\n  cut short: {path} (a compressed file that ends early: what decoded is counted)"
                  for path in result.truncated)
    )  # fmt: skip
    return result.rows, f"logs:{len(files)} files", note


@app.command()
def docs(
    out_dir: Annotated[Path, typer.Argument(help="Directory for the generated Markdown pages.")],
    config: ConfigOption = None,
) -> None:
    """Generate the reference: every configuration option, the endpoints of a configuration (Markdown and
    OpenAPI 3.1), this CLI and the plugin API."""
    from trackpoint.reference import write_docs

    try:
        written = write_docs(_load_or_exit(config), out_dir, app, registry())
    except OSError as exc:  # OUT_DIR a file, unwritable, ...
        _error(f"cannot write the reference into {out_dir}: {exc.strerror or exc}")
        raise typer.Exit(2) from None
    for path in written:
        print(path)


def main() -> None:
    app()
