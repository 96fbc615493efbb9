"""The latency lookup table: a persistent SQLite store of per-layer measurements.

A row is one layer signature at one (Cin, Cout) on one backend key (engine + version, device/ISA,
threads, batch, precision). Rows are inserted one transaction per batch and never updated: the first
measurement of a point wins, so two processes profiling into one table lose nothing, and a sweep killed
at any moment resumes without re-measuring what it stored. WAL mode lets readers and one writer work
at once; a busy timeout lets concurrent writers take turns. The table name carries the schema version
(``latency_v2``), so a new schema never misreads old rows.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from trtprune.errors import TrtpruneError
from trtprune.fsutil import folder_writable
from trtprune.sources.fetch import cache_dir

SCHEMA_VERSION = 2  # 2: a layer's latency is a low quantile of its runs (1: the median of bursts)
_TABLE = f"latency_v{SCHEMA_VERSION}"
_REF_TABLE = f"reference_v{SCHEMA_VERSION}"


@dataclass(frozen=True)
class Entry:
    ms: float  # the layer's latency on the LUT's scale (trtprune.profiling.profile.QUANTILE of its runs)
    p90_ms: float
    n: int
    kernel: str = ""  # how the engine ran the layer, e.g. ONNX Runtime's blocked NCHWc kernels or not


def default_path() -> Path:

    return cache_dir() / "lut.sqlite"


def check_lut_path(path: str | Path | None) -> None:
    """A --lut that is a folder, refused before any work (the table is opened only once the search times layers)."""
    if path and Path(path).is_dir():
        raise TrtpruneError(
            f"the latency table '{path}' is a folder",
            why="the table is one SQLite file (default: lut.sqlite in the user cache)",
            fix="pass a file path with --lut, e.g. " + str(Path(path) / "lut.sqlite"),
        )


class LUT:
    """``with LUT(path) as lut: lut.get(key, sig, cin, cout)``. Keys and signatures are strings."""

    def __init__(self, path: str | Path | None = None, timeout_s: float = 60.0):
        self.path = Path(path) if path else default_path()
        self.timeout_s = timeout_s
        self.db: sqlite3.Connection | None = None

    def __enter__(self) -> LUT:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TrtpruneError(
                f"cannot create the latency table '{self.path}': {e.strerror or e}",
                fix="pass a --lut path whose folder can be created",
            ) from e
        check_lut_path(self.path)
        try:
            # one connection may serve several threads as long as they take turns (the profiler holds a lock)
            self.db = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute(
                f"CREATE TABLE IF NOT EXISTS {_TABLE} (backend TEXT NOT NULL, signature TEXT NOT NULL, "
                "cin INTEGER NOT NULL, cout INTEGER NOT NULL, ms REAL NOT NULL, p90_ms REAL NOT NULL, "
                "n INTEGER NOT NULL, kernel TEXT NOT NULL, created REAL NOT NULL, "
                "PRIMARY KEY (backend, signature, cin, cout))"
            )
            self.db.execute(
                f"CREATE TABLE IF NOT EXISTS {_REF_TABLE} (backend TEXT PRIMARY KEY, point TEXT NOT NULL, "
                "ms REAL NOT NULL, created REAL NOT NULL)"
            )
        except sqlite3.DatabaseError as e:
            if self.db is not None:
                self.db.close()
                self.db = None
            if not folder_writable(self.path.parent):  # SQLite needs to create the table, or its -wal beside it
                raise TrtpruneError(
                    f"cannot open the latency table '{self.path}': its folder '{self.path.parent}' cannot be written",
                    why=f"SQLite says: {e}; it creates the table file and a write-ahead log (-wal, -shm) beside it",
                    fix="pass a --lut in a folder you can write (the default is lut.sqlite in the user cache)",
                ) from e
            raise TrtpruneError(
                f"cannot open the latency table '{self.path}': {e}",
                why="it is not an SQLite database, or it is corrupt",
                fix="pass another --lut, or delete the file to start an empty table",
            ) from e
        return self

    def __exit__(self, *exc) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None

    def get_many(self, backend: str, points: Iterable[tuple[str, int, int]]) -> dict[tuple[str, int, int], Entry]:
        """The stored entries among ``points`` = (signature, cin, cout); absent ones are left out."""
        out = {}
        for sig, cin, cout in set(points):
            row = self.db.execute(
                f"SELECT ms, p90_ms, n, kernel FROM {_TABLE} WHERE backend=? AND signature=? AND cin=? AND cout=?",
                (backend, sig, cin, cout),
            ).fetchone()
            if row:
                out[(sig, cin, cout)] = Entry(*row)
        return out

    def put_many(self, backend: str, rows: dict[tuple[str, int, int], Entry]) -> int:
        """Store new points in one transaction; returns how many were new (others already existed)."""
        now = time.time()
        self.db.execute("BEGIN IMMEDIATE")
        try:
            before = self.db.total_changes
            self.db.executemany(
                f"INSERT OR IGNORE INTO {_TABLE} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(backend, s, ci, co, e.ms, e.p90_ms, e.n, e.kernel, now) for (s, ci, co), e in rows.items()],
            )
            self.db.execute("COMMIT")
        except BaseException:  # an error, Ctrl-C or SIGTERM: nothing of this batch is stored
            if self.db.in_transaction:  # (an interrupt right after COMMIT finds none to roll back)
                self.db.execute("ROLLBACK")
            raise
        return self.db.total_changes - before

    def reference(self, backend: str, point: str, measured_ms: float) -> float:
        """The nominal latency of the reference point on this backend: the first one ever stored.

        Every batch of measurements also times the reference; values are stored rescaled by
        ``nominal / measured`` so that rows timed minutes or days apart share one scale.
        """
        self.db.execute(
            f"INSERT OR IGNORE INTO {_REF_TABLE} VALUES (?, ?, ?, ?)", (backend, point, measured_ms, time.time())
        )
        stored_point, nominal = self.db.execute(
            f"SELECT point, ms FROM {_REF_TABLE} WHERE backend=?", (backend,)
        ).fetchone()
        assert stored_point == point, f"reference changed from {stored_point} to {point}"
        return nominal

    def reference_ms(self, backend: str) -> float | None:
        """The reference point's nominal latency on a backend (the scale of its rows), if one was stored."""
        row = self.db.execute(f"SELECT ms FROM {_REF_TABLE} WHERE backend=?", (backend,)).fetchone()
        return row[0] if row else None

    def points(self, backend: str) -> set[tuple[str, int, int]]:
        """Every stored (signature, cin, cout) of a backend key."""
        rows = self.db.execute(f"SELECT signature, cin, cout FROM {_TABLE} WHERE backend=?", (backend,))
        return set(rows.fetchall())

    def count(self, backend: str | None = None) -> int:
        if backend is None:
            return self.db.execute(f"SELECT COUNT(*) FROM {_TABLE}").fetchone()[0]
        return self.db.execute(f"SELECT COUNT(*) FROM {_TABLE} WHERE backend=?", (backend,)).fetchone()[0]
