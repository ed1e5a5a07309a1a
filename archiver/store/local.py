"""The store on a local folder: temp file + fsync + rename; exclusive create via link();
compare-and-swap under an flock on `_manifest/.lock`. Imports nothing of boto3."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from archiver.errors import UsageError, WindowError
from archiver.store.base import (
    MANIFEST_DIR,
    SPOOL_KEY_PREFIX,
    ObjectInfo,
    Store,
    _b64,
    _check_key,
)


def _fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _hash_fd(file: io.BufferedReader) -> tuple[str, int]:
    """SHA-256 hex digest and size of an open file, read from its start."""
    file.seek(0)
    digest = hashlib.file_digest(file, "sha256")
    return digest.hexdigest(), file.tell()


class LocalStore(Store):
    """A folder on a local or mounted filesystem.

    The etag of an object is the SHA-256 hex digest of its content: it reads back
    the same from every call and is the digest the manifest records. It changes
    whenever the content changes; rewriting identical bytes keeps it, which is
    harmless for compare-and-swap because the caller's view is then still current.
    head() and list() hash each file they report.

    Writes go to a temp file in the target's folder (a dot-file ending in `.tmp`,
    which list() and `*.parquet` globs skip), are fsynced, then put in place with
    os.replace (or os.link for exclusive create) and the folder fsynced. Every
    change of an object happens under an flock on `_manifest/.lock`, so
    put_bytes_if_match's compare-then-replace is atomic for every process and
    thread that uses this store on that folder.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.description = str(root)
        self._lock_path = root / MANIFEST_DIR / ".lock"

    def check(self) -> None:
        """Create the root folder if needed and make sure a file can be created in it."""
        root = self.root
        if root.exists() and not root.is_dir():
            raise UsageError(f"destination {root}: exists and is not a folder")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(
                f"destination {root}: cannot create the folder ({exc.strerror or exc})"
            ) from exc
        probe = root / f".archiver-check-{secrets.token_hex(6)}.tmp"
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            probe.unlink()
        except OSError as exc:
            raise UsageError(
                f"destination {root}: cannot write to the folder ({exc.strerror or exc})"
            ) from exc

    def spool_dir(self) -> Path:
        """`<root>/_manifest/spool`: on the destination's filesystem, so put_file renames."""
        path = self.root / SPOOL_KEY_PREFIX.rstrip("/")
        with self._errors("create the spool folder", path):
            self._makedirs(path)
        return path

    def put_file(self, key: str, path: Path, sha256_hex: str) -> ObjectInfo:
        """fsync the file, check its digest, os.replace it into place, fsync the folder."""
        target = self._path(key)
        try:
            with self._errors("write", target):
                with path.open("rb") as file:
                    actual, size = _hash_fd(file)
                    os.fsync(file.fileno())
                if actual != sha256_hex.lower():
                    raise WindowError(
                        f"{target}: checksum mismatch: the file's SHA-256 is {actual}, "
                        f"not {sha256_hex}"
                    )
                self._makedirs(target.parent)
                with self._locked():
                    try:
                        os.replace(path, target)
                    except OSError as exc:
                        if exc.errno != errno.EXDEV:
                            raise
                        self._replace_across_filesystems(path, target)
                    _fsync_dir(target.parent)
        finally:
            path.unlink(missing_ok=True)
        return ObjectInfo(key, size, actual, _b64(actual))

    def put_bytes(self, key: str, data: bytes) -> str:
        """Write a temp file, then os.replace it over the object."""
        target = self._path(key)
        with self._errors("write", target):
            temp = self._write_temp(target, data)
            try:
                with self._locked():
                    os.replace(temp, target)
                    _fsync_dir(target.parent)
            finally:
                temp.unlink(missing_ok=True)
        return hashlib.sha256(data).hexdigest()

    def put_bytes_if_absent(self, key: str, data: bytes) -> str | None:
        """Write a temp file, then os.link it to the key: exclusive create, full content."""
        target = self._path(key)
        with self._errors("write", target):
            temp = self._write_temp(target, data)
            try:
                with self._locked():
                    try:
                        os.link(temp, target)
                    except FileExistsError:
                        return None
                    except OSError as exc:  # a filesystem without hard links
                        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.ENOSYS):
                            raise
                        if target.exists():
                            return None
                        os.replace(temp, target)  # safe: every writer holds the lock
                    _fsync_dir(target.parent)
            finally:
                temp.unlink(missing_ok=True)
        return hashlib.sha256(data).hexdigest()

    def put_bytes_if_match(self, key: str, data: bytes, etag: str) -> str | None:
        """Under the lock: compare the current content's digest with `etag`, then replace."""
        target = self._path(key)
        with self._errors("write", target):
            temp = self._write_temp(target, data)
            try:
                with self._locked():
                    try:
                        with target.open("rb") as file:
                            current, _ = _hash_fd(file)
                    except FileNotFoundError:
                        return None
                    if current != etag:
                        return None
                    os.replace(temp, target)
                    _fsync_dir(target.parent)
            finally:
                temp.unlink(missing_ok=True)
        return hashlib.sha256(data).hexdigest()

    def get_bytes(self, key: str) -> tuple[bytes, str] | None:
        """Read the file whole."""
        target = self._path(key)
        with self._errors("read", target):
            try:
                data = target.read_bytes()
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return None
        return data, hashlib.sha256(data).hexdigest()

    def head(self, key: str) -> ObjectInfo | None:
        """Size and digest of the file (reads it)."""
        target = self._path(key)
        with self._errors("read", target):
            try:
                with target.open("rb") as file:
                    digest, size = _hash_fd(file)
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return None
        return ObjectInfo(key, size, digest, _b64(digest))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Walk the folder below `prefix`; skip dot-files, dot-folders and the spool."""
        base = prefix.rpartition("/")[0]
        start = self.root / base if base else self.root
        keys: list[str] = []
        with self._errors("list", start):
            if not start.is_dir():
                return
            for dirpath, dirnames, filenames in os.walk(start):
                rel = Path(dirpath).relative_to(self.root).as_posix()
                rel = "" if rel == "." else rel + "/"
                dirnames[:] = [
                    d
                    for d in dirnames
                    if not d.startswith(".") and not (rel + d + "/").startswith(SPOOL_KEY_PREFIX)
                ]
                keys.extend(
                    rel + name
                    for name in filenames
                    if not name.startswith(".") and (rel + name).startswith(prefix)
                )
        for key in sorted(keys):
            try:  # stat, not head(): listing must not read (and hash) every file
                size = (self.root / key).stat().st_size
            except FileNotFoundError:  # deleted since the walk
                continue
            yield ObjectInfo(key, size, None)

    def download(self, key: str, path: Path) -> None:
        """Copy the file."""
        source = self._path(key)
        with self._errors("download", source):
            try:
                file = source.open("rb")
            except (FileNotFoundError, NotADirectoryError) as exc:
                raise WindowError(f"{source}: download failed: no such object") from exc
            with file, path.open("wb") as out:
                shutil.copyfileobj(file, out)

    def delete(self, key: str) -> None:
        """Unlink the file."""
        target = self._path(key)
        with self._errors("delete", target), self._locked():
            try:
                target.unlink()
            except (FileNotFoundError, NotADirectoryError):
                return
            _fsync_dir(target.parent)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def _makedirs(self, directory: Path) -> None:
        """Create `directory` and missing parents, fsyncing each new entry's parent."""
        if directory.is_dir():
            return
        self._makedirs(directory.parent)
        with contextlib.suppress(FileExistsError):
            directory.mkdir()
            _fsync_dir(directory.parent)

    def _write_temp(self, target: Path, data: bytes) -> Path:
        """`data` in a new, fsynced temp file beside `target`."""
        self._makedirs(target.parent)
        temp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return temp

    def _replace_across_filesystems(self, path: Path, target: Path) -> None:
        """Copy `path` beside `target`, fsync, then rename over it (slow path for EXDEV)."""
        self._makedirs(target.parent)
        temp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
        try:
            shutil.copyfile(path, temp)
            with temp.open("rb") as file:
                os.fsync(file.fileno())
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the store's flock (each call opens the file anew, so threads exclude too)."""
        self._makedirs(self._lock_path.parent)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    @contextlib.contextmanager
    def _errors(self, action: str, where: Path) -> Iterator[None]:
        """Turn OSError into WindowError naming the file."""
        try:
            yield
        except OSError as exc:
            raise WindowError(f"{where}: {action} failed: {exc.strerror or exc}") from exc
