"""Checks shared by the third round of new-user mistakes (issue 30): one message, exit 2, nothing written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import cli
from trtprune.errors import TrtpruneError

TEMP = re.compile(r"^\..+\.tmp\d+$")  # fsutil.atomic_path's temporary names


def temp_files(root: Path) -> list[Path]:
    return [p for p in Path(root).rglob(".*") if TEMP.match(p.name)]


def user_error(capsys, *argv, message: str, absent=(), roots=()) -> str:
    """Run the CLI; check exit 2, one ``trtprune <cmd>: error: <message>...`` line, no traceback, none of ``absent``
    written and no temporary file under ``roots``. Returns stderr (for checks on its why/fix lines)."""
    code, out, err = cli(capsys, *argv)
    assert code == 2, (code, out, err)
    assert "Traceback" not in err and "Traceback" not in out, err
    errors = [line for line in err.splitlines() if line.startswith(f"trtprune {argv[0]}: error:")]
    assert len(errors) == 1, err
    assert errors[0].startswith(f"trtprune {argv[0]}: error: {message}"), errors[0]
    for path in absent:
        assert not Path(path).exists(), path
    for root in roots:
        assert temp_files(root) == [], temp_files(root)
    return err


def api_error(call, *args, message: str, **kwargs) -> TrtpruneError:
    """Call the Python API; check it raises one TrtpruneError whose first line starts with ``message``."""
    with pytest.raises(TrtpruneError) as info:
        call(*args, **kwargs)
    assert str(info.value).splitlines()[0].startswith(message), str(info.value)
    return info.value
