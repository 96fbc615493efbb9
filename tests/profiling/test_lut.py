import multiprocessing as mp
import sqlite3

import pytest

from trtprune.errors import TrtpruneError
from trtprune.profiling.lut import LUT, Entry

KEY = "fake-1|cpu|t1|b1|fp32"


def test_points_round_trip_and_the_first_measurement_wins(tmp_path):
    with LUT(tmp_path / "l.sqlite") as lut:
        assert lut.put_many(KEY, {("sig", 3, 4): Entry(1.0, 1.2, 10), ("sig", 3, 5): Entry(2.0, 2.1, 10)}) == 2
        assert lut.put_many(KEY, {("sig", 3, 4): Entry(9.0, 9.0, 1)}) == 0
        got = lut.get_many(KEY, [("sig", 3, 4), ("sig", 3, 5), ("sig", 9, 9)])
        assert got == {("sig", 3, 4): Entry(1.0, 1.2, 10), ("sig", 3, 5): Entry(2.0, 2.1, 10)}
        assert lut.get_many("other-key", [("sig", 3, 4)]) == {}  # the backend key is part of the key
    with LUT(tmp_path / "l.sqlite") as lut:  # persistent
        assert lut.count(KEY) == 2 and lut.count() == 2


def _writer(path, worker, n):
    with LUT(path) as lut:
        for i in range(n):
            lut.put_many(
                KEY, {(f"s{i % 7}", worker, i): Entry(float(i), float(i), 1), ("shared", 0, i): Entry(0, 0, 1)}
            )


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    path = tmp_path / "l.sqlite"
    with LUT(path):
        pass
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 150)) for w in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with LUT(path) as lut:
        assert lut.count(KEY) == 2 * 150 + 150  # every private row, and each shared row once


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path):
    (tmp_path / "junk.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(TrtpruneError, match="cannot open the latency table"), LUT(tmp_path / "junk.sqlite"):
        pass


def test_the_table_name_carries_the_schema_version(tmp_path):
    with LUT(tmp_path / "l.sqlite"):
        pass
    tables = sqlite3.connect(tmp_path / "l.sqlite").execute("SELECT name FROM sqlite_master").fetchall()
    assert ("latency_v2",) in tables


@pytest.mark.slow
def test_a_profile_killed_mid_sweep_resumes_without_remeasuring(tmp_path):
    """SIGKILL the real profiler once some batches are stored; the rerun times only what is missing."""
    import re
    import signal
    import subprocess
    import sys
    import time

    lut_path = tmp_path / "lut.sqlite"
    argv = [
        sys.executable,
        "-m",
        "trtprune",
        "profile",
        "--model",
        "resnet20",
        "--device",
        "cpu",
        "--lut",
        str(lut_path),
        "--no-plots",
        "--quick",  # the resume logic does not depend on the protocol; the full one is run in test_reliability
    ]
    proc = subprocess.Popen([*argv, "--out", str(tmp_path / "a")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stored = 0
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if lut_path.exists():
            try:
                stored = sqlite3.connect(lut_path, timeout=1).execute("SELECT COUNT(*) FROM latency_v2").fetchone()[0]
            except sqlite3.OperationalError:
                stored = 0
            if stored >= 20:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the profile finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with LUT(lut_path) as lut:
        after_kill = lut.count()  # the table is intact and holds every finished batch
    assert after_kill >= stored > 0
    done = subprocess.run([*argv, "--out", str(tmp_path / "b")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    measured = int(re.search(r"(\d+) points measured", done.stdout).group(1))
    with LUT(lut_path) as lut:
        final = lut.count()
    assert measured == final - after_kill  # nothing stored before the kill was timed again
    assert 0 < measured < final
