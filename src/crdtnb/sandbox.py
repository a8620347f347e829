"""Kernels in a bubblewrap sandbox: code run by a runner cannot read the daemon's
secrets nor touch notebooks outside its own notebook's directory.

``BwrapSandbox`` decides what a kernel sees (the policy is in README.md,
"Security"); ``SandboxedKernelManager`` is a jupyter_client kernel manager that
starts its kernel through it. Inside the sandbox a kernel has:

- read-only: /usr (and the merged-/usr links), a short list of harmless /etc
  files, its Python (prefixes, venv, site-packages) and its kernelspec;
- read-write: its notebook's directory (its working directory) and a private
  directory holding its connection file and its ipc sockets;
- private and empty: /tmp (also its HOME), /dev, /proc, its own pid, ipc, uts
  and user namespaces, no capabilities; the network is the host's.

Everything else is absent: ROOT outside the notebook's directory, the state
directory (even where it lies inside the notebook's directory), the daemon's
home and its environment variables, other kernels' connection files and sockets.
The kernel talks to the daemon over ipc sockets in its private directory rather
than TCP on loopback, so no other kernel can subscribe to its outputs.
"""

from __future__ import annotations

import errno
import glob
import logging
import os
import shutil
import site
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from jupyter_client.manager import AsyncKernelManager

logger = logging.getLogger("crdtnb.sandbox")

PROBE_TIMEOUT = 20.0  # seconds; a cold Python start on a busy machine

# Harmless files of /etc that programs commonly read (dynamic linker, user and
# host names, DNS, TLS roots, time zone, locale, fonts, MIME types).
ETC_ENTRIES = (
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "passwd", "group", "nsswitch.conf",
    "hosts", "host.conf", "resolv.conf", "gai.conf", "services", "protocols",
    "localtime", "timezone", "locale.alias", "locale.conf", "default/locale",
    "ssl/certs", "ssl/openssl.cnf", "ca-certificates", "ca-certificates.conf", "pki/tls/certs",
    "fonts", "mime.types", "matplotlibrc", "alternatives", "os-release", "debian_version",
    "terminfo", "inputrc", "python3*",
)  # fmt: skip
# Variables of the daemon's environment a kernel inherits; anything else (tokens,
# cloud credentials, CRDTNB_TOKEN) stays out. The kernelspec's own env is kept.
ENV_KEPT = ("PATH", "LANG", "LANGUAGE", "TZ", "TERM", "PYTHONUNBUFFERED", "PYTHONIOENCODING")
ENV_KEPT_PREFIXES = ("LC_",)
HOME_IN_SANDBOX = "/tmp"


