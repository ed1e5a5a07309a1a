"""`python -m archiver.emulator`: serve the Graph emulator until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import threading
from types import FrameType

from archiver.emulator import Emulator, EmulatorConfig, Faults
from archiver.kinds import Kind


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m archiver.emulator",
        description="Serve the Graph call-log emulator over HTTPS on 127.0.0.1.",
    )
    parser.add_argument("--port", type=int, default=0, help="port (default: any free one)")
    parser.add_argument("--seed", type=int, default=1, help="data seed")
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--pstn-rows-per-day", type=int, default=2000)
    parser.add_argument("--direct-routing-rows-per-day", type=int, default=1500)
    parser.add_argument("--sms-rows-per-day", type=int, default=500)
    parser.add_argument("--pstn-blocked-users-rows-per-day", type=int, default=50)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per Graph page")
    parser.add_argument(
        "--cache-rows", type=int, default=0, help="keep the texts of up to N served rows"
    )
    parser.add_argument(
        "--rate-cap", type=int, default=None, help="Graph requests/min per kind, per tenant"
    )
    parser.add_argument("--throttle", type=float, default=0.0, help="probability of a 429")
    parser.add_argument("--server-error", type=float, default=0.0, help="probability of a 5xx")
    parser.add_argument("--reset", type=float, default=0.0, help="probability of a reset")
    parser.add_argument("--no-permission", action="store_true", help="answer 403 to Graph calls")
    parser.add_argument(
        "--tenant",
        action="append",
        default=[],
        metavar="ID",
        help="another tenant the app is consented in (repeatable)",
    )
    parser.add_argument(
        "--revoked-tenant",
        action="append",
        default=[],
        metavar="ID",
        help="a tenant that revoked consent: tokens, but 403 to Graph calls (repeatable)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, start the emulator, print how to use it, serve until interrupted."""
    args = _parser().parse_args(argv)
    config = EmulatorConfig(
        seed=args.seed,
        page_size=args.page_size,
        rows_per_day={
            Kind.PSTN: args.pstn_rows_per_day,
            Kind.DIRECT_ROUTING: args.direct_routing_rows_per_day,
            Kind.SMS: args.sms_rows_per_day,
            Kind.PSTN_BLOCKED_USERS: args.pstn_blocked_users_rows_per_day,
        },
        latency=args.latency,
        cache_rows=args.cache_rows,
        rate_cap_per_minute=args.rate_cap,
        faults=Faults(throttle=args.throttle, server_error=args.server_error, reset=args.reset),
        permission=not args.no_permission,
        tenants=args.tenant,
        revoked_tenants=set(args.revoked_tenant),
    )
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with Emulator(config, port=args.port) as emulator:
        print(f"Graph emulator listening on {emulator.url}")
        print(f"  CA file:       {emulator.ca_file}")
        print(f"  tenant id:     {config.tenant_id}")
        if config.tenants:
            print(f"  more tenants:  {', '.join(config.tenants)}")
        if config.revoked_tenants:
            print(f"  revoked:       {', '.join(sorted(config.revoked_tenants))}")
        print(f"  client id:     {config.client_id}")
        print(f"  client secret: {config.client_secret}")
        print("Point the archiver at it:")
        print(f"  export ARCHIVER_AUTHORITY_HOST={emulator.url}")
        print(f"  export ARCHIVER_GRAPH_URL={emulator.url}")
        print(f"  export ARCHIVER_CA_BUNDLE={emulator.ca_file}")
        print(f"  export ARCHIVER_TENANT_ID={config.tenant_id}")
        print(f"  export ARCHIVER_CLIENT_ID={config.client_id}")
        print(f"  export ARCHIVER_CLIENT_SECRET={config.client_secret}")
        print("Ctrl-C to stop.", flush=True)
        while not done.wait(1.0):
            pass


if __name__ == "__main__":
    main()
