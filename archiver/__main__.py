"""The `archiver` command, as `python -m archiver` and the `archiver` script run it: the
command line (`archiver.cli.main`) in a process set up for a long run. Tests call
`archiver.cli.main()` itself, which leaves the process as it is."""

# Young objects the cyclic collector lets pile up before it looks (CPython's default: 700).
GC_YOUNG_THRESHOLD = 50_000
# glibc malloc arenas: by default up to 8 per core, one per thread that allocates at once;
# each keeps the memory its thread freed. Two are plenty for two CPU-bound threads.
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt's parameter number in glibc's malloc.h


def run() -> int:
    """The `archiver` command: `archiver.cli.main()` in a settled process."""
    prefer_system_allocator()  # before pyarrow is imported
    from archiver.cli import main

    settle_process()
    return main()


def settle_process() -> None:
    """Once the command's modules are imported, before any work: the cyclic garbage
    collector off the imported modules and off a page's short-lived rows, and memory
    allocators that give back what a page, a row group, a worker thread freed.

    `gc.freeze()` moves every object alive now (the imported modules: some 300,000) into
    a generation no collection walks again; a higher young threshold lets a page's rows
    be freed by reference counting before a collection would walk them (with CPython's
    defaults a backfill of 240,000 beta rows spent a tenth of its CPU in 850 collections).
    Arrow allocates from the system allocator rather than its bundled mimalloc, and glibc
    keeps two arenas rather than one per busy thread (mimalloc and per-thread arenas each
    keep what their thread freed): a backfill of 240,000 beta rows at concurrency 8 peaked
    at about 240 MiB rather than 350, at the same CPU.
    """
    import gc
    import sys

    gc.freeze()
    young, middle, old = gc.get_threshold()
    if young:  # 0: collection disabled by whoever embeds us; leave it so
        gc.set_threshold(max(young, GC_YOUNG_THRESHOLD), middle, old)
    if sys.platform == "linux":
        _limit_malloc_arenas()


def prefer_system_allocator() -> None:
    """Arrow allocates from the C library's malloc rather than its bundled mimalloc, unless
    ARROW_DEFAULT_MEMORY_POOL says otherwise. Must run before pyarrow is first imported:
    Arrow reads the variable once."""
    import os

    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")


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
