"""One SQLite database per run (`<run dir>/run.sqlite`): the resolved config, closed windows,
resource samples, events, verdicts, incidents, the live figures and the scenario totals.

WAL mode, one writer (the aggregator) that commits at least once a second, any number of
readers (the coordinator's live view, `engine report` later). A run killed at any moment keeps
everything up to its last commit; a reader of a killed run's file gets SQLite's own recovery.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from engine.detectors.verdict import Verdict
from engine.live_status import LiveStatus
from engine.window_stats import WindowStats

SCHEMA_VERSION = 1
VERDICT_STATES = ("open", "cleared", "withdrawn", "info")
WRITER_CACHE_KIB = 1024  # the aggregator's page cache
_WINDOW_FIELDS = [f.name for f in fields(WindowStats)]

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS run (run_id TEXT NOT NULL, config TEXT NOT NULL, started TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS windows (
    start_s REAL, length_s REAL, model TEXT, scenario TEXT, protocol TEXT, requests INTEGER, ok INTEGER,
    errors INTEGER, wrong INTEGER, expected_errors INTEGER, missing_errors INTEGER, throughput REAL,
    mean_ms REAL, p50_ms REAL, p90_ms REAL, p95_ms REAL, p99_ms REAL, max_ms REAL, histogram BLOB,
    target TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS windows_key ON windows (model, scenario, protocol, start_s);
-- Series names are interned: a sample row is three numbers, not a repeated string.
CREATE TABLE IF NOT EXISTS series (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL);
CREATE TABLE IF NOT EXISTS resources (series INTEGER NOT NULL, time_s REAL NOT NULL, value REAL NOT NULL);
CREATE INDEX IF NOT EXISTS resources_series ON resources (series, time_s);
CREATE TABLE IF NOT EXISTS events (
    time_s REAL, sender TEXT, what TEXT, model TEXT, scenario TEXT, count INTEGER, text TEXT);
CREATE TABLE IF NOT EXISTS verdicts (
    id INTEGER PRIMARY KEY, detector TEXT, kind TEXT, subject TEXT, since_s REAL, at_s REAL, size REAL,
    unit TEXT, low REAL, high REAL, evidence TEXT, samples TEXT,
    state TEXT NOT NULL CHECK (state IN {VERDICT_STATES!r}));
CREATE TABLE IF NOT EXISTS incidents (at_s REAL, what TEXT);
CREATE TABLE IF NOT EXISTS status (id INTEGER PRIMARY KEY CHECK (id = 1), figures TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS totals (scenario TEXT PRIMARY KEY, plans INTEGER, failed INTEGER, requests INTEGER);
"""


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    config: dict[str, Any]
    started: str  # wall clock, ISO 8601


@dataclass(frozen=True)
class EventRow:
    time_s: float
    sender: str
    what: str
    model: str
    scenario: str
    count: int
    text: str


@dataclass(frozen=True)
class VerdictRow:
    id: int
    verdict: Verdict
    state: str  # open, cleared, withdrawn (a GROWTH that turned out a PLATEAU), info


