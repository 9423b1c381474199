"""A durable local outbox: records wait in SQLite until a server has acknowledged them.

One connection per thread (sqlite3's rule): the training thread appends, the
delivery thread claims, sends and removes. WAL mode lets both work at once, and a
commit in WAL mode survives a killed process, so what was appended before a crash
is delivered later by the next run or by ``callbridge monitor flush``.

Three tables:

* ``records``: waiting records, oldest first. A sender *claims* a batch before
  sending it (``owner``, ``lease``: who, and until when), in one transaction, so two
  processes sharing an outbox never send the same record; a claim whose lease ran
  out, or whose owner is a dead process on this host, may be taken over.
* ``dead``: records the server refused for good (or that are damaged); they no
  longer block the others and wait for ``monitor flush --retry-dead``.
* ``meta``: the upload URL (credentials masked), and per run the highest step
  recorded and the number of resumes (see the ``monitor`` callback).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import sqlite3
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from ._errors import CallbridgeError

_TABLES = {
    "records": """CREATE TABLE IF NOT EXISTS records (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL UNIQUE,
        body TEXT NOT NULL,
        owner TEXT,
        lease REAL
    )""",
    "dead": """CREATE TABLE IF NOT EXISTS dead (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL UNIQUE,
        body TEXT NOT NULL,
        reason TEXT NOT NULL,
        at REAL NOT NULL
    )""",
    "meta": "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
}
# Outboxes written before claims existed lack these columns; they are added on open.
_CLAIM_COLUMNS = {"owner": "TEXT", "lease": "REAL"}
_HOST = socket.gethostname()


class OutboxError(CallbridgeError, ValueError):
    """A file that is not a callbridge outbox, or one that cannot be opened.

    Attributes:
        path: the file.
        damaged: the file exists but is not a readable SQLite database (corrupted,
            truncated, or another kind of file); it may be moved aside.
    """

    def __init__(self, path: Path, message: str, *, damaged: bool = False) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.damaged = damaged


def owner_id() -> str:
    """A claimant's name: ``host:pid:nonce`` (the pid lets a dead claimant's records go)."""
    return f"{_HOST}:{os.getpid()}:{os.urandom(4).hex()}"


def _owner_is_dead(owner: str) -> bool:
    """Whether ``owner`` was a process of this host that no longer runs."""
    parts = owner.split(":")
    if len(parts) < 3:
        return False
    host, pid_text = ":".join(parts[:-2]), parts[-2]
    if host != _HOST or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


class Outbox:
    """Records as JSON text under their idempotency keys, oldest first.

    Args:
        path: the SQLite file.
        create: create the file (and missing tables) if needed; otherwise a missing
            or foreign file raises :class:`OutboxError`.
        readonly: open for reading only (``monitor show``): nothing is written.

    Raises:
        OutboxError: the file cannot be opened, is damaged, or is another program's
            database; the message names the path.
    """

    def __init__(self, path: Path, *, create: bool = True, readonly: bool = False) -> None:
        self.path = Path(path)
        if create and not readonly:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OutboxError(self.path, f"cannot create its folder ({exc})") from None
        elif not self.path.is_file():
            what = "not a file" if self.path.exists() else "no such outbox file"
            raise OutboxError(self.path, what)
        try:
            if readonly:
                uri = self.path.resolve().as_uri() + "?mode=ro"
                self._db = sqlite3.connect(uri, uri=True, timeout=10.0, isolation_level=None)
            else:
                # Autocommit: each append is its own small transaction, committed at once.
                self._db = sqlite3.connect(str(self.path), timeout=10.0, isolation_level=None)
        except (sqlite3.Error, OSError, ValueError) as exc:
            raise OutboxError(self.path, f"cannot open it ({exc})") from None
        try:
            self._prepare(create=create and not readonly, readonly=readonly)
        except sqlite3.OperationalError as exc:
            self._db.close()
            raise OutboxError(self.path, f"cannot open it ({exc})") from None
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise OutboxError(
                self.path, f"not a callbridge monitor outbox ({exc})", damaged=True
            ) from None
        except BaseException:
            self._db.close()  # never leave a connection behind (Python 3.13 warns at exit)
            raise

    def _columns(self, table: str) -> set[str]:
        return {str(row[1]) for row in self._db.execute(f"PRAGMA table_info({table})")}

    def _prepare(self, *, create: bool, readonly: bool) -> None:
        tables = {
            str(name)
            for (name,) in self._db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        }
        if "records" in tables:
            missing = {"key", "body"} - self._columns("records")
            if missing:
                raise OutboxError(
                    self.path,
                    f"not a callbridge monitor outbox (its table 'records' lacks "
                    f"{', '.join(sorted(missing))})",
                )
        elif tables or not create:
            found = f"tables: {', '.join(sorted(tables))}" if tables else "no tables"
            raise OutboxError(self.path, f"not a callbridge monitor outbox ({found})")
        if readonly:
            return
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives a killed process (not a power cut), and
        # costs no fsync per record on the training thread.
        self._db.execute("PRAGMA synchronous=NORMAL")
        for name, ddl in _TABLES.items():
            if name not in tables:
                self._db.execute(ddl)
        if "records" in tables:
            for column, kind in _CLAIM_COLUMNS.items():
                if column not in self._columns("records"):
                    self._db.execute(f"ALTER TABLE records ADD COLUMN {column} {kind}")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        # IMMEDIATE: take the write lock first, so that two claimants cannot both read
        # the same free rows before either marks them.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # --- appending ----------------------------------------------------------------------------

    def add(self, key: str, body: str, *, run_id: str | None = None, step: int = 0) -> None:
        """Append one record (a duplicate key is ignored: the record is already waiting).

        With ``run_id``, the run's highest recorded step is kept too (in the same
        commit), so that a resumed run knows which steps it trains again.
        """
        if run_id is None:
            self._db.execute("INSERT OR IGNORE INTO records (key, body) VALUES (?, ?)", (key, body))
            return
        with self._transaction():
            self._db.execute("INSERT OR IGNORE INTO records (key, body) VALUES (?, ?)", (key, body))
            self._db.execute(
                "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET "
                "value = max(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))",
                (f"step:{run_id}", str(int(step))),
            )

    # --- sending ------------------------------------------------------------------------------

    def claim(self, owner: str, limit: int, lease: float) -> list[tuple[str, str]]:
        """Take the oldest ``limit`` free records for ``owner`` until ``lease`` s from now.

        Free: unclaimed, already ``owner``'s, claimed with an expired lease, or claimed
        by a process of this host that has died. Returns ``(key, body)`` pairs.
        """
        now = time.time()
        with self._transaction():
            for (other,) in self._db.execute(
                "SELECT DISTINCT owner FROM records WHERE owner IS NOT NULL AND owner != ? "
                "AND lease >= ?",
                (owner, now),
            ).fetchall():
                if _owner_is_dead(str(other)):
                    self._db.execute(
                        "UPDATE records SET owner = NULL, lease = NULL WHERE owner = ?", (other,)
                    )
            rows = self._db.execute(
                "SELECT id, key, body FROM records "
                "WHERE owner IS NULL OR owner = ? OR lease IS NULL OR lease < ? "
                "ORDER BY id LIMIT ?",
                (owner, now, limit),
            ).fetchall()
            if rows:
                marks = ",".join("?" * len(rows))
                self._db.execute(
                    f"UPDATE records SET owner = ?, lease = ? WHERE id IN ({marks})",
                    (owner, now + lease, *(row[0] for row in rows)),
                )
        return [(str(key), body if isinstance(body, str) else repr(body)) for _, key, body in rows]

    def renew(self, owner: str, keys: Sequence[str], lease: float) -> set[str]:
        """Extend ``owner``'s claim on ``keys``; returns the keys it still holds."""
        if not keys:
            return set()
        marks = ",".join("?" * len(keys))
        with self._transaction():
            self._db.execute(
                f"UPDATE records SET lease = ? WHERE owner = ? AND key IN ({marks})",
                (time.time() + lease, owner, *keys),
            )
            held = self._db.execute(
                f"SELECT key FROM records WHERE owner = ? AND key IN ({marks})", (owner, *keys)
            ).fetchall()
        return {str(key) for (key,) in held}

    def release(self, owner: str) -> None:
        """Give up ``owner``'s claims (it stops sending)."""
        self._db.execute("UPDATE records SET owner = NULL, lease = NULL WHERE owner = ?", (owner,))

    def remove(self, keys: Sequence[str]) -> None:
        """Forget records the server acknowledged."""
        if not keys:
            return
        marks = ",".join("?" * len(keys))
        # Only the '?' marks are formatted in; the keys travel as parameters.
        self._db.execute(f"DELETE FROM records WHERE key IN ({marks})", tuple(keys))

    def bury(self, key: str, reason: str) -> None:
        """Move one record to the dead letters: it no longer blocks the others."""
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO dead (key, body, reason, at) "
                "SELECT key, body, ?, ? FROM records WHERE key = ?",
                (reason, time.time(), key),
            )
            self._db.execute("DELETE FROM records WHERE key = ?", (key,))

    def revive(self) -> int:
        """Put every dead letter back in line (oldest first); returns how many."""
        with self._transaction():
            count = int(self._db.execute("SELECT count(*) FROM dead").fetchone()[0])
            self._db.execute(
                "INSERT OR IGNORE INTO records (key, body) SELECT key, body FROM dead ORDER BY id"
            )
            self._db.execute("DELETE FROM dead")
        return count

    # --- reading ------------------------------------------------------------------------------

    def peek(self, limit: int) -> list[tuple[str, str]]:
        """The oldest ``limit`` records as ``(key, body)``, left in place."""
        rows = self._db.execute("SELECT key, body FROM records ORDER BY id LIMIT ?", (limit,))
        return list(rows)

    def count(self) -> int:
        """How many records wait (dead letters not included)."""
        return int(self._db.execute("SELECT count(*) FROM records").fetchone()[0])

    def claimed_by_others(self, owner: str) -> int:
        """How many waiting records another live sender holds right now."""
        row = self._db.execute(
            "SELECT count(*) FROM records WHERE owner IS NOT NULL AND owner != ? AND lease >= ?",
            (owner, time.time()),
        ).fetchone()
        return int(row[0])

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._db.execute("SELECT key, body FROM records ORDER BY id").fetchall())

    def dead(self) -> list[tuple[str, str, str, float]]:
        """Dead letters as ``(key, body, reason, when)``, oldest first (none in old outboxes)."""
        if not self._has_table("dead"):
            return []
        return list(self._db.execute("SELECT key, body, reason, at FROM dead ORDER BY id"))

    def _has_table(self, name: str) -> bool:
        row = self._db.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        ).fetchone()
        return bool(row[0])

    def get_meta(self, name: str) -> str | None:
        """A meta value (None when missing, or when the outbox has no meta table)."""
        if not self._has_table("meta"):
            return None
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


