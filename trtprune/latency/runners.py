"""Where trtexec runs: this machine, or a device over SSH.

A runner runs argument lists (never shell strings made from user input), moves files in and out of
its own temporary folder, and removes that folder when closed. ``SshRunner`` quotes every argument
with :func:`shlex.quote` for the remote shell, keeps host-key checking on, never prompts
(``BatchMode``), and puts a timeout on every call.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path

from trtprune.errors import TrtpruneError
from trtprune.fsutil import atomic_path
from trtprune.latency.devices import check_host

log = logging.getLogger("trtprune.latency")

# what mktemp may print: an absolute path without shell syntax
_REMOTE_DIR = re.compile(r"^/[A-Za-z0-9._/-]+$")


class Result:
    def __init__(self, returncode: int, output: str, stdout: str | None = None):
        self.returncode, self.output = returncode, output
        self.stdout = output if stdout is None else stdout  # stdout alone, where it carries data


class LocalRunner:
    """Runs commands here; files stay where they are."""

    where = "this machine"

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self._dir: str | None = None

    @property
    def workdir(self) -> str:
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="trtprune-trt-")
        return self._dir

    def run(self, argv: list[str], timeout_s: float | None = None) -> Result:
        return _run(argv, timeout_s or self.timeout_s, f"{argv[0]} on {self.where}")

    def run_held(self, argv: list[str], timeout_s: float | None = None) -> Result:
        """Run ``argv`` with its stdin held open until it ends (see :func:`_run_held`)."""
        return _run_held(argv, timeout_s or self.timeout_s, f"{argv[0]} on {self.where}")

    def put(self, local: Path, name: str) -> str:
        dst = Path(self.workdir) / name
        shutil.copyfile(local, dst)
        return str(dst)

    def get(self, remote: str, local: Path) -> Path:
        with atomic_path(local) as tmp:
            shutil.copyfile(remote, tmp)
        return local

    def which(self, program: str) -> str | None:
        return shutil.which(program)

    def close(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


class SshRunner(LocalRunner):
    """Runs commands on ``host`` over ssh; files go through scp into a remote ``mktemp -d`` folder."""

    OPTIONS = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=15"]

    def __init__(self, host: str, timeout_s: float):
        super().__init__(timeout_s)
        self.host = check_host(host)
        self.where = host

    def _remote(self, argv: list[str]) -> list[str]:
        # ssh joins its arguments into one string for the remote shell: quote each one
        return ["ssh", *self.OPTIONS, self.host, "--", " ".join(shlex.quote(a) for a in argv)]

    @property
    def workdir(self) -> str:
        if self._dir is None:
            r = self.run(["mktemp", "-d", "/tmp/trtprune.XXXXXX"], timeout_s=60)
            path = r.output.strip()
            if r.returncode != 0 or not _REMOTE_DIR.match(path):
                raise TrtpruneError(f"cannot make a temporary folder on {self.host}: {r.output.strip()[-300:]}")
            self._dir = path
        return self._dir

    def run(self, argv: list[str], timeout_s: float | None = None) -> Result:
        return _run(self._remote(argv), timeout_s or self.timeout_s, f"{argv[0]} on {self.host}")

    def run_held(self, argv: list[str], timeout_s: float | None = None) -> Result:
        return _run_held(self._remote(argv), timeout_s or self.timeout_s, f"{argv[0]} on {self.host}")

    def put(self, local: Path, name: str) -> str:
        remote = f"{self.workdir}/{_safe(name)}"
        self._scp(str(local), f"{self.host}:{remote}")
        return remote

    def get(self, remote: str, local: Path) -> Path:
        with atomic_path(local) as tmp:
            self._scp(f"{self.host}:{remote}", str(tmp))
        return local

    def which(self, program: str) -> str | None:
        r = self.run(["sh", "-c", 'command -v "$1"', "sh", program], timeout_s=60)
        found = r.output.strip().splitlines()
        return found[-1] if r.returncode == 0 and found else None

    def _scp(self, src: str, dst: str) -> None:
        r = _run(["scp", "-q", *self.OPTIONS, "--", src, dst], self.timeout_s, f"scp with {self.host}")
        if r.returncode != 0:
            raise TrtpruneError(
                f"copying {src} -> {dst} failed: {r.output.strip()[-300:]}",
                fix=f"check that 'ssh {self.host}' works without a password and the disk has room",
            )

    def close(self) -> None:
        if self._dir is not None:
            try:
                self.run(["rm", "-rf", "--", self._dir], timeout_s=60)
            except TrtpruneError as e:  # unreachable now: say what is left behind
                log.warning("could not remove %s:%s (%s)", self.host, self._dir, e.what)
            self._dir = None


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def _run(argv: list[str], timeout_s: float, what: str) -> Result:
    log.debug("run | %s", shlex.join(argv))
    try:
        p = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=timeout_s)
    except FileNotFoundError:
        raise TrtpruneError(f"'{argv[0]}' is not installed", fix=f"install {argv[0]} or put it on PATH") from None
    except subprocess.TimeoutExpired:
        raise TrtpruneError(
            f"{what} did not finish within {timeout_s:.0f} s",
            fix="check that the device is reachable and idle, or raise timeout_s in the device file",
        ) from None
    if p.returncode == 255 and argv[0] == "ssh":  # ssh's own failure (host key, auth, network), not the command's
        raise TrtpruneError(
            f"ssh could not reach {argv[-3]}: {p.stderr.strip()[-300:]}",
            fix="check 'ssh <host> true' works without a password prompt and the host key is in known_hosts",
        )
    return Result(p.returncode, p.stdout + p.stderr)


def _run_held(argv: list[str], timeout_s: float, what: str) -> Result:
    """Run ``argv`` in its own process group with a stdin pipe that stays open until it ends. A program that
    exits at end-of-file on stdin (the device timer) thus stops when this process dies, and so does a remote one
    behind ``ssh`` (which forwards the end-of-file). On a timeout or an interrupt the whole group is killed."""
    log.debug("run | %s", shlex.join(argv))
    try:
        p = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,
        )
    except FileNotFoundError:
        raise TrtpruneError(f"'{argv[0]}' is not installed", fix=f"install {argv[0]} or put it on PATH") from None
    out: list[str] = []
    err: list[str] = []
    readers = [
        threading.Thread(target=lambda f, acc: acc.append(f.read()), args=pair)
        for pair in ((p.stdout, out), (p.stderr, err))
    ]
    for t in readers:
        t.start()
    try:
        p.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(p)
        raise TrtpruneError(
            f"{what} did not finish within {timeout_s:.0f} s",
            fix="check that the device is reachable and idle, or raise timeout_s in the device file",
        ) from None
    except BaseException:
        _kill_group(p)
        raise
    finally:
        if p.stdin:
            p.stdin.close()
        for t in readers:
            t.join(timeout=10)
    stdout, stderr = "".join(out), "".join(err)
    if p.returncode == 255 and argv[0] == "ssh":
        raise TrtpruneError(
            f"ssh could not reach {argv[-3]}: {stderr.strip()[-300:]}",
            fix="check 'ssh <host> true' works without a password prompt and the host key is in known_hosts",
        )
    return Result(p.returncode, stdout + stderr, stdout)


def _kill_group(p: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGKILL)
    p.wait()