class SandboxMode(str, Enum):
    AUTO = "auto"  # bwrap when a probe shows it works, else none
    BWRAP = "bwrap"
    NONE = "none"


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create a sandbox on this machine."""


def _inside(path: Path, directory: Path) -> bool:
    return path == directory or path.is_relative_to(directory)


def _home() -> Path | None:
    try:
        return Path.home().resolve()
    except (KeyError, RuntimeError):
        return None


@dataclass(frozen=True)
class BwrapSandbox:
    """What a kernel may see, and the bwrap command line that enforces it."""

    bwrap: str  # the bwrap executable
    root: Path  # the notebook root: only a notebook's own directory of it is visible
    hidden: tuple[Path, ...] = ()  # never visible, wherever they are (the state directory)
    python_paths: tuple[Path, ...] = field(default_factory=lambda: _python_paths())

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", self.root.resolve())
        object.__setattr__(self, "hidden", tuple(p.resolve() for p in self.hidden))

    # -- the command -------------------------------------------------------------------

    def wrap(
        self,
        cmd: Sequence[str],
        *,
        cwd: Path,
        cwd_fd: int | None = None,
        private_dir: Path | None = None,
        extra_readonly: Iterable[Path] = (),
    ) -> list[str]:
        """``cmd`` run inside the sandbox with ``cwd`` (a directory under ROOT, without
        symbolic links) as its writable working directory, bound from ``cwd_fd`` when
        given (see ``open_directory``: what is bound is what was checked)."""
        if not cwd.is_absolute() or not _inside(cwd, self.root):
            raise ValueError(f"{cwd} is not under the notebook root {self.root}")
        if cwd in self.hidden:
            raise ValueError(f"{cwd} is a hidden directory (the state directory): no kernel runs there")
        args = [
            self.bwrap,
            "--unshare-all",  # pid, ipc, uts, cgroup and (where allowed) user namespaces
            "--share-net",  # notebooks may use the network, as before
            "--die-with-parent",  # no orphan when the daemon dies, even by kill -9
            "--new-session",  # no TIOCSTI into a terminal of the daemon
            "--cap-drop", "ALL",  # a daemon run as root gives its kernels no capabilities
        ]  # fmt: skip
        args += self._system_mounts()
        outer, inner = self._runtime_paths(cmd, extra_readonly)
        for path in outer:
            args += ["--ro-bind", str(path), str(path)]
        # ROOT is empty but for the notebook's directory (and Python environments kept in ROOT).
        args += ["--tmpfs", str(self.root)]
        args += ["--bind", str(cwd), str(cwd)] if cwd_fd is None else ["--bind-fd", str(cwd_fd), str(cwd)]
        for path in inner:
            args += ["--ro-bind", str(path), str(path)]
        visible = [Path("/usr"), Path("/etc"), cwd, *outer, *inner]
        for hidden in self.hidden:
            if hidden.exists() and any(_inside(hidden, v) and hidden != v for v in visible):
                args += ["--tmpfs", str(hidden), "--remount-ro", str(hidden)]
        if private_dir is not None:
            args += ["--bind", str(private_dir), str(private_dir)]
        args += [
            "--chdir", str(cwd),
            "--setenv", "HOME", HOME_IN_SANDBOX,
            # The kernel's parent inside is bwrap's pid 1: ipykernel must not take
            # that for its parent having died (--die-with-parent covers that case).
            "--setenv", "JPY_PARENT_PID", "1",
            "--",
        ]  # fmt: skip
        return args + list(cmd)

    def _system_mounts(self) -> list[str]:
        args = ["--ro-bind", "/usr", "/usr"]
        for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            top = Path("/") / name
            if top.is_symlink():
                args += ["--symlink", os.readlink(top), str(top)]
            elif top.is_dir():
                args += ["--ro-bind", str(top), str(top)]
        for pattern in ETC_ENTRIES:
            for entry in sorted(glob.glob(f"/etc/{pattern}")):
                args += ["--ro-bind-try", entry, entry]
        return args + ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]

    def _runtime_paths(self, cmd: Sequence[str], extra: Iterable[Path]) -> tuple[list[Path], list[Path]]:
        """Read-only directories the kernel's program needs, split into those outside
        ROOT and those inside it (a venv kept next to the notebooks)."""
        wanted = [*self.python_paths, *extra]
        if cmd:
            program = shutil.which(cmd[0])
            if program is not None:
                for path in {Path(os.path.abspath(program)), Path(program).resolve()}:
                    directory = path.parent
                    wanted.append(directory.parent if directory.name == "bin" else directory)
        home = _home()
        sensitive = [self.root, *self.hidden, *([home] if home else [])]
        chosen: list[Path] = []
        for path in wanted:
            for candidate in {Path(os.path.abspath(path)), path.resolve()}:
                if not candidate.is_dir() or _inside(candidate, Path("/usr")):
                    continue
                if candidate == Path("/") or any(_inside(s, candidate) for s in sensitive):
                    logger.warning("not exposing %s to kernels: it contains the root, the state or the home directory", candidate)
                    continue
                chosen.append(candidate)
        # Drop directories already inside another chosen one.
        kept = sorted({p for p in chosen if not any(p != q and _inside(p, q) for q in chosen)})
        inner = [p for p in kept if _inside(p, self.root)]
        return [p for p in kept if p not in inner], inner

    # -- the environment ---------------------------------------------------------------

    @staticmethod
    def environment(env: Mapping[str, str], keep: Iterable[str] = ()) -> dict[str, str]:
        """The part of the daemon's environment a kernel gets: locale and PATH, plus
        the names the kernelspec sets itself."""
        names = set(ENV_KEPT) | set(keep)
        return {k: v for k, v in env.items() if k in names or k.startswith(ENV_KEPT_PREFIXES)}

    # -- checks ------------------------------------------------------------------------

    def probe(self) -> None:
        """Start Python in the sandbox once; raise SandboxUnavailable with bwrap's
        own words if that fails."""
        cmd = self.wrap([sys.executable, "-c", "pass"], cwd=self.root)
        try:
            result = subprocess.run(
                cmd, capture_output=True, timeout=PROBE_TIMEOUT, env=self.environment(os.environ), cwd=self.root
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SandboxUnavailable(f"{self.bwrap} could not run: {exc}") from exc
        if result.returncode != 0:
            detail = result.stderr.decode(errors="replace").strip() or f"exit code {result.returncode}"
            raise SandboxUnavailable(f"{self.bwrap} cannot create a sandbox here: {detail}")

    def kernel_manager(self, **kwargs: Any) -> SandboxedKernelManager:
        return SandboxedKernelManager(sandbox=self, **kwargs)

    def open_directory(self, directory: Path) -> int:
        """A descriptor of ``directory`` under ROOT, reached from ROOT one name at a
        time without following symbolic links (which a kernel can make next to its
        notebook, and swap in while another kernel starts)."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for part in directory.relative_to(self.root).parts:
                try:
                    inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise PermissionError(f"{directory} goes through a symbolic link: no kernel starts there") from exc
                    raise
                os.close(fd)
                fd = inner
        except BaseException:
            os.close(fd)
            raise
        return fd