class RunStore:
    def __init__(self, connection: sqlite3.Connection, path: Path, writer: bool = False) -> None:
        self._db = connection
        self._writer = writer
        self.path = path
        self._series: dict[str, int] = {}
        # A store written before windows had a target reads as one of a single server.
        columns = {row[1] for row in connection.execute("PRAGMA table_info(windows)")}
        self._window_select = ", ".join(f if f in columns else f"'' AS {f}" for f in _WINDOW_FIELDS)

    @classmethod
    def create(cls, path: str | Path, run_id: str, config_json: str, started_wall: str) -> RunStore:
        """A new store, or the same run's store reopened for writing (a restarted aggregator)."""
        path = Path(path)
        if not path.exists():
            # Built whole under another name, then renamed: a reader that waits for the path
            # never finds a file without its schema, its version or its run row.
            draft = path.with_name(path.name + ".draft")
            draft.unlink(missing_ok=True)
            db = sqlite3.connect(draft)
            db.executescript(_SCHEMA)
            db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            db.execute("INSERT INTO run VALUES (?, ?, ?)", (run_id, config_json, started_wall))
            db.commit()
            db.execute("PRAGMA journal_mode=WAL")  # recorded in the file's header
            db.close()  # the last connection checkpoints and removes the draft's -wal
            os.replace(draft, path)
        db = sqlite3.connect(path, timeout=30.0, isolation_level="DEFERRED")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at each checkpoint, never corrupt
        # The writer appends: its working set is the last page of each table and index (about one
        # per resource series); SQLite's default 2 MiB cache only filled up over the first minutes
        # of a run, which reads as the aggregator's memory growing.
        db.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
        db.executescript(_SCHEMA)
        store = cls(db, path, writer=True)
        store._series = dict(db.execute("SELECT name, id FROM series").fetchall())
        return store

    @classmethod
    def open(cls, path: str | Path, readonly: bool = True) -> RunStore:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no run store at {path}")
        mode = "ro" if readonly else "rw"
        db = sqlite3.connect(f"file:{path}?mode={mode}", uri=True, timeout=30.0)
        version = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if version is None or int(version[0]) != SCHEMA_VERSION:
            raise ValueError(f"{path}: store schema {version[0] if version else '?'}, "
                             f"this engine reads {SCHEMA_VERSION}")
        return cls(db, path)

    # -- writing (the aggregator) ----------------------------------------------------------
    def add_windows(self, rows: Sequence[WindowStats]) -> None:
        marks = ", ".join("?" * len(_WINDOW_FIELDS))
        self._db.executemany(f"INSERT INTO windows ({', '.join(_WINDOW_FIELDS)}) VALUES ({marks})",
                             [tuple(getattr(r, name) for name in _WINDOW_FIELDS) for r in rows])

    def _series_id(self, name: str) -> int:
        found = self._series.get(name)
        if found is None:
            cursor = self._db.execute("INSERT INTO series (name) VALUES (?)", (name,))
            found = self._series[name] = int(cursor.lastrowid or 0)
        return found

    def add_resources(self, time_s: float, samples: Mapping[str, float]) -> None:
        self._db.executemany("INSERT INTO resources VALUES (?, ?, ?)",
                             [(self._series_id(name), time_s, float(value)) for name, value in samples.items()])

    def add_event(self, time_s: float, sender: str, what: str, model: str, scenario: str, count: int,
                  text: str) -> None:
        self._db.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (time_s, sender, what, model, scenario, count, text))

    def add_verdict(self, v: Verdict, state: str = "open") -> int:
        cursor = self._db.execute(
            "INSERT INTO verdicts (detector, kind, subject, since_s, at_s, size, unit, low, high, evidence, samples, "
            "state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (v.detector, v.kind, v.subject, v.since_s, v.at_s, v.size, v.unit, v.low, v.high,
             orjson.dumps(v.evidence, option=orjson.OPT_SERIALIZE_NUMPY).decode(),
             orjson.dumps(list(v.samples)).decode(),
             state))
        return int(cursor.lastrowid or 0)

    def update_verdict(self, verdict_id: int, v: Verdict) -> None:
        """Later evidence of the same fault: its subject, time, size and evidence, in place."""
        self._db.execute("UPDATE verdicts SET subject = ?, since_s = ?, at_s = ?, size = ?, low = ?, high = ?, "
                         "evidence = ? WHERE id = ?",
                         (v.subject, v.since_s, v.at_s, v.size, v.low, v.high,
                          orjson.dumps(v.evidence, option=orjson.OPT_SERIALIZE_NUMPY).decode(), verdict_id))

    def set_verdict_state(self, verdict_id: int, state: str) -> None:
        self._db.execute("UPDATE verdicts SET state = ? WHERE id = ?", (state, verdict_id))

    def add_incident(self, at_s: float, what: str) -> None:
        self._db.execute("INSERT INTO incidents VALUES (?, ?)", (at_s, what))

    def set_status(self, status: LiveStatus) -> None:
        self._db.execute("INSERT OR REPLACE INTO status VALUES (1, ?)", (status.to_json().decode(),))

    def set_totals(self, rows: Sequence[tuple[str, int, int, int]]) -> None:
        self._db.executemany("INSERT OR REPLACE INTO totals VALUES (?, ?, ?, ?)", rows)

    def commit(self) -> None:
        self._db.commit()

    # -- reading ------------------------------------------------------------------------------
    def run_info(self) -> RunInfo:
        run_id, config, started = self._db.execute("SELECT run_id, config, started FROM run").fetchone()
        return RunInfo(run_id, orjson.loads(config), started)

    def windows(self, model: str | None = None, scenario: str | None = None,
                protocol: str | None = None, target: str | None = None) -> list[WindowStats]:
        where, args = [], []
        for column, value in (("model", model), ("scenario", scenario), ("protocol", protocol), ("target", target)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        sql = f"SELECT {self._window_select} FROM windows"
        sql += (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY start_s, model, scenario, protocol"
        return [WindowStats(*row) for row in self._db.execute(sql, args)]

    def series_names(self) -> list[str]:
        return [row[0] for row in self._db.execute("SELECT name FROM series ORDER BY name")]

    def series(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        rows = self._db.execute("SELECT r.time_s, r.value FROM resources r JOIN series s ON r.series = s.id "
                                "WHERE s.name = ? ORDER BY r.time_s", (name,)).fetchall()
        data = np.array(rows, dtype=float).reshape(-1, 2)
        return data[:, 0], data[:, 1]

    def events(self) -> list[EventRow]:
        return [EventRow(*row) for row in self._db.execute("SELECT * FROM events ORDER BY time_s")]

    def verdicts(self) -> list[VerdictRow]:
        out = []
        for row in self._db.execute("SELECT * FROM verdicts ORDER BY id"):
            (vid, detector, kind, subject, since_s, at_s, size, unit, low, high, evidence, samples, state) = row
            verdict = Verdict(detector, kind, subject, since_s, at_s, size, unit, low, high, orjson.loads(evidence),
                              tuple(orjson.loads(samples)))
            out.append(VerdictRow(vid, verdict, state))
        return out

    def incidents(self) -> list[tuple[float, str]]:
        return [tuple(row) for row in self._db.execute("SELECT at_s, what FROM incidents ORDER BY at_s")]

    def status(self) -> LiveStatus | None:
        """The live figures of the last commit; None before the first."""
        row = self._db.execute("SELECT figures FROM status WHERE id = 1").fetchone()
        return LiveStatus.from_json(row[0]) if row else None

    def totals(self) -> list[tuple[str, int, int, int]]:
        return [tuple(row) for row in self._db.execute("SELECT * FROM totals ORDER BY scenario")]

    def close(self) -> None:
        if self._writer:
            self._db.commit()
            # A finished run leaves one plain file, so read-only readers find no -wal/-shm to
            # create. Only possible when no reader is attached: then it stays WAL, and fine.
            self._db.execute("PRAGMA busy_timeout = 0")
            with contextlib.suppress(sqlite3.OperationalError):
                self._db.execute("PRAGMA journal_mode=DELETE")
        self._db.close()
