"""Functions from the user's own Python files (``path/to/file.py:function``): model factories and data loaders."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path

from trtprune.errors import TrtpruneError


def check_user_file(file: str, noun: str) -> Path:
    """The path of the user's Python file ``file`` (before ':'), which must be a file."""
    path = Path(file)
    if path.is_dir():
        raise TrtpruneError(f"{noun} '{file}' is a folder", fix="give the Python file itself before ':'")
    if not path.is_file():
        raise TrtpruneError(f"{noun} '{file}' does not exist", fix="check the path before ':'")
    return path


@contextlib.contextmanager
def _beside(path: Path):
    """The file's folder first on sys.path while it is imported, as Python does for a script, so that it imports
    its sibling modules (``import tiny`` beside ``fac.py``); afterwards last, so that a function importing a
    sibling when called still finds it, while the file's neighbours never shadow a module trtprune imports."""
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        sys.path.remove(folder)
        if folder not in sys.path:
            sys.path.append(folder)


def user_function(file: str, fn: str, prefix: str, noun: str, role: str, need_callable: bool = True):
    """``fn`` of the Python file ``file``, imported as module ``<prefix>_<stem>`` (kept in sys.modules so that
    torch, pickle and DataLoader workers find the classes it defines). The file sees ``sys.argv`` = its own
    path, and a ``sys.exit()`` or an error at its top level is a TrtpruneError, not the end of trtprune.
    ``noun`` names the file and ``role`` the function in the messages ("model file", "the factory that returns
    the nn.Module")."""
    path = check_user_file(file, noun)
    name = f"trtprune_{prefix}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    argv = sys.argv
    sys.argv = [str(path)]  # a file that parses its command line at import sees none, not trtprune's options
    try:
        with _beside(path):
            spec.loader.exec_module(module)
    except SystemExit as e:  # sys.exit() or argparse at import would end trtprune with the file's status
        sys.modules.pop(name, None)
        raise TrtpruneError(
            f"importing '{file}' called sys.exit({e.code!r})",
            why="trtprune imports the file to call its function; code at its top level ran and asked to exit "
            "(a script's main part, or argument parsing)",
            fix='put that code under `if __name__ == "__main__":` so that importing the file only defines things',
        ) from None
    except Exception as e:
        sys.modules.pop(name, None)
        raise TrtpruneError(f"importing '{file}' failed: {type(e).__name__}: {e}", fix="fix the file") from e
    finally:
        sys.argv = argv
    found = getattr(module, fn, None)
    if found is None or need_callable and not callable(found):
        raise TrtpruneError(
            f"'{file}' has no {'function' if need_callable else 'object'} '{fn}'",
            why=f"it defines: {', '.join(n for n in vars(module) if not n.startswith('_')) or 'nothing public'}",
            fix=f"name {role} after ':'",
        )
    return getattr(module, fn)