def _python_paths() -> tuple[Path, ...]:
    """Where the daemon's Python lives: its prefixes and site-packages."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *site.getsitepackages()}
    user_site = site.getusersitepackages()
    if site.ENABLE_USER_SITE and os.path.isdir(user_site):
        paths.add(user_site)
    return tuple(sorted(Path(p) for p in paths if p))


def find_bwrap() -> str | None:
    return shutil.which("bwrap")


def choose_sandbox(
    mode: SandboxMode | str, root: str | os.PathLike[str], hidden: Iterable[str | os.PathLike[str]] = ()
) -> tuple[BwrapSandbox | None, str]:
    """The sandbox for ``mode`` and a sentence saying why it is (not) used.

    ``bwrap`` raises SandboxUnavailable when bubblewrap is missing or broken;
    ``auto`` falls back to no sandbox in that case."""
    mode = SandboxMode(mode)
    if mode is SandboxMode.NONE:
        return None, "--kernel-sandbox none"
    program = find_bwrap()
    try:
        if program is None:
            raise SandboxUnavailable("bubblewrap (bwrap) is not on PATH: install it (apt-get install bubblewrap)")
        sandbox = BwrapSandbox(program, Path(root), tuple(Path(h) for h in hidden))
        sandbox.probe()
    except SandboxUnavailable as exc:
        if mode is SandboxMode.BWRAP:
            raise
        return None, f"--kernel-sandbox auto: {exc}"
    return sandbox, f"kernels run in a bubblewrap sandbox ({program})"


class SandboxedKernelManager(AsyncKernelManager):
    """A jupyter_client kernel manager whose kernel starts inside a BwrapSandbox.

    The kernel's channels are ipc sockets in a private directory (bound into the
    sandbox with its connection file) and interrupts are sent as messages: a
    SIGINT to the process group would reach bwrap, not the kernel in its own
    session."""

    def __init__(self, sandbox: BwrapSandbox, **kwargs: Any) -> None:
        super().__init__(transport="ipc", **kwargs)
        self.sandbox = sandbox
        self.private_dir: Path | None = None
        self._cwd_fd: int | None = None

    async def _async_pre_start_kernel(self, **kw: Any) -> tuple[list[str], dict[str, Any]]:
        if self.private_dir is None:
            self.private_dir = Path(tempfile.mkdtemp(prefix="crdtnb-kernel-"))
            self.connection_file = str(self.private_dir / "kernel.json")
            self.ip = str(self.private_dir / "ipc")
        spec = self.kernel_spec
        assert spec is not None
        spec.interrupt_mode = "message"
        cmd, kw = await super()._async_pre_start_kernel(**kw)
        cwd = Path(kw.get("cwd") or os.getcwd())
        kw["env"] = self.sandbox.environment(kw.get("env", os.environ), keep=spec.env)
        resources = [Path(spec.resource_dir)] if spec.resource_dir else []
        self._cwd_fd = self.sandbox.open_directory(cwd)
        kw["pass_fds"] = (self._cwd_fd,)
        wrapped = self.sandbox.wrap(
            cmd, cwd=cwd, cwd_fd=self._cwd_fd, private_dir=self.private_dir, extra_readonly=resources
        )
        return wrapped, kw

    pre_start_kernel = _async_pre_start_kernel

    async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
        try:
            await super()._async_launch_kernel(kernel_cmd, **kw)
        finally:
            # bwrap has its own copy (or the launch failed): ours is done with.
            if self._cwd_fd is not None:
                os.close(self._cwd_fd)
                self._cwd_fd = None

    _launch_kernel = _async_launch_kernel

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        await super()._async_cleanup_resources(restart=restart)
        if not restart and self.private_dir is not None:
            shutil.rmtree(self.private_dir, ignore_errors=True)
            self.private_dir = None

    cleanup_resources = _async_cleanup_resources


__all__ = ["BwrapSandbox", "SandboxMode", "SandboxUnavailable", "SandboxedKernelManager", "choose_sandbox"]
