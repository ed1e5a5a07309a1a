"""The `archiver` command: parses arguments, loads configuration, runs, sets the exit code.

Exit codes: 0 all done; 1 some windows failed (the others are archived and
recorded); 2 bad usage, configuration or destination — one line, no traceback;
130 a backfill stopped by SIGTERM/SIGINT before its range was done.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import NoReturn

import anyio

from archiver import __version__, log
from archiver.config import Config, load
from archiver.errors import ArchiverError, NothingArchived, UsageError, describe, leaves
from archiver.kinds import Kind
from archiver.manifest import KindSummary, Record, utcnow
from archiver.ops.coverage import Coverage, coverage, draw_calendars, lines
from archiver.ops.progress import Progress
from archiver.options import add_config_flags
from archiver.pipeline import RunResult, Shared, backfill, backfill_tenant, open_destination
from archiver.pipeline.tenants import Outcome, for_each_tenant
from archiver.windows import parse_instant

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXAMPLES = """\
examples:
  archiver demo                         a sample week from the built-in Graph emulator
  ARCHIVER_TENANT_ID=... ARCHIVER_CLIENT_ID=... ARCHIVER_CLIENT_SECRET=... \\
    archiver backfill --start 2025-01-01 --end 2025-07-01 \\
      --destination s3://call-records-archive/teams
                                        half a year of both call logs into S3
  archiver run --config /etc/archiver.toml
                                        the container job: keep the archive current

Every setting is a flag, an ARCHIVER_* variable or a key of the --config file (flag >
environment > file); `archiver COMMAND --help` lists them with their defaults.
"""
EXIT_INTERRUPTED = 130  # backfill stopped by SIGTERM/SIGINT before its range was done
EXIT_BROKEN_PIPE = 141  # the reader of stdout went away (128 + SIGPIPE), as `yes | head`


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2), not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _load(args: argparse.Namespace) -> Config:
    flags = {
        name.removeprefix("cfg_"): value
        for name, value in vars(args).items()
        if name.startswith("cfg_") and value is not None
    }
    config = load(flags, config_file=args.config)
    log.configure(config.log_format)
    return _one_tenant(config, getattr(args, "tenant", None))


def _one_tenant(config: Config, tenant_id: str | None) -> Config:
    """`--tenant ID`: the configuration narrowed to that one of its tenants."""
    if tenant_id is None:
        return config
    if not config.tenants:
        raise UsageError(f"--tenant {tenant_id}: no tenants are configured")
    for tenant in config.tenants:
        if tenant.tenant_id.lower() == tenant_id.strip().lower():
            return replace(config, tenants=(tenant,), shard=None, shards=None)
    raise UsageError(f"--tenant {tenant_id}: not one of the configured tenants")


def _tenant_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tenant", metavar="ID", help="with tenants: this one tenant only (default: all)"
    )


def _instant(flag: str, text: str) -> datetime:
    try:
        return parse_instant(text)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def cmd_backfill(args: argparse.Namespace) -> int:
    """Archive [--start, --end) of the chosen kinds."""
    config = _load(args)
    start = _instant("--start", args.start)
    end = _instant("--end", args.end)
    if end <= start:
        raise UsageError(f"--end {args.end} is not after --start {args.start}")
    try:
        kinds = list(dict.fromkeys(Kind.parse(k) for k in args.kind)) if args.kind else None
    except ValueError as exc:
        raise UsageError(f"--kind: {exc}") from None
    kinds = kinds or list(config.kinds)
    config.require_credentials()
    progress = Progress()
    if config.tenants:
        try:
            outcomes = anyio.run(backfill_tenants, config, kinds, start, end, progress)
        finally:
            progress.close()
        return report_tenants(outcomes, config.destination)
    try:
        result = anyio.run(
            backfill,
            config,
            kinds,
            start,
            end,
            None,
            lambda record, so_far: progress.update(record, so_far.planned),
        )
    finally:
        progress.close()
    return report(result, config.destination)


def report(result: RunResult, destination: str) -> int:
    """Print what a run did; the exit code follows from it."""
    print(
        f"archived {len(result.archived)} windows, {result.rows:,} rows into {destination} "
        f"({result.already} already archived, {len(result.failed)} failed, "
        f"{result.requests} Graph requests)"
    )
    if result.not_closed:
        print(f"{result.not_closed} windows not closed yet: run again later")
    for window, error in result.failed:
        print(f"FAILED {window}: {error}")
    if result.stopped:
        left = result.planned - len(result.archived) - len(result.failed)
        print(f"stopped by a signal with {left} windows not archived: run again to finish")
        return EXIT_INTERRUPTED
    return EXIT_FAILED if result.failed else EXIT_OK


async def backfill_tenants(
    config: Config, kinds: list[Kind], start: datetime, end: datetime, progress: Progress
) -> list[Outcome]:
    """`backfill` of every tenant of this process's share, each failing alone."""
    planned: dict[int, int] = {}  # per tenant's RunResult: windows it set out to archive

    def on_done(record: Record, so_far: RunResult) -> None:
        planned[id(so_far)] = so_far.planned
        progress.update(record, sum(planned.values()))

    async def job(tenant_config: Config, shared: Shared) -> RunResult:
        return await backfill_tenant(tenant_config, kinds, start, end, shared, None, on_done)

    return await for_each_tenant(config, job)


