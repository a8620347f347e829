"""Notebook files under the served root: safe paths, validated reads, atomic writes."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import nbformat

NOTEBOOK_SUFFIX = ".ipynb"
# Directories never listed nor served: our own state, checkpoints, VCS internals.
SKIPPED_DIRS = {".crdtnb", ".ipynb_checkpoints", ".git", "node_modules", "__pycache__"}


class PathError(ValueError):
    """A path that does not name a notebook under the root."""


class NotebookNotFound(LookupError):
    pass


class InvalidNotebook(ValueError):
    """A file that nbformat cannot read or that fails validation."""


@dataclass(frozen=True, slots=True)
class FileStamp:
    """What identifies one version of a file on disk, cheaply (mtime, size) and surely (sha)."""

    mtime_ns: int
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class NotebookEntry:
    path: str
    name: str
    size: int
    last_modified: float


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class NotebookFiles:
    """The notebooks under one root directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise NotADirectoryError(f"notebook root {self.root} is not a directory")

    def normalize(self, path: str) -> str:
        """The canonical room name for a client-supplied path, or PathError."""
        if not path or "\x00" in path or "\\" in path:
            raise PathError("invalid path")
        pure = PurePosixPath(path)
        if pure.is_absolute() or path.startswith("/"):
            raise PathError("absolute paths are not allowed")
        if any(part in ("..", ".") for part in pure.parts):
            raise PathError("'..' and '.' are not allowed in paths")
        if any(part in SKIPPED_DIRS for part in pure.parts):
            raise PathError("that directory is not served")
        if pure.suffix != NOTEBOOK_SUFFIX:
            raise PathError("not a notebook path (must end in .ipynb)")
        return pure.as_posix()

    def resolve(self, path: str) -> Path:
        """The real file for a room name, refusing anything that leaves the root (symlinks too).

        A symlink inside the root is refused as well: access is granted by name (and a
        kernel's directory follows from it), so the name must be where the file is.
        Code run in a sandboxed kernel can make symlinks next to its notebook."""
        name = self.normalize(path)
        lexical = self.root / name
        real = lexical.resolve()
        if not real.is_relative_to(self.root):
            raise PathError("path leads outside the notebook root")
        if real != lexical:
            raise PathError("path goes through a symbolic link")
        return real

    def exists(self, path: str) -> bool:
        return self.resolve(path).is_file()

    def read(self, path: str) -> tuple[dict[str, Any], FileStamp]:
        """Read and validate a notebook; upgrade it to nbformat 4."""
        real = self.resolve(path)
        try:
            with self._directory(path) as directory:
                fd = os.open(real.name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=directory)
                with os.fdopen(fd, "rb") as handle:
                    st = os.fstat(handle.fileno())
                    data = handle.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise NotebookNotFound(f"no notebook at {path}") from exc
        stamp = FileStamp(st.st_mtime_ns, st.st_size, sha256_bytes(data))
        try:
            nb = nbformat.reads(data.decode("utf-8"), as_version=4)
            nbformat.validate(nb)
        except Exception as exc:  # nbformat raises many kinds: JSON, validation, version
            raise InvalidNotebook(f"{path} is not a valid notebook: {_first_line(exc)}") from exc
        return _plain(nb), stamp

    def write(self, path: str, nb: dict[str, Any]) -> FileStamp:
        """Validate, then write atomically (temp file in the same directory + rename)."""
        real = self.resolve(path)
        node = nbformat.from_dict(nb)
        try:
            nbformat.validate(node)
        except Exception as exc:
            raise InvalidNotebook(f"refusing to save {path}: {_first_line(exc)}") from exc
        data = (nbformat.writes(node) + "\n").encode("utf-8")
        with self._directory(path, create=True) as directory:
            tmp = f".{real.name}.{secrets.token_hex(6)}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=directory)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                    try:
                        current = os.stat(real.name, dir_fd=directory, follow_symlinks=False)
                        os.fchmod(handle.fileno(), current.st_mode & 0o777)
                    except FileNotFoundError:
                        pass
                os.replace(tmp, real.name, src_dir_fd=directory, dst_dir_fd=directory)
            except BaseException:
                try:
                    os.unlink(tmp, dir_fd=directory)
                except FileNotFoundError:
                    pass
                raise
            st = os.stat(real.name, dir_fd=directory, follow_symlinks=False)
        return FileStamp(st.st_mtime_ns, st.st_size, sha256_bytes(data))

    @contextmanager
    def _directory(self, path: str, create: bool = False) -> Iterator[int]:
        """A descriptor of the notebook's directory, reached from the root one name at
        a time without following symbolic links: a link swapped in after ``resolve``
        (a kernel can make them next to its notebook) cannot redirect a read or write."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for part in PurePosixPath(self.normalize(path)).parent.parts:
                if create:
                    try:
                        os.mkdir(part, dir_fd=fd)
                    except FileExistsError:
                        pass
                try:
                    inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR) and stat.S_ISLNK(
                        os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode
                    ):
                        raise PathError("path goes through a symbolic link") from exc
                    raise
                os.close(fd)
                fd = inner
            yield fd
        finally:
            os.close(fd)

    def create(self, path: str) -> dict[str, Any]:
        """Create an empty notebook; FileExistsError if one is there."""
        real = self.resolve(path)
        if real.exists():
            raise FileExistsError(f"{path} already exists")
        nb = _plain(nbformat.v4.new_notebook())
        nb["metadata"] = {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        }
        nb["cells"] = [_plain(nbformat.v4.new_code_cell(""))]
        self.write(path, nb)
        return nb

    def list(self) -> list[NotebookEntry]:
        entries = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS and not d.startswith("."))
            for filename in sorted(filenames):
                if not filename.endswith(NOTEBOOK_SUFFIX) or filename.startswith("."):
                    continue
                full = Path(dirpath) / filename
                rel = full.relative_to(self.root).as_posix()
                try:
                    self.resolve(rel)
                    st = full.stat()
                except (PathError, OSError):
                    continue
                entries.append(NotebookEntry(rel, filename, st.st_size, st.st_mtime))
        return entries


def _plain(node: Any) -> dict[str, Any]:
    """NotebookNode -> plain dicts and lists."""
    return json.loads(json.dumps(node))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
