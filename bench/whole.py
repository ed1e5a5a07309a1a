"""`bench/perf.py --whole`: whole processes, beside the typical script, in the same run.

Every peer is a process of its own, spawned through perf.py's launcher, which reports
wait4's rusage of that one process: wall (spawn to exit, start-up and imports included),
CPU (user + system of the process and its threads) and peak RSS. The rows are Graph's
beta rows as the API pages' examples show them: every property (v1.0 and beta), 7-digit
fractions, non-ASCII names, masked numbers, a property no schema knows every 97th row;
the run says how many bytes a row takes. Peers, each on the same emulator and range:

- archiver     `python -m archiver backfill` at its default concurrency (8), and at 1
- typical      bench/typical_script.py (requests, json, Table.from_pylist, sequential)
- dlt          bench/dlt_peer.py (dlt's rest_api source -> Parquet), if an interpreter
               with dlt is given (--dlt-python) or this one has it; else skipped, saying so
- sdk          bench/sdk_peer.py (msgraph-sdk PageIterator -> Parquet), likewise
               (--sdk-python)

Runs are interleaved (run 1 of every peer, then run 2, ... in a rotating order) so a
change in the machine's load touches every peer alike; figures are medians. Also: what
the imports cost (`python -m archiver --version`, against the typical script's imports),
and, with --stages, where the archiver's CPU goes (bench/stage_probe.py), in µs per row.
`--tree LABEL=DIR` measures the archiver of another source tree (PYTHONPATH=DIR) too,
e.g. a copy with proposed changes; `--variant LABEL=NAME=VALUE[,NAME=VALUE]` this tree's
archiver in another environment, e.g. `mimalloc=ARROW_DEFAULT_MEMORY_POOL=mimalloc`.
`--kind`, `--days`, `--rows-per-day` size the run: `--kind pstn --days 1 --rows-per-day
1000000 --variant c1=ARCHIVER_CONCURRENCY=1` is one window of a million rows.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import perf

BENCH = Path(__file__).resolve().parent
MiB = 2**20


@dataclass
class Peer:
    """One process to measure: its command and environment, how to read its rows."""

    name: str
    label: str
    cmd: list[str]
    env: dict[str, str]
    cwd: Path = perf.ROOT  # the folder `python -m archiver` finds the package in
    runs: list[perf.Child] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)


def python_with(module: str, given: str | None, variable: str) -> tuple[str | None, str]:
    """An interpreter that can import `module`: the one given, $variable, or this one."""
    for candidate in (given, os.environ.get(variable)):
        if candidate:
            found = subprocess.run(
                [candidate, "-c", f"import {module}"], capture_output=True, check=False
            )
            if found.returncode == 0:
                return candidate, ""
            return None, f"{candidate} cannot import {module}"
    if importlib.util.find_spec(module) is not None:
        return sys.executable, ""
    return (
        None,
        f"not installed (give an interpreter that has it: --{variable[5:-7].lower()}-python)",
    )


def peer_args(emu: perf.EmulatorProcess, days: int, version: str, kinds: list[str]) -> list[str]:
    end = perf.FIRST_DAY + timedelta(days=days)
    kind_args = [arg for kind in kinds for arg in ("--kind", kind)]
    return [
        "--url",
        emu.url,
        "--ca-file",
        emu.ca_file,
        "--tenant",
        emu.tenant_id,
        "--client-id",
        emu.client_id,
        "--client-secret",
        emu.client_secret,
        "--start",
        perf.day_text(perf.FIRST_DAY),
        "--end",
        perf.day_text(end),
        *kind_args,
        "--version",
        version,
        "--out",
        "{out}",
    ]


def rows_of(peer: Peer, child: perf.Child) -> int:
    if peer.name.startswith("archiver"):
        match = perf._ARCHIVED.search(child.stdout)
        if match is None:
            raise RuntimeError(f"{peer.label}: unexpected output {child.stdout[-500:]}")
        return int(match.group(2).replace(",", ""))
    return int(json.loads(child.stdout.strip().splitlines()[-1])["rows"])


def run_peer(peer: Peer, scratch: Path) -> None:
    out = scratch / f"out-{uuid.uuid4().hex[:8]}"
    cmd = [part.replace("{out}", str(out)) for part in peer.cmd]
    env = {k: v.replace("{out}", str(out)) for k, v in peer.env.items()}
    child = perf.run_child(cmd, env, scratch, peer.cwd)
    shutil.rmtree(out, ignore_errors=True)
    peer.runs.append(child)
    peer.rows.append(rows_of(peer, child))


def med(values: list[float]) -> float:
    return statistics.median(values)


def import_costs(scratch: Path, runs: int, trees: dict[str, str]) -> list[tuple[str, float, int]]:
    """CPU and peak RSS of imports only: medians of `runs` processes each."""
    root = perf.ROOT
    cases = [("python -c pass (interpreter alone)", [perf.PY, "-c", "pass"], root)]
    for label, tree in trees.items():
        where = Path(tree) if tree else root  # `-m` and `-c` find the package in cwd first
        version = [perf.PY, "-m", "archiver", "--version"]
        cases.append((f"{label}: python -m archiver --version", version, where))
        cases.append(
            (f"{label}: import archiver.cli", [perf.PY, "-c", "import archiver.cli"], where)
        )
    cases.append(
        (
            "typical script's imports (requests, pyarrow, pyarrow.parquet)",
            [perf.PY, "-c", "import requests, pyarrow, pyarrow.parquet"],
            root,
        )
    )
    found: dict[str, list[perf.Child]] = {label: [] for label, _, _ in cases}
    for _ in range(runs):
        for label, cmd, where in cases:
            found[label].append(perf.run_child(cmd, perf.child_env(), scratch, where))
    return [
        (label, med([c.cpu for c in found[label]]), int(med([c.maxrss for c in found[label]])))
        for label, _, _ in cases
    ]


def top_imports(tree: str | None) -> list[str]:
    """The costliest top-level packages `import archiver.cli` loads (-X importtime, self µs)."""
    done = subprocess.run(
        [perf.PY, "-X", "importtime", "-c", "import archiver.cli"],
        capture_output=True,
        text=True,
        env=perf.child_env(),
        check=False,
        cwd=tree or perf.ROOT,
    )
    by_package: dict[str, int] = {}
    for line in done.stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) != 3 or not parts[0].strip().isdigit():
            continue
        top = parts[2].strip().split(".")[0]
        by_package[top] = by_package.get(top, 0) + int(parts[0])
    total = sum(by_package.values()) or 1
    ranked = sorted(by_package.items(), key=lambda item: -item[1])[:12]
    return [f"{name} {100 * us / total:.0f} %" for name, us in ranked]


STAGES = (
    "imports",
    "parse",
    "type",
    "write",
    "hash",
    "ids",
    "free",
    "reconcile",
    "store",
    "store-hash",
)


def stage_profile(
    emu: perf.EmulatorProcess,
    days: int,
    tree: str | None,
    scratch: Path,
    env_extra: dict[str, str],
    kinds: tuple[str, ...] = ("pstn", "direct_routing"),
) -> dict[str, Any]:
    """One archiver run through bench/stage_probe.py: CPU seconds per stage."""
    out = scratch / f"out-{uuid.uuid4().hex[:8]}"
    report = scratch / f"stages-{uuid.uuid4().hex[:8]}.json"
    args = perf.backfill_args(days, list(kinds))
    env = perf.archiver_env(emu, out, **env_extra, **({"PYTHONPATH": tree} if tree else {}))
    child = perf.run_child(
        [perf.PY, str(BENCH / "stage_probe.py"), str(report), *args], env, scratch
    )
    shutil.rmtree(out, ignore_errors=True)
    stages: dict[str, Any] = json.loads(report.read_text())
    stages["total"] = child.cpu
    stages["rows"] = int(perf._ARCHIVED.search(child.stdout).group(2).replace(",", ""))  # type: ignore[union-attr]
    return stages


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/perf.py --whole", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per peer (median; default 3)")
    parser.add_argument("--rows-per-day", type=int, default=40_000, help="per kind (40,000)")
    parser.add_argument("--days", type=int, default=3, help="days (windows per kind; 3)")
    parser.add_argument("--version", default="beta", choices=["beta", "v1.0"])
    parser.add_argument("--no-c1", action="store_true", help="skip the archiver at concurrency 1")
    parser.add_argument(
        "--kind",
        action="append",
        choices=["pstn", "direct_routing"],
        help="the kinds to archive (repeatable; default both)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL=NAME=VALUE[,NAME=VALUE]",
        help="also measure this tree's archiver with these environment variables",
    )
    parser.add_argument(
        "--dlt-python", help="an interpreter with dlt[parquet] (or $PERF_DLT_PYTHON)"
    )
    parser.add_argument(
        "--sdk-python", help="an interpreter with msgraph-sdk (or $PERF_SDK_PYTHON)"
    )
    parser.add_argument(
        "--no-peers", action="store_true", help="only the archiver and the typical script"
    )
    parser.add_argument("--stages", action="store_true", help="also: where the archiver's CPU goes")
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="also measure the archiver of this source tree",
    )
    args = parser.parse_args(argv)
    trees: dict[str, str] = {"archiver": ""}
    for spec in args.tree:
        label, _, tree = spec.partition("=")
        trees[label] = str(Path(tree).resolve())
    kinds = args.kind or ["pstn", "direct_routing"]
    variants: dict[str, dict[str, str]] = {}
    for spec in args.variant:
        label, _, assignments = spec.partition("=")
        variants[label] = dict(pair.split("=", 1) for pair in assignments.split(","))
    notes: list[str] = []
    load_before = os.getloadavg()
    import tempfile

    with tempfile.TemporaryDirectory(prefix="archiver-whole-") as tmp:
        scratch = Path(tmp)
        per_day = args.rows_per_day
        counts = {kind: per_day if kind in kinds else 0 for kind in ("pstn", "direct_routing")}
        with perf.emulator(scratch, **counts) as emu:
            client = perf.PlainClient(emu)
            row_bytes = rows_seen = 0
            for kind in kinds:
                for pages in [
                    client.pages(kind, perf.FIRST_DAY + timedelta(days=d), args.version, 10**6)
                    for d in range(args.days + 1)
                ]:
                    for body in pages:  # every page served once: the emulator keeps their texts
                        value = json.loads(body)["value"]
                        rows_seen += len(value)
                        row_bytes += sum(
                            len(json.dumps(r, ensure_ascii=False, separators=(",", ":")).encode())
                            for r in value
                        )
            perf.say(
                f"whole: {rows_seen:,} rows served once, "
                f"{row_bytes / rows_seen:,.0f} bytes of JSON a row"
            )
            peers: list[Peer] = []
            for label, tree in trees.items():
                extra = {
                    "ARCHIVER_GRAPH_VERSION": args.version,
                    **({"PYTHONPATH": tree} if tree else {}),
                }
                cmd = [perf.PY, "-m", "archiver", *perf.backfill_args(args.days, kinds)]
                peers.append(
                    Peer(
                        f"archiver-{label}",
                        f"{label}, concurrency 8 (default)",
                        cmd,
                        perf.archiver_env(emu, "{out}", **extra),
                        Path(tree) if tree else perf.ROOT,
                    )
                )
                if not args.no_c1:
                    peers.append(
                        Peer(
                            f"archiver-{label}-c1",
                            f"{label}, concurrency 1",
                            cmd,
                            perf.archiver_env(emu, "{out}", ARCHIVER_CONCURRENCY="1", **extra),
                            Path(tree) if tree else perf.ROOT,
                        )
                    )
            for label, env in variants.items():
                peers.append(
                    Peer(
                        f"archiver-variant-{label}",
                        f"{label} ({', '.join(f'{k}={v}' for k, v in env.items())})",
                        [perf.PY, "-m", "archiver", *perf.backfill_args(args.days, kinds)],
                        perf.archiver_env(emu, "{out}", ARCHIVER_GRAPH_VERSION=args.version, **env),
                    )
                )
            common = peer_args(emu, args.days, args.version, kinds)
            peers.append(
                Peer(
                    "typical",
                    "typical script (requests + json + Table.from_pylist)",
                    [perf.PY, str(perf.TYPICAL), *common],
                    perf.child_env(),
                )
            )
            if not args.no_peers:
                for name, module, given, variable, script, label in (
                    (
                        "dlt",
                        "dlt",
                        args.dlt_python,
                        "PERF_DLT_PYTHON",
                        "dlt_peer.py",
                        "dlt rest_api → Parquet",
                    ),
                    (
                        "sdk",
                        "msgraph",
                        args.sdk_python,
                        "PERF_SDK_PYTHON",
                        "sdk_peer.py",
                        "Graph SDK PageIterator → Parquet",
                    ),
                ):
                    python, why = python_with(module, given, variable)
                    if python is None:
                        notes.append(f"{name} skipped: {why}")
                        continue
                    version = subprocess.run(
                        [
                            python,
                            "-c",
                            "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))",
                            "dlt" if name == "dlt" else "msgraph-sdk",
                        ],
                        capture_output=True,
                        text=True,
                        check=False,
                    ).stdout.strip()
                    peers.append(
                        Peer(
                            name,
                            f"{label} ({name} {version})",
                            [python, str(BENCH / script), *common],
                            perf.child_env(),
                        )
                    )
            for i in range(args.runs):
                order = peers[i % len(peers) :] + peers[: i % len(peers)]
                for peer in order:
                    run_peer(peer, scratch)
                    last = peer.runs[-1]
                    perf.say(
                        f"  run {i + 1} {peer.label}: wall {last.wall:.2f} s, "
                        f"CPU {last.cpu:.2f} s, "
                        f"peak RSS {last.maxrss / MiB:.0f} MiB, {peer.rows[-1]:,} rows"
                    )
            stages = {}
            if args.stages:
                for label, tree in trees.items():
                    stages[label] = stage_profile(
                        emu,
                        args.days,
                        tree or None,
                        scratch,
                        {"ARCHIVER_GRAPH_VERSION": args.version},
                        tuple(kinds),
                    )
        imports = import_costs(scratch, max(3, args.runs), trees)
    load_after = os.getloadavg()
    print(
        report(
            args,
            kinds,
            peers,
            imports,
            {lb: top_imports(t or None) for lb, t in trees.items()},
            stages,
            notes,
            row_bytes / rows_seen,
            load_before,
            load_after,
        )
    )
    return 0


def report(
    args: argparse.Namespace,
    kinds: list[str],
    peers: list[Peer],
    imports: list[tuple[str, float, int]],
    top: dict[str, list[str]],
    stages: dict[str, dict[str, Any]],
    notes: list[str],
    row_bytes: float,
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> str:
    rows = peers[0].rows[0]
    lines = [
        f"### Whole processes: {rows:,} {args.version} rows ({args.days} days {perf.X} "
        f"{len(kinds)} kinds {perf.X} {args.rows_per_day:,} rows/day, {row_bytes:,.0f} bytes "
        "of JSON a row), no rate cap, into a local folder",
        "",
        f"{os.cpu_count()} cores, Python {sys.version.split()[0]}; load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after; medians of {args.runs} runs, "
        "interleaved; wall, CPU (user + system) and peak RSS of each whole process (wait4).",
        "",
        "| peer | wall | CPU | CPU per row | peak RSS | vs typical script: CPU, wall |",
        "|---|---|---|---|---|---|",
    ]
    typical = next(p for p in peers if p.name == "typical")
    t_cpu, t_wall = med([c.cpu for c in typical.runs]), med([c.wall for c in typical.runs])
    for peer in peers:
        cpu, wall = med([c.cpu for c in peer.runs]), med([c.wall for c in peer.runs])
        rss = med([c.maxrss for c in peer.runs]) / MiB
        count = med(peer.rows)
        lines.append(
            f"| {peer.label} | {wall:.1f} s | {cpu:.1f} s | {cpu / count * 1e6:.1f} µs | "
            f"{rss:.0f} MiB | {cpu / t_cpu:.2f}{perf.X}, {wall / t_wall:.2f}{perf.X} |"
        )
    lines += ["", "Runs (wall / CPU / peak RSS):"]
    for peer in peers:
        shown = ", ".join(f"{c.wall:.1f}/{c.cpu:.1f}/{c.maxrss / MiB:.0f}" for c in peer.runs)
        lines.append(f"- {peer.label}: {shown}")
    dlt = next((p for p in peers if p.name == "dlt"), None)
    rss_bar = med([c.maxrss for c in dlt.runs]) / MiB if dlt else 185.0
    lines += [
        "",
        f"Targets (at the default concurrency, same run): CPU ≤ 0.6{perf.X} the typical "
        f"script's ({0.6 * t_cpu:.1f} s), wall ≤ the script's ({t_wall:.1f} s), peak RSS "
        f"below {'dlt' if dlt else 'the dlt figure of the issue'} ({rss_bar:.0f} MiB):",
    ]
    for peer in peers:
        if peer.name.startswith("archiver") and not peer.name.endswith("-c1"):
            cpu, wall = med([c.cpu for c in peer.runs]), med([c.wall for c in peer.runs])
            rss = med([c.maxrss for c in peer.runs]) / MiB
            verdict = [
                f"CPU {cpu / t_cpu:.2f}{perf.X} {'met' if cpu <= 0.6 * t_cpu else 'NOT met'}",
                f"wall {wall / t_wall:.2f}{perf.X} {'met' if wall <= t_wall else 'NOT met'}",
                f"RSS {rss:.0f} MiB {'met' if rss < rss_bar else 'NOT met'}",
            ]
            lines.append(f"- {peer.label}: " + "; ".join(verdict))
    lines += ["", "Imports (whole process, CPU and peak RSS, medians):"]
    for label, cpu, rss in imports:
        lines.append(f"- {label}: {cpu * 1000:.0f} ms, {rss / MiB:.0f} MiB")
    for label, ranked in top.items():
        lines.append(f"- {label}, `-X importtime` self time by package: {', '.join(ranked)}")
    for label, spent in stages.items():
        count = spent["rows"]
        known = sum(spent.get(s, 0.0) for s in STAGES)
        rest = spent["total"] - known
        parts = [f"{s} {spent.get(s, 0.0) / count * 1e6:.2f}" for s in STAGES]
        lines += [
            "",
            f"Where the CPU goes ({label}, default concurrency, one run, µs per row; "
            f"bench/stage_probe.py): "
            + ", ".join(parts)
            + ", rest (event loop: HTTP, TLS, anyio; auth, manifest, exit) "
            + f"{rest / count * 1e6:.2f}"
            + f"; total {spent['total'] / count * 1e6:.2f}. Of it the cyclic GC "
            f"{spent.get('gc', 0.0) / count * 1e6:.2f} ({spent.get('gc_collections', 0)} "
            f"collections); the event-loop thread "
            f"{(spent['main_thread'] - spent['imports']) / count * 1e6:.2f}.",
        ]
    if notes:
        lines += ["", "Notes: " + "; ".join(notes) + "."]
    return "\n".join(lines)