def report_tenants(outcomes: list[Outcome], destination: str) -> int:
    """Print what a run of many tenants did, one line per tenant and per failure; exit 2
    when every tenant was refused, 1 when any failed."""
    if not outcomes:
        print(f"no tenant of {destination} falls in this shard: nothing to do")
        return EXIT_OK
    results = [o.result for o in outcomes if o.result is not None]
    archived = sum(len(r.archived) for r in results)
    rows = sum(r.rows for r in results)
    for outcome in outcomes:
        tenant, result = outcome.tenant.tenant_id, outcome.result
        if result is not None:
            print(
                f"tenant {tenant}: archived {len(result.archived)} windows, {result.rows:,} "
                f"rows ({result.already} already archived, {len(result.failed)} failed, "
                f"{result.requests} Graph requests)"
            )
            for window, error in result.failed:
                print(f"FAILED tenant {tenant} {window}: {error}")
        else:
            print(f"FAILED tenant {tenant}: {outcome.error}")
    print(
        f"archived {archived} windows, {rows:,} rows of {len(outcomes)} tenants into {destination}"
    )
    failed = [o for o in outcomes if o.failed]
    for outcome in failed:
        why = (
            outcome.error
            or f"{len(outcome.result.failed if outcome.result else [])} windows failed"
        )
        print(f"archiver: tenant {outcome.tenant.tenant_id} failed: {why}", file=sys.stderr)
    if all(o.refused for o in outcomes):
        return EXIT_USAGE
    if failed:
        return EXIT_FAILED
    if any(r.stopped for r in results):
        print("stopped by a signal: run again to finish")
        return EXIT_INTERRUPTED
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    """Keep the archive current until SIGTERM/SIGINT."""
    from archiver.ops.continuous import keep_current, run_forever

    config = _load(args)
    config.require_credentials()
    if config.tenants:

        async def job(tenant_config: Config, shared: Shared) -> RunResult:
            return await keep_current(tenant_config, shared)

        outcomes = anyio.run(for_each_tenant, config, job)
        failed = [o for o in outcomes if o.error is not None]
        for outcome in failed:
            print(
                f"archiver: tenant {outcome.tenant.tenant_id} stopped: {outcome.error}",
                file=sys.stderr,
            )
        if outcomes and all(o.refused for o in outcomes):
            return EXIT_USAGE
        return EXIT_FAILED if failed else EXIT_OK
    anyio.run(run_forever, config)
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    """Print the coverage report per kind (per tenant, and in total, with tenants); on a
    terminal, a calendar of days too. A destination with no manifest is refused (exit 2);
    with tenants, a tenant without one is shown as having nothing archived yet."""
    config = _load(args)
    now = utcnow()

    async def read(target: Config) -> tuple[str, bool, dict[Kind, Coverage]]:
        store, manifest = await open_destination(target)
        return store.description, manifest.holds_archive, coverage(manifest, target, now)

    if not config.tenants:
        where, holds, kinds = anyio.run(read, config)
        if not holds:
            raise NothingArchived(where)
        if args.json:
            shown = {kind.value: c.to_json() for kind, c in kinds.items()}
            print(json.dumps({"destination": config.destination, "kinds": shown}, indent=2))
            return EXIT_OK
        print(f"destination: {config.destination}")
        _print_kinds(kinds)
        _draw([(kind.value, c) for kind, c in kinds.items()])
        return EXIT_OK

    async def every_tenant() -> list[tuple[str, bool, dict[Kind, Coverage]]]:
        return [await read(config.for_tenant(t)) for t in config.share()]

    per_tenant = {
        tenant: (holds, kinds)
        for tenant, (_, holds, kinds) in zip(config.share(), anyio.run(every_tenant), strict=True)
    }
    if per_tenant and not any(holds for holds, _ in per_tenant.values()):
        raise NothingArchived(config.destination)
    total: dict[Kind, KindSummary] = {}
    margins: dict[Kind, list[tuple[int, str]]] = {}  # per kind: (margin, tenant id)
    for tenant, (_, kinds) in per_tenant.items():
        for kind, c in kinds.items():
            total.setdefault(kind, KindSummary()).add(c.summary)
            if c.margin_days is not None:
                margins.setdefault(kind, []).append((c.margin_days, tenant.tenant_id))
    worst = {kind: min(found) for kind, found in margins.items()}
    if args.json:
        document = {
            "destination": config.destination,
            "kinds": {
                kind.value: s.to_json()
                | {
                    "newest_window_age_seconds": int((now - s.newest_window).total_seconds())
                    if s.newest_window
                    else None,
                    "retention_margin_days": worst[kind][0] if kind in worst else None,
                }
                for kind, s in total.items()
            },
            "tenants": {
                tenant.tenant_id: {
                    "name": tenant.name,
                    "destination": config.for_tenant(tenant).destination,
                    "nothing_archived": not holds,
                    "kinds": {kind.value: c.to_json() for kind, c in kinds.items()},
                }
                for tenant, (holds, kinds) in per_tenant.items()
            },
        }
        print(json.dumps(document, indent=2))
        return EXIT_OK
    print(f"destination: {config.destination} ({len(per_tenant)} tenants)")
    for tenant, (holds, kinds) in per_tenant.items():
        print(f"tenant {tenant.tenant_id}" + (f" ({tenant.name})" if tenant.name else ""))
        if holds:
            _print_kinds(kinds, indent="  ")
        else:
            print("  nothing archived yet (no manifest)")
    print("all tenants")
    for kind, s in total.items():
        print("  " + _counts(kind, s))
        if kind in worst:
            days, tenant_id = worst[kind]
            print(f"      {'retention':10} least margin {days} days (tenant {tenant_id})")
    _draw(
        [
            (f"tenant {tenant.tenant_id} {kind.value}", c)
            for tenant, (holds, kinds) in per_tenant.items()
            if holds
            for kind, c in kinds.items()
        ]
    )
    return EXIT_OK


