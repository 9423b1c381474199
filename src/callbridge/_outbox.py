"""A durable local outbox: records wait in SQLite until a server has acknowledged them.

One connection per thread (sqlite3's rule): the training thread appends, the
delivery thread reads and removes. WAL mode lets both work at once, and a commit
in WAL mode survives a killed process, so what was appended before a crash is
delivered later by the next run or by ``callbridge monitor flush``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

from ._errors import CallbridgeError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class OutboxError(CallbridgeError, ValueError):
    """A file that is not a callbridge outbox, or one that cannot be opened."""


class Outbox:
    """Records as JSON text under their idempotency keys, oldest first.

    Args:
        path: the SQLite file.
        create: create the file if missing; otherwise a missing or foreign file
            raises :class:`OutboxError`.
    """

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = Path(path)
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif not self.path.is_file():
            raise OutboxError(f"{self.path}: no such outbox file")
        # Autocommit: each append is its own small transaction, committed at once.
        self._db = sqlite3.connect(str(self.path), timeout=10.0, isolation_level=None)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit survives a killed process (not a power cut), and
            # costs no fsync per record on the training thread.
            self._db.execute("PRAGMA synchronous=NORMAL")
            if create:
                self._db.executescript(_SCHEMA)
            elif self._db.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'records'"
            ).fetchone() != (1,):
                raise OutboxError(f"{self.path}: not a callbridge monitor outbox")
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise OutboxError(f"{self.path}: not a callbridge monitor outbox ({exc})") from None
        except BaseException:
            self._db.close()  # never leave a connection behind (Python 3.13 warns at exit)
            raise

    def add(self, key: str, body: str) -> None:
        """Append one record (a duplicate key is ignored: the record is already waiting)."""
        self._db.execute("INSERT OR IGNORE INTO records (key, body) VALUES (?, ?)", (key, body))

    def peek(self, limit: int) -> list[tuple[str, str]]:
        """The oldest ``limit`` records as ``(key, body)``, left in place."""
        rows = self._db.execute("SELECT key, body FROM records ORDER BY id LIMIT ?", (limit,))
        return list(rows)

    def remove(self, keys: Sequence[str]) -> None:
        """Forget records the server acknowledged."""
        marks = ",".join("?" * len(keys))
        # Only the '?' marks are formatted in; the keys travel as parameters.
        self._db.execute(f"DELETE FROM records WHERE key IN ({marks})", tuple(keys))

    def count(self) -> int:
        """How many records wait."""
        return int(self._db.execute("SELECT count(*) FROM records").fetchone()[0])

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._db.execute("SELECT key, body FROM records ORDER BY id").fetchall())

    def get_meta(self, name: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, name: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO meta (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    def close(self) -> None:
        self._db.close()
