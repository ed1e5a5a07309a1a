"""Run `archiver.cli.main(argv)` with each stage of a window's work timed in CPU seconds.

    python bench/stage_probe.py REPORT.json backfill --start ... --end ...

`bench/perf.py --whole --stages` runs the archiver through this module, as a whole
process like `python -m archiver`, to say where its CPU goes. Each stage is timed with
`time.thread_time()` (the CPU of the thread doing it, so other threads and waiting for
the GIL are not counted) and exclusively (a stage inside another is taken out of it):

    imports    process CPU until `archiver.cli` is imported (interpreter start not included)
    parse      graph.parse_page (orjson over a page's bytes) or, where pages go from bytes
               straight to Arrow, pyarrow.json.read_json (worker thread)
    type       archive.select_rows (rows_to_batch + the window filter) or page_to_batch and
               in_window less the parse
    write      parquet.WindowWriter.write/close (rows spilled, read back, Arrow -> Parquet,
               zstd), not the hash
    hash       parquet.sha256_file: the digest of the spool file the writer made
    ids        reconcile.Ids.add: the ids noted per page
    free       the rest of archive.write_page (pages are typed where they are parsed, so
               no parsed rows are left to free here)
    reconcile  reconcile.reconcile: the dedup at the end of a window (and any rewrite)
    store      LocalStore/S3Store.put_file: fsync, rename (or upload), without its hash
    store-hash store.local._hash_fd: LocalStore.put_file reading the file again to verify it
    gc         the cyclic garbage collector, whichever stage set it off (also inside them)

`rest` (computed by perf.py) is the process's CPU less all of these: the event loop
(aiohttp, TLS, anyio, thread hand-offs), auth, manifest, claims, logging, exit.
The report is a JSON object of stage -> CPU seconds, plus `main_thread` (the CPU of the
thread that imported and ran the event loop) and `gc_collections`; with PROBE_MEMORY=1
also the peak RSS and what Arrow's memory pool held then (sampled every 20 ms).
"""

from __future__ import annotations

import functools
import gc
import importlib
import json
import os
import runpy
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

_lock = threading.Lock()
_spent: dict[str, float] = {}
_local = threading.local()


def _add(stage: str, seconds: float) -> None:
    with _lock:
        _spent[stage] = _spent.get(stage, 0.0) + seconds


def timed(stage: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """`function`, its CPU (less that of stages inside it) added to `stage`."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        stack: list[float] = _local.__dict__.setdefault("stack", [])
        stack.append(0.0)  # CPU of stages nested in this one
        began = time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            took = time.thread_time() - began
            inner = stack.pop()
            _add(stage, took - inner)
            if stack:
                stack[-1] += took

    return wrapper


_gc_began: dict[int, float] = {}
_gc_count = 0


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    global _gc_count
    me = threading.get_ident()
    if phase == "start":
        _gc_began[me] = time.thread_time()
    elif me in _gc_began:
        _add("gc", time.thread_time() - _gc_began.pop(me))
        _gc_count += 1


def install() -> None:
    """Wrap the stages in place (module globals, so the callers pick the wrappers up)."""
    import pyarrow.json

    from archiver import archive, reconcile, store
    from archiver.graph import client as graph
    from archiver.sinks import parquet

    graph.parse_page = timed("parse", graph.parse_page)
    pyarrow.json.read_json = timed("parse", pyarrow.json.read_json)  # schema.page_to_batch
    for name in ("select_rows", "in_window", "page_to_batch"):  # dicts / bytes to Arrow
        if hasattr(archive, name):
            setattr(archive, name, timed("type", getattr(archive, name)))
    archive.write_page = timed("free", archive.write_page)
    parquet.WindowWriter.write = timed("write", parquet.WindowWriter.write)  # type: ignore[method-assign]
    parquet.WindowWriter.close = timed("write", parquet.WindowWriter.close)  # type: ignore[method-assign]
    parquet.sha256_file = timed("hash", parquet.sha256_file)
    reconcile.Ids.add = timed("ids", reconcile.Ids.add)  # type: ignore[method-assign]
    archive.reconcile = timed("reconcile", archive.reconcile)
    for cls in [store.LocalStore, *([store.S3Store] if "S3Store" in vars(store) else [])]:
        cls.put_file = timed("store", cls.put_file)  # type: ignore[method-assign]
    local = getattr(store, "local", store)  # the store package's local module, or the old store.py
    if hasattr(local, "_hash_fd"):
        local._hash_fd = timed("store-hash", local._hash_fd)
    gc.callbacks.append(_on_gc)


class _MemorySampler:
    """Every 20 ms: this process's RSS and the bytes Arrow's default pool holds; the
    samples at the peak of each (`PROBE_MEMORY=1`)."""

    def __init__(self) -> None:
        self.peak_rss = (0, 0)  # (RSS, Arrow bytes) when RSS peaked
        self.peak_arrow = (0, 0)  # (RSS, Arrow bytes) when Arrow's bytes peaked
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import pyarrow as pa

        with open("/proc/self/statm") as statm:
            while not self._stop.wait(0.02):
                statm.seek(0)
                rss = int(statm.read().split()[1]) * self._page
                arrow = pa.total_allocated_bytes()
                if rss > self.peak_rss[0]:
                    self.peak_rss = (rss, arrow)
                if arrow > self.peak_arrow[1]:
                    self.peak_arrow = (rss, arrow)

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join()
        return {
            "peak_rss": self.peak_rss[0],
            "arrow_at_peak_rss": self.peak_rss[1],
            "peak_arrow": self.peak_arrow[1],
            "rss_at_peak_arrow": self.peak_arrow[0],
        }


def main() -> int:
    """Import, wrap the stages, then run `python -m archiver ARGV` as it runs."""
    report, argv = sys.argv[1], sys.argv[2:]
    import archiver.__main__ as entry

    # As the command does, before any import (a tree from before prepare_allocators: its
    # prefer_system_allocator).
    prepare = getattr(entry, "prepare_allocators", None) or entry.prefer_system_allocator
    prepare()
    began = time.process_time()
    importlib.import_module("archiver.cli")  # timed: what `python -m archiver` imports first

    _add("imports", time.process_time() - began)
    install()
    sampler = _MemorySampler() if os.environ.get("PROBE_MEMORY") == "1" else None
    sys.argv = ["archiver", *argv]
    try:
        runpy.run_module("archiver", run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        code = exit_.code
    else:
        code = 0
    finally:
        main_thread = time.thread_time()  # this thread ran the imports and the event loop
        memory = sampler.stop() if sampler is not None else {}
        with open(report, "w") as out:
            json.dump(
                {**_spent, "main_thread": main_thread, "gc_collections": _gc_count, **memory}, out
            )
    return code if isinstance(code, int) else 1


if __name__ == "__main__":
    sys.exit(main())