# --- opening for a run: never lose its records -------------------------------------------------


def fallback_paths(path: Path) -> list[Path]:
    """Where a run's records go when ``path`` cannot be used: beside it, then the temp dir.

    Both names are fixed for a given ``path``, so the next run falls back to the same
    file and delivers what an earlier run left there.
    """
    digest = hashlib.sha256(str(Path(path).absolute()).encode()).hexdigest()[:12]
    return [
        path.with_name(f"{path.stem}-fallback{path.suffix or '.sqlite'}"),
        Path(tempfile.gettempdir()) / f"callbridge-monitor-{digest}.sqlite",
    ]


def _move_aside(path: Path) -> Path | None:
    """Rename a damaged outbox (and its WAL files) for inspection; None if impossible."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    aside = path.with_name(f"{path.name}.damaged-{stamp}-{os.getpid()}")
    try:
        os.replace(path, aside)
    except OSError:
        return None
    for suffix in ("-wal", "-shm"):
        extra = path.with_name(path.name + suffix)
        with contextlib.suppress(OSError):
            os.replace(extra, aside.with_name(aside.name + suffix))
    return aside


def open_for_run(path: Path, *, skip: Path | None = None) -> tuple[Outbox, str | None]:
    """Open a run's outbox, falling back so that the run's records always have a home.

    A damaged file (not SQLite, corrupted) is renamed ``<name>.damaged-<time>-<pid>``
    (kept for inspection) and a fresh outbox takes its place; a file that cannot be
    opened (read-only folder, foreign database) is left alone and the records go to
    :func:`fallback_paths`.

    Args:
        path: the configured outbox.
        skip: a path not to try again (it just failed mid-run).

    Returns:
        The outbox, and a warning to log when it is not ``path`` as configured (None
        otherwise).

    Raises:
        OutboxError: no place works; the message names every path tried.
    """
    problems: list[str] = []
    if skip is None or Path(skip) != Path(path):
        try:
            return Outbox(path), None
        except OutboxError as exc:
            problems.append(str(exc))
            if exc.damaged:
                aside = _move_aside(path)
                if aside is not None:
                    try:
                        box = Outbox(path)
                    except OutboxError as again:
                        problems.append(str(again))
                    else:
                        return box, (
                            f"{exc}; it was moved aside to {aside} (kept for inspection) and a "
                            f"fresh outbox took its place"
                        )
    for candidate in fallback_paths(path):
        if skip is not None and Path(skip) == candidate:
            continue
        try:
            box = Outbox(candidate)
        except OutboxError as exc:
            problems.append(str(exc))
            continue
        reason = "; ".join(problems) if problems else f"{skip}: failed during the run"
        return box, (
            f"{reason}; this run's records go to {candidate} instead "
            f"(deliver them with `callbridge monitor flush {candidate}`)"
        )
    raise OutboxError(path, "no usable outbox: " + "; ".join(problems))


def leftovers(path: Path) -> list[Path]:
    """Fallback files of ``path`` that still hold records (an earlier run's)."""
    found = []
    for candidate in fallback_paths(path):
        if not candidate.is_file():
            continue
        try:
            box = Outbox(candidate, create=False, readonly=True)
        except OutboxError:
            continue
        try:
            if box.count():
                found.append(candidate)
        except sqlite3.Error:
            pass
        finally:
            box.close()
    return found
