"""The `archiver` command, as `python -m archiver` and the `archiver` script run it: the
command line (`archiver.cli.main`) in a process set up for a long run. Tests call
`archiver.cli.main()` itself, which leaves the process as it is."""

# Young objects the cyclic collector lets pile up before it looks (CPython's default: 700).
GC_YOUNG_THRESHOLD = 50_000
# glibc malloc arenas: by default up to 8 per core, one per thread that allocates at once;
# each keeps the memory its threads freed. Two are plenty: the threads mostly take turns on
# the GIL, and row groups are written one at a time (sinks/parquet.py).
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt's parameter number in glibc's malloc.h


def run() -> int:
    """The `archiver` command: `archiver.cli.main()` in a settled process."""
    prepare_allocators()  # before pyarrow is imported and before any import starts a thread
    from archiver.cli import main

    settle_process()
    return main()


def prepare_allocators() -> None:
    """Memory allocators that give back what a page, a row group, a worker thread freed;
    must run first thing, before any import.

    Arrow allocates from the C library's malloc rather than its bundled mimalloc (Arrow
    reads ARROW_DEFAULT_MEMORY_POOL once, when pyarrow is first imported), and glibc keeps
    two arenas rather than one per busy thread (mimalloc and per-thread arenas each keep
    what their threads freed; the cap must come before an import starts a thread, or the
    arenas made by then stay). The environment's ARROW_DEFAULT_MEMORY_POOL and
    MALLOC_ARENA_MAX, if set, win. Measured in README, "Performance".
    """
    import os
    import sys

    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    if sys.platform == "linux":
        _limit_malloc_arenas()


def settle_process() -> None:
    """Once the command's modules are imported, before any work: the cyclic garbage
    collector off the imported modules and off a page's short-lived rows.

    `gc.freeze()` moves every object alive now (the imported modules: some 300,000) into
    a generation no collection walks again; a higher young threshold lets a page's rows
    be freed by reference counting before a collection would walk them (with CPython's
    defaults a backfill of 240,000 beta rows spent a tenth of its CPU in 850 collections).
    """
    import gc

    gc.freeze()
    young, middle, old = gc.get_threshold()
    if young:  # 0: collection disabled by whoever embeds us; leave it so
        gc.set_threshold(max(young, GC_YOUNG_THRESHOLD), middle, old)


def _limit_malloc_arenas() -> None:
    """mallopt(M_ARENA_MAX, MALLOC_ARENAS) where the C library is glibc (else nothing);
    the environment's MALLOC_ARENA_MAX, if set, wins."""
    import ctypes
    import os

    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl has no mallopt arenas)
        libc.mallopt(_M_ARENA_MAX, MALLOC_ARENAS)
    except (AttributeError, OSError):
        pass


if __name__ == "__main__":
    raise SystemExit(run())
