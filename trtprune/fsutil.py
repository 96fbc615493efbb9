"""File writes that are complete or absent: write a temporary file beside the target, fsync, rename.

The temporary name carries the writer's pid (``.name.tmp<pid>``): a write stopped by Ctrl-C or SIGTERM
removes its file; one stopped by SIGKILL or a power cut leaves it, and the next write of the same target
removes the leftovers of writers that are no longer running.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

from trtprune.errors import TrtpruneError


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _remove_stale_temps(path: Path) -> None:
    """Remove ``.name.tmp<pid>`` files beside ``path`` left by writers that died (SIGKILL)."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.tmp(\d+)")
    with contextlib.suppress(OSError):
        for p in path.parent.iterdir():
            m = pattern.fullmatch(p.name)
            if m and int(m.group(1)) != os.getpid() and not _running(int(m.group(1))):
                p.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path to write; on success it replaces ``path`` atomically, else it is removed."""
    refuse_folder_name("the output", path)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrtpruneError(
            f"cannot write '{path}': cannot create its folder '{path.parent}': {e.strerror or e}",
            fix="choose an output path whose folders can be created (no file of the same name in the way)",
        ) from e
    if path.is_dir():
        raise TrtpruneError(f"cannot write '{path}': it is a folder", fix="give a file name as the output")
    _remove_stale_temps(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        try:  # created before the writer runs: a folder that cannot be written is named, not torch's or onnx's error
            open(tmp, "wb").close()
        except OSError as e:
            raise TrtpruneError(
                f"cannot write '{path}': its folder '{path.parent}' cannot be written: {e.strerror or e}",
                fix="choose an output path in a folder you can write (check its permissions and free space)",
            ) from e
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def refuse_folder_name(label: str, path) -> None:
    """Refuse an output path written as a folder (``newdir/``): the file would be named ``newdir``, or an existing
    ``model.onnx`` replaced by ``model.onnx/``."""
    if isinstance(path, str) and path.endswith(("/", os.sep)):
        raise TrtpruneError(
            f"{label} '{path}' ends in a path separator",
            why="a path ending in '/' names a folder, and this output is one file: it would be written as "
            f"'{path.rstrip('/' + os.sep)}', maybe over a file of that name",
            fix=f"give a file name, e.g. '{path}model.onnx', or drop the trailing '/'",
        )


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file: the same file on disk (through links, '..' or './'), or, where one does
    not exist yet, the same path once resolved."""
    a, b = Path(a).expanduser(), Path(b).expanduser()
    with contextlib.suppress(OSError):
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def refuse_overwrite(outputs, inputs) -> None:
    """Refuse, before any work, a command whose output is one of its inputs or a folder: ``outputs`` and ``inputs``
    are ``(option, path)`` pairs (None paths are skipped)."""
    outputs = [(label, out) for label, out in outputs if out]
    for i, (out_label, out) in enumerate(outputs):
        refuse_folder_name(out_label, out)
        if Path(out).is_dir():  # atomic_path says the same, but only once the work is done
            raise TrtpruneError(f"cannot write '{out}': it is a folder", fix=f"give {out_label} a file name")
        for in_label, given in inputs:
            if out and given and same_file(out, given):
                raise TrtpruneError(
                    f"{out_label} '{out}' is the same file as {in_label} '{given}'",
                    why="the command would write over a file it reads: the input would be lost (a dense checkpoint "
                    "replaced by the pruned one, a model by its export)",
                    fix=f"give {out_label} another path; the input is then kept as it is",
                )
        for other_label, other in outputs[:i]:
            if same_file(out, other):
                raise TrtpruneError(
                    f"{out_label} '{out}' is the same file as {other_label} '{other}'",
                    why="the command writes both: the one written last would replace the other (a log over the "
                    "model, or the model over the log)",
                    fix=f"give {out_label} another path",
                )


def is_plain_name(name: str) -> bool:
    """Whether ``name`` is one path component that stays where it is put: no separator, no '..', not '.'."""
    return bool(name) and ".." not in name and name != "." and not any(c in name for c in ("/", "\\", os.sep, "\0"))


def safe_file_name(name: str) -> str:
    """A file name made from ``name`` (a module or group name, which may hold '/', '..' or anything): letters, digits,
    '.', '_' and '-' only, never hidden or a path; a name that had to change gets a short digest of the original, so
    two names never share a file (``stem/conv`` -> ``stem_conv-1a2b3c4d``)."""
    safe = re.sub(r"[^0-9A-Za-z._-]", "_", name).lstrip(".") or "_"
    if safe == name:
        return name
    return f"{safe[:80]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def sha256_of(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, in hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def folder_writable(folder: str | os.PathLike) -> bool:
    """Whether a file can be created in ``folder`` (tried, not guessed from permission bits: root, read-only mounts)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
