"""Notebook files under the served root: safe names, validated reads, atomic writes.

A notebook is known by its *name*: its path relative to the root, in one canonical
spelling (see ``NotebookFiles.canonical``): Unicode NFC, no ``.``/``..``/empty parts, no
hidden or internal directories, symlinks resolved. Rooms, authorization and the store
all use that name, so two spellings of one file can never be two rooms.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import mmap
import os
import re
import secrets
import stat
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import nbformat

from . import ipynb

NOTEBOOK_SUFFIX = ".ipynb"
# Directories never listed nor served: checkpoints, VCS internals, caches. Every name
# starting with "." (our own .crdtnb state among them) is refused as well.
SKIPPED_DIRS = {".crdtnb", ".ipynb_checkpoints", ".git", "node_modules", "__pycache__"}
MAX_NAME_PART_BYTES = 255  # a file name on every common file system
MAX_NAME_BYTES = 1024  # a whole relative path
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class PathError(ValueError):
    """A path that does not name a notebook under the root."""


class NotebookNotFound(LookupError):
    pass


class FolderNotFound(NotebookNotFound):
    """No folder of that name under the root."""


class InvalidNotebook(ValueError):
    """A file that nbformat cannot read or that fails validation."""


class FileChanged(RuntimeError):
    """The file changed on disk since it was last read: merge before writing."""


@dataclass(frozen=True, slots=True)
class FileStamp:
    """What identifies one version of a file on disk, cheaply (stat) and surely (sha)."""

    mtime_ns: int
    size: int
    sha256: str
    ino: int = 0
    ctime_ns: int = 0

    @classmethod
    def of(cls, st: os.stat_result, sha256: str = "") -> FileStamp:
        return cls(st.st_mtime_ns, st.st_size, sha256, st.st_ino, st.st_ctime_ns)

    def same_stat(self, st: os.stat_result) -> bool:
        """Whether ``st`` looks like this very version (an atomic rewrite changes the inode,
        any write changes ctime, which no tool can set back)."""
        return (self.mtime_ns, self.size, self.ino, self.ctime_ns) == (
            st.st_mtime_ns,
            st.st_size,
            st.st_ino,
            st.st_ctime_ns,
        )


@dataclass(frozen=True, slots=True)
class NotebookEntry:
    path: str
    name: str
    size: int
    last_modified: float


@dataclass(frozen=True, slots=True)
class FolderEntry:
    path: str
    name: str
    last_modified: float


_COPY_SUFFIX = re.compile(r"-Copy\d*$")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# A file bigger than this is read a chunk at a time (see _read_in_chunks).
READ_CHUNK = 1 << 20


def release(data: bytes | memoryview) -> None:
    """Give back the memory of what ``read_bytes`` read, a chunk at a time (it reads as zeros
    after): unmapping 50 MB at once is kernel work that held up the event loop for 13 ms.
    Call it only once nothing uses ``data`` any more; plain ``bytes`` are left to Python."""
    if isinstance(data, memoryview) and isinstance(data.obj, mmap.mmap):
        buffer = data.obj
        for start in range(0, len(buffer), READ_CHUNK):
            buffer.madvise(mmap.MADV_DONTNEED, start, min(READ_CHUNK, len(buffer) - start))
            os.sched_yield()


def _read_in_chunks(fd: int, size: int) -> tuple[bytes | memoryview, str]:
    """The bytes of an open file that ``fstat`` says is ``size`` long, and their sha256.

    One ``read`` of a 50 MB file is one system call that the kernel does not interrupt: on
    a single core it kept the event loop from running for 30-40 ms, whatever the reading
    thread's priority. A big file is read a megabyte per call instead, offering the CPU to
    any other thread between calls, into anonymous memory that the kernel fills (a
    ``bytes`` or ``bytearray`` of that size is zeroed or copied by one call holding the GIL)."""
    digest = hashlib.sha256()
    if size <= READ_CHUNK:
        data = b"".join(iter(lambda: os.read(fd, READ_CHUNK), b""))
        digest.update(data)
        return data, digest.hexdigest()
    buffer = mmap.mmap(-1, size)
    view = memoryview(buffer)
    filled = 0
    while filled < size:
        got = os.readv(fd, [view[filled : filled + READ_CHUNK]])
        if not got:
            break  # the file got shorter since fstat
        digest.update(view[filled : filled + got])
        filled += got
        os.sched_yield()
    rest = b"".join(iter(lambda: os.read(fd, READ_CHUNK), b""))  # or longer
    if rest:
        digest.update(rest)
        return bytes(view[:filled]) + rest, digest.hexdigest()
    return view[:filled], digest.hexdigest()


def _process_umask() -> int:
    """The umask, read without changing it (os.umask would race other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


class NotebookFiles:
    """The notebooks under one root directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise NotADirectoryError(f"notebook root {self.root} is not a directory")
        self.new_file_mode = 0o666 & ~_process_umask()

    # -- names -------------------------------------------------------------------------

    def normalize(self, path: str) -> str:
        """The spelling rules of a notebook name, without touching the disk (PathError if broken)."""
        path = _spelled(path)
        last = path.rsplit("/", 1)[-1]
        if not last.endswith(NOTEBOOK_SUFFIX) or last == NOTEBOOK_SUFFIX:
            raise PathError("not a notebook path (must end in .ipynb)")
        return path

    def normalize_folder(self, path: str) -> str:
        """The spelling rules of a folder name ("" is the root; one trailing "/" is
        allowed): those of notebook names, and it does not end in .ipynb."""
        if path in ("", "/"):
            return ""
        path = _spelled(path[:-1] if path.endswith("/") else path)
        if path.endswith(NOTEBOOK_SUFFIX):
            raise PathError("a folder name must not end in .ipynb")
        return path

    def canonical(self, path: str) -> str:
        """The one name of the file ``path`` leads to: spelling normalised, symlinks
        resolved (the target must be a notebook under the root too). Files need not exist."""
        name = self.normalize(path)
        real = self._real_path(name)
        try:
            relative = real.relative_to(self.root)
        except ValueError:
            raise PathError("path leads outside the notebook root") from None
        target = unicodedata.normalize("NFC", PurePosixPath(relative).as_posix())
        if target != name:
            # A symlink: its target obeys the same rules (no hidden dirs, a notebook).
            self.normalize(target)
        return target

    def resolve(self, path: str) -> Path:
        """The real file for a notebook name, refusing anything that leaves the root."""
        name = self.canonical(path)
        return self._real_path(name)

    def locate(self, name: str) -> Path:
        """The real file of the canonical name ``name``, checked to be that name now: a
        symbolic link swapped in since the name was checked (code in a kernel can make
        links next to its notebook) must not redirect a read, a write or a kernel."""
        real = self.resolve(name)
        if unicodedata.normalize("NFC", real.relative_to(self.root).as_posix()) != self.normalize(name):
            raise PathError(f"{name} leads to another file now (a symbolic link)")
        return real

    def exact(self, name: str) -> str:
        """``name`` if it is the canonical name of its file now, else PathError: for a
        name that was authorized a moment ago (see ``locate``)."""
        if self.canonical(name) != self.normalize(name):
            raise PathError(f"{name} leads to another file now (a symbolic link)")
        return self.normalize(name)

    def _real_path(self, name: str) -> Path:
        here = self.root
        for part in name.split("/"):
            here = _lookalike(here, part)
        try:
            return here.resolve()
        except (RuntimeError, OSError) as exc:  # a symlink loop
            raise PathError("path cannot be resolved") from exc

    # -- reading and writing ----------------------------------------------------------

    def read(self, name: str) -> tuple[dict[str, Any], FileStamp]:
        """Read and validate a notebook (by its canonical name); upgrade it to nbformat 4."""
        data, stamp = self.read_bytes(name)
        try:
            return self.parse(name, data), stamp
        finally:
            release(data)

    def parse(self, name: str, data: bytes | memoryview) -> dict[str, Any]:
        """The notebook in the bytes of the file ``name`` (InvalidNotebook if it is not one)."""
        try:
            return ipynb.parse(data)
        except Exception as exc:  # nbformat raises many kinds: JSON, validation, version
            raise InvalidNotebook(f"{name} is not a valid notebook: {_first_line(exc)}") from exc

    def read_bytes(self, name: str) -> tuple[bytes | memoryview, FileStamp]:
        """The bytes of a notebook's file, unchecked, and what identifies this version."""
        real = self.locate(name)
        try:
            with self._directory(real) as directory:
                # O_NONBLOCK: opening a FIFO spelled like a notebook must not wait for a writer.
                fd = os.open(real.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=directory)
                try:
                    st = os.fstat(fd)
                    if not stat.S_ISREG(st.st_mode):
                        raise NotebookNotFound(f"{name} is not a regular file")
                    data, sha256 = _read_in_chunks(fd, st.st_size)
                finally:
                    os.close(fd)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise NotebookNotFound(f"no notebook at {name}") from exc
        return data, FileStamp.of(st, sha256)

    def read_stamp(self, name: str) -> FileStamp:
        """What identifies the version of a notebook's file now (its bytes read and hashed)."""
        data, stamp = self.read_bytes(name)
        release(data)
        return stamp

    def stat(self, name: str) -> os.stat_result | None:
        try:
            return os.stat(self.resolve(name))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def write(self, name: str, nb: dict[str, Any], expect: FileStamp | None = None) -> FileStamp:
        """Validate, then write atomically (temp file in the same directory + rename).

        With ``expect``, refuse (FileChanged) to replace a file that is no longer that
        version: checked right before the rename, so an outside edit is never overwritten
        unseen (only a write landing in the microseconds between check and rename could)."""
        real = self.locate(name)
        try:
            # nbformat.validate, then nbformat.writes(nb) + "\n" byte for byte, in pieces.
            chunks = ipynb.serialize(ipynb.validated(nb))
        except Exception as exc:
            raise InvalidNotebook(f"refusing to save {name}: {_first_line(exc)}") from exc
        digest = hashlib.sha256()
        for chunk in chunks:
            digest.update(chunk)
        sha = digest.hexdigest()
        with self._directory(real, create=True) as directory:
            if expect is not None and expect.sha256 == sha:
                try:
                    if expect.same_stat(os.stat(real.name, dir_fd=directory, follow_symlinks=False)):
                        return expect  # the file holds exactly this already
                except FileNotFoundError:
                    pass
            tmp = f".{real.name}.{secrets.token_hex(6)}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=directory)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.writelines(chunks)
                    handle.flush()
                    os.fsync(handle.fileno())
                    try:
                        current: os.stat_result | None = os.stat(real.name, dir_fd=directory, follow_symlinks=False)
                    except FileNotFoundError:
                        current = None
                    if expect is not None and current is not None and not expect.same_stat(current):
                        raise FileChanged(f"{name} changed on disk")
                    os.fchmod(handle.fileno(), (current.st_mode & 0o777) if current is not None else self.new_file_mode)
                os.replace(tmp, real.name, src_dir_fd=directory, dst_dir_fd=directory)
            except BaseException:
                try:
                    os.unlink(tmp, dir_fd=directory)
                except FileNotFoundError:
                    pass
                raise
            return FileStamp.of(os.stat(real.name, dir_fd=directory, follow_symlinks=False), sha)

    @contextmanager
    def _directory(self, real: Path, create: bool = False) -> Iterator[int]:
        """A descriptor of the directory of ``real`` (a resolved path under the root),
        reached from the root one name at a time without following links: a link
        swapped in after the name was resolved (code in a kernel can make them next to
        its notebook) cannot redirect a read or a write."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for part in real.parent.relative_to(self.root).parts:
                if create:
                    try:
                        os.mkdir(part, dir_fd=fd)
                    except FileExistsError:
                        pass
                try:
                    inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        if stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode):
                            raise PathError("the path changed into a symbolic link") from exc
                        if create:
                            raise PathError(f"a parent of {real.name} is not a directory") from None
                    raise
                os.close(fd)
                fd = inner
            yield fd
        finally:
            os.close(fd)

    def create(self, name: str, nb: dict[str, Any] | None = None) -> dict[str, Any]:
        """Create a notebook (empty unless given); FileExistsError if one is there."""
        real = self.resolve(name)
        if real.exists():
            raise FileExistsError(f"{name} already exists")
        if nb is None:
            nb = _plain(nbformat.v4.new_notebook())
            nb["metadata"] = {
                "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                "language_info": {"name": "python"},
            }
            nb["cells"] = [_plain(nbformat.v4.new_code_cell(""))]
        self.write(name, nb)
        return nb

    def rename(self, old: str, new: str) -> None:
        """Move the notebook ``old`` (a canonical name) to ``new``, creating missing
        folders; FileExistsError if ``new`` exists (never replaced), NotebookNotFound
        if ``old`` does not. Both walked from the root without following links."""
        source = self.locate(old)
        target = self._real_path(self.exact(new))
        with self._directory(source) as src, self._directory(target, create=True) as dst:
            try:
                # A hard link fails if the target exists: no window in which it is replaced.
                os.link(source.name, target.name, src_dir_fd=src, dst_dir_fd=dst, follow_symlinks=False)
            except FileExistsError:
                raise FileExistsError(f"{new} already exists") from None
            except FileNotFoundError:
                raise NotebookNotFound(f"no notebook at {old}") from None
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                    raise
                # No hard links here: check, then rename.
                if _exists(target.name, dst):
                    raise FileExistsError(f"{new} already exists") from None
                os.rename(source.name, target.name, src_dir_fd=src, dst_dir_fd=dst)
                return
            os.unlink(source.name, dir_fd=src)

    def delete(self, name: str) -> None:
        """Remove the notebook file of the canonical name ``name``."""
        real = self.locate(name)
        try:
            with self._directory(real) as directory:
                os.unlink(real.name, dir_fd=directory)
        except (FileNotFoundError, NotADirectoryError):
            raise NotebookNotFound(f"no notebook at {name}") from None

    def copy_name(self, name: str) -> str:
        """A free name for a copy of ``name``, as JupyterLab makes them: "a.ipynb" ->
        "a-Copy1.ipynb" (a copy of "a-Copy1.ipynb" is "a-Copy2.ipynb")."""
        stem = _COPY_SUFFIX.sub("", name[: -len(NOTEBOOK_SUFFIX)])
        for number in itertools.count(1):
            candidate = f"{stem}-Copy{number}{NOTEBOOK_SUFFIX}"
            if self.stat(candidate) is None:
                return candidate
        raise AssertionError("unreachable")

    def make_folder(self, name: str) -> None:
        """Create the folder ``name`` (a normalized folder name) and missing parents;
        FileExistsError if it exists."""
        if not name:
            raise FileExistsError("the root exists")
        parent, _, last = name.rpartition("/")
        with self._folder_fd(parent, create=True) as directory:
            try:
                os.mkdir(last, dir_fd=directory)
            except FileExistsError:
                raise FileExistsError(f"{name} already exists") from None

    def list_folder(self, name: str) -> tuple[list[FolderEntry], list[NotebookEntry]]:
        """The folders and notebooks directly in the folder ``name`` ("" is the root),
        sorted by name; hidden, internal and linked folders are left out."""
        folders: list[FolderEntry] = []
        notebooks: list[NotebookEntry] = []
        prefix = f"{name}/" if name else ""
        with self._folder_fd(name) as directory:
            with os.scandir(directory) as scan:
                entries = sorted(scan, key=lambda entry: entry.name)
            for entry in entries:
                shown = unicodedata.normalize("NFC", entry.name)
                if shown.startswith(".") or shown in SKIPPED_DIRS or _CONTROL.search(shown):
                    continue
                try:
                    st = os.stat(entry.name, dir_fd=directory, follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):
                        if not shown.endswith(NOTEBOOK_SUFFIX):
                            folders.append(FolderEntry(prefix + shown, shown, st.st_mtime))
                    elif shown.endswith(NOTEBOOK_SUFFIX):
                        self.canonical(prefix + shown)  # a link must lead to a notebook under the root
                        st = os.stat(entry.name, dir_fd=directory)
                        if stat.S_ISREG(st.st_mode):
                            notebooks.append(NotebookEntry(prefix + shown, shown, st.st_size, st.st_mtime))
                except (PathError, OSError):
                    continue
        return folders, notebooks

    @contextmanager
    def _folder_fd(self, name: str, create: bool = False) -> Iterator[int]:
        """A descriptor of the folder ``name`` (normalized), reached from the root one
        name at a time without following links (FolderNotFound if it is not a folder)."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for part in name.split("/") if name else ():
                here = _lookalike_fd(fd, part)
                if create:
                    try:
                        os.mkdir(here, dir_fd=fd)
                    except FileExistsError:
                        pass
                try:
                    inner = os.open(here, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except (FileNotFoundError, NotADirectoryError):
                    raise FolderNotFound(f"no folder {name}") from None
                except OSError as exc:
                    if exc.errno == errno.ELOOP:
                        raise FolderNotFound(f"no folder {name} (a symbolic link)") from None
                    raise
                os.close(fd)
                fd = inner
            yield fd
        finally:
            os.close(fd)

    def list(self) -> list[NotebookEntry]:
        entries: dict[str, NotebookEntry] = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS and not d.startswith("."))
            for filename in sorted(filenames):
                if not filename.endswith(NOTEBOOK_SUFFIX) or filename.startswith("."):
                    continue
                full = Path(dirpath) / filename
                rel = unicodedata.normalize("NFC", full.relative_to(self.root).as_posix())
                try:
                    self.canonical(rel)
                    st = full.stat()
                except (PathError, OSError):
                    continue
                entries.setdefault(rel, NotebookEntry(rel, unicodedata.normalize("NFC", filename), st.st_size, st.st_mtime))
        return list(entries.values())


def _spelled(path: str) -> str:
    """``path`` in NFC if it is a well-spelled relative name (PathError if not)."""
    if not path or not isinstance(path, str):
        raise PathError("invalid path")
    if "\\" in path or _CONTROL.search(path):
        raise PathError("invalid character in path")
    if path.startswith("/"):
        raise PathError("absolute paths are not allowed")
    path = unicodedata.normalize("NFC", path)
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise PathError("empty, '.' and '..' parts are not allowed in paths")
    if any(part.startswith(".") or part in SKIPPED_DIRS for part in parts):
        raise PathError("hidden and internal directories are not served")
    if any(len(part.encode("utf-8")) > MAX_NAME_PART_BYTES for part in parts):
        raise PathError(f"a path part is longer than {MAX_NAME_PART_BYTES} bytes")
    if len(path.encode("utf-8")) > MAX_NAME_BYTES:
        raise PathError(f"path longer than {MAX_NAME_BYTES} bytes")
    return path


def _exists(name: str, directory: int) -> bool:
    try:
        os.stat(name, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _lookalike_fd(directory: int, part: str) -> str:
    """``part``, or the entry of ``directory`` whose NFC spelling is ``part`` (see ``_lookalike``)."""
    if part.isascii() or _exists(part, directory):
        return part
    try:
        for entry in os.listdir(directory):
            if unicodedata.normalize("NFC", entry) == part:
                return entry
    except OSError:
        pass
    return part


def _lookalike(directory: Path, part: str) -> Path:
    """``directory / part``, or the existing entry whose NFC spelling is ``part`` (a file
    made on macOS is stored in NFD): one name, one file."""
    direct = directory / part
    if os.path.lexists(direct) or part.isascii():
        return direct
    try:
        with os.scandir(directory) as scan:
            for entry in scan:
                if unicodedata.normalize("NFC", entry.name) == part:
                    return directory / entry.name
    except OSError:
        pass
    return direct


def _plain(node: Any) -> dict[str, Any]:
    """NotebookNode -> plain dicts and lists."""
    plain: dict[str, Any] = json.loads(json.dumps(node))
    return plain


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
