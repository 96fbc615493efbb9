import multiprocessing as mp
import sqlite3

import pytest

from trtprune.errors import TrtpruneError
from trtprune.lut import LUT, Entry

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
    assert ("latency_v1",) in tables