def _counts(kind: Kind, summary: KindSummary) -> str:
    """Today's one line of counts for a kind."""
    s = summary.to_json()
    return (
        f"{kind.value:18} done {s['done']:>6}  failed {s['failed']:>4}  "
        f"pending {s['pending']:>6}  rows {s['rows']:>12,}  bytes {s['bytes']:>14,}"
        f"  last success {s['last_success'] or '-'}"
    )


def _print_kinds(kinds: dict[Kind, Coverage], indent: str = "") -> None:
    for kind, report in kinds.items():
        print(indent + _counts(kind, report.summary))
        for line in lines(report):
            print(f"{indent}    {line}")


def _draw(sections: list[tuple[str, Coverage]]) -> None:
    """The calendar, on a terminal only: piped output stays plain lines."""
    if sys.stdout.isatty():
        sys.stdout.flush()
        draw_calendars(sections, sys.stdout)


def cmd_verify(args: argparse.Namespace) -> int:
    """Re-read every archived object and compare it with the manifest (of every tenant; a
    tenant with no manifest yet is named and skipped, as `status` shows it)."""
    from archiver.ops.verify import verify_destination

    config = _load(args)
    targets: list[tuple[str | None, Config]] = [
        (t.tenant_id, config.for_tenant(t)) for t in config.share()
    ] or [(None, config)]
    checked = problems = 0
    empty: list[str] = []  # tenants with no manifest yet
    for tenant, target in targets:
        try:
            result = anyio.run(verify_destination, target)
        except NothingArchived:
            if tenant is None:
                raise
            empty.append(tenant)
            continue
        for problem in result.problems:
            print(f"tenant {tenant}: {problem}" if tenant else problem)
        checked += result.checked
        problems += len(result.problems)
    if len(empty) == len(targets):
        raise NothingArchived(config.destination)
    for tenant in empty:
        print(f"tenant {tenant}: nothing archived yet (no manifest)")
    print(f"verified {checked} objects: {problems} problem{'' if problems == 1 else 's'}")
    return EXIT_FAILED if problems else EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """Archive a sample week from the built-in emulator: no credentials needed."""
    from archiver.ops.demo import run_demo

    log.configure(args.log_format or "auto")
    return run_demo(args.dir)


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = _Parser(
        prog="archiver",
        description=(
            "Copy Microsoft Graph's call logs (PSTN, Direct Routing, SMS, PSTN blocked "
            "users) into a folder or S3 as partitioned Parquet, exactly once, with a "
            "manifest of what is archived."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"archiver {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    backfill_cmd = commands.add_parser(
        "backfill",
        help="archive a range of call start times",
        description="Archive every window of [--start, --end) not archived yet; a re-run "
        "asks Graph nothing for what is done. Exit 0 done, 1 some windows failed, 2 bad "
        "configuration or credentials, 130 stopped by a signal.",
        usage="archiver backfill --start S --end E [--kind K ...] [options]",
    )
    backfill_cmd.add_argument("--start", required=True, help="YYYY-MM-DD or ISO-8601, UTC")
    backfill_cmd.add_argument("--end", required=True, help="exclusive end, same forms")
    backfill_cmd.add_argument(
        "--kind",
        action="append",
        metavar="KIND",
        help=(
            "pstn, direct_routing, sms or pstn_blocked_users; repeatable; default: the "
            "`kinds` setting (pstn and direct_routing)"
        ),
    )
    _tenant_flag(backfill_cmd)
    add_config_flags(backfill_cmd, "backfill", "start")
    backfill_cmd.set_defaults(handler=cmd_backfill)

    run_cmd = commands.add_parser(
        "run",
        help="keep the archive current, until SIGTERM",
        description="The container job: forever, archive each window once it has been "
        "closed for `settle`, re-archive young windows for late rows, sleep without "
        "asking Graph in between; SIGTERM/SIGINT stop it gracefully (exit 0).",
        usage="archiver run [options]",
    )
    _tenant_flag(run_cmd)
    add_config_flags(run_cmd, "run")
    run_cmd.set_defaults(handler=cmd_run)

    status_cmd = commands.add_parser(
        "status",
        help="what is archived, per log (and tenant)",
        description="Is the archive complete, and since when? Per log (and per tenant, and "
        "in total): the span archived without a gap, gaps and failed windows as ranges "
        "with their errors, what is planned and pending, the newest window and its age, "
        "and the days left before Microsoft's retention reaches the oldest window not "
        "archived. On a terminal, a calendar of the last 13 months (one cell a day). "
        "Asks Graph nothing; exit 2 where nothing is archived.",
        usage="archiver status [--json] [options]",
    )
    status_cmd.add_argument("--json", action="store_true", help="machine-readable output")
    _tenant_flag(status_cmd)
    add_config_flags(status_cmd, "status")
    status_cmd.set_defaults(handler=cmd_status)

    verify_cmd = commands.add_parser(
        "verify",
        help="re-read every archived object and compare it with the manifest",
        description="Re-read every archived object and check it against the manifest: "
        "checksum, row count, each row once, nothing stray. Exit 0 good, 1 problems "
        "found (each named), 2 nothing archived there.",
        usage="archiver verify [options]",
    )
    _tenant_flag(verify_cmd)
    add_config_flags(verify_cmd, "verify")
    verify_cmd.set_defaults(handler=cmd_verify)

    demo_cmd = commands.add_parser("demo", help="archive a sample week from the built-in emulator")
    demo_cmd.add_argument("--dir", default="./archive-demo", help="where to write (./archive-demo)")
    demo_cmd.add_argument(
        "--log-format",
        choices=["auto", "text", "json"],
        default=None,
        help="auto (text on a terminal, else JSON lines), text or json (default: auto)",
    )
    demo_cmd.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code. Whatever happens ends as one line on
    stderr and an exit code, never a traceback."""
    try:
        args = build_parser().parse_args(argv)
        return int(args.handler(args))
    except BrokenPipeError:  # `archiver status | head`: the reader has all it wanted
        return _reader_gone()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the edge: every error becomes one line
        return fail(exc)
    except BaseExceptionGroup as group:  # a group holding KeyboardInterrupt or the like
        return fail(group)


def _reader_gone() -> int:
    """Stop quietly, as a command killed by SIGPIPE does (its shell reports 141): stdout
    goes to /dev/null so the interpreter's final flush finds no closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_BROKEN_PIPE


def fail(error: BaseException) -> int:
    """Print the one line that says what stopped the command (`errors.describe`); its
    exit code. An interrupt with no error of the archiver's is exit 130, silently."""
    errors = leaves(error)
    if any(isinstance(e, KeyboardInterrupt) for e in errors) and not any(
        isinstance(e, ArchiverError) for e in errors
    ):
        return EXIT_INTERRUPTED
    message, refused = describe(error)
    if not any(isinstance(e, ArchiverError) for e in errors):
        logging.getLogger(__name__).debug("internal error", exc_info=error)
    print(f"archiver: {message}", file=sys.stderr)
    return EXIT_USAGE if refused else EXIT_FAILED
