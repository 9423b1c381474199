"""``control``: apply ``callbridge ctl`` commands at optimizer-step boundaries, on every rank."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import attrs

from .. import _control as ctl
from .._protocol import Callback, Run

logger = logging.getLogger("callbridge")


@attrs.define
class ControlCallback(Callback):
    """Operate a running training from outside (``callbridge ctl RUN_DIR ...``).

    At train begin, rank 0 publishes what can be operated in
    ``RUN_DIR/callbridge-control/callbacks.json``. Every ``every`` optimizer steps,
    rank 0 reads the commands appended to ``commands.jsonl`` since the last read, all
    ranks receive them (a broadcast under DDP) and apply them at the same step, and
    rank 0 acknowledges each in ``audit.jsonl``: the step it took effect, or why it
    was refused. A malformed line is refused and skipped; later lines still apply.
    What was read, what was applied and its effects (arguments set, callbacks
    disabled) are state: a resumed run neither re-reads nor re-applies them.

    Args:
        every: read commands every this many optimizer steps.
    """

    every: int = attrs.field(default=1, validator=attrs.validators.ge(1))

    offset: int = attrs.field(default=0, init=False)
    done: list[str] = attrs.field(factory=list, init=False)
    overrides: dict[str, dict[str, Any]] = attrs.field(factory=dict, init=False)
    disabled: list[str] = attrs.field(factory=list, init=False)
    _session: Any = attrs.field(default=None, init=False, repr=False)
    _dir: Path | None = attrs.field(default=None, init=False, repr=False)
    _catalog: dict[str, Any] = attrs.field(factory=dict, init=False, repr=False)
    #: ``[id, step, status]`` of each command this process handled (not state: for a look).
    applied: list[list[Any]] = attrs.field(factory=list, init=False, repr=False)

    def bind_session(self, session: Any) -> None:
        """The session of the run (given by :class:`callbridge.Session` when it is built)."""
        self._session = session

    # -- what the run publishes ---------------------------------------------------------

    def _entries(self) -> dict[str, Any]:
        return {b.key: b for b in self._session.entries} if self._session is not None else {}

    def catalog(self) -> dict[str, Any]:
        """What can be operated: each callback's key, name, state and changeable arguments."""
        from .._build import signature_of
        from .._coerce import type_name

        callbacks = []
        for key, built in self._entries().items():
            params = signature_of(type(built.callback)).params
            mutable = sorted(getattr(type(built.callback), "mutable_args", ()))
            callbacks.append(
                {
                    "key": key,
                    "name": built.spec.name,
                    "enabled": key not in self.disabled,
                    "control": built.callback is self,
                    "args": sorted(params),
                    "mutable": {a: type_name(params[a].annotation) for a in mutable if a in params},
                }
            )
        return {"callbacks": callbacks, "pid": os.getpid()}

    def on_train_begin(self, run: Run) -> None:
        if self._session is None or run.output_dir is None:
            logger.warning(
                "callbridge control: %s; commands cannot reach this run",
                "no session" if self._session is None else "the trainer has no output directory",
            )
            return
        self._dir = ctl.folder(run.output_dir)
        # Effects of commands applied before a resume (restored with the state).
        entries = self._entries()
        for key in self.disabled:
            if key in entries:
                self._session.dispatcher.set_enabled(entries[key].label, False)
        for key, args in self.overrides.items():
            for arg, value in args.items():
                if key in entries:
                    callback = entries[key].callback
                    setattr(callback, arg, ctl.coerce_arg(type(callback), key, arg, value))
        self._catalog = self.catalog()
        if run.state.is_main_process:
            self._dir.mkdir(parents=True, exist_ok=True)
            tmp = self._dir / f"{ctl.CATALOG}.tmp"
            tmp.write_text(json.dumps(self._catalog, indent=1), encoding="utf-8")
            os.replace(tmp, self._dir / ctl.CATALOG)
            # Commands acknowledged by an earlier attempt are never applied again.
            for record in ctl.read_lines(self._dir / ctl.AUDIT):
                ident = record.get("id") if isinstance(record, dict) else None
                if ident and ident not in self.done:
                    self.done.append(ident)

    # -- reading and applying -----------------------------------------------------------

    def _read(self) -> tuple[int, list[str]]:
        """New complete lines of the command file (rank 0), and the offset after them."""
        assert self._dir is not None
        try:
            # An open, not a stat: NFS makes an opened file's size current (close-to-open),
            # where a stat may answer from its attribute cache for up to a minute.
            with open(self._dir / ctl.COMMANDS, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return self.offset, []
        except OSError as exc:
            # Never raise here: the other ranks are waiting for this rank's broadcast.
            logger.warning("callbridge control: cannot read %s: %s", self._dir / ctl.COMMANDS, exc)
            return self.offset, []
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next read
        lines = data[:end].decode("utf-8", errors="replace").splitlines()
        return self.offset + end, [line for line in lines if line.strip()]

    def _shared(self, run: Run, payload: Any) -> Any:
        """Rank 0's ``payload`` on every rank."""
        if run.state.world_size > 1:
            import torch.distributed as dist  # at use: the core imports no framework

            if dist.is_available() and dist.is_initialized():
                box = [payload]
                dist.broadcast_object_list(box, src=0)
                return box[0]
        return payload

    def on_step_end(self, run: Run) -> None:
        if self._dir is None or run.state.global_step % self.every:
            return
        read = self._read() if run.state.is_main_process else (0, [])
        offset, lines = self._shared(run, read)
        self.offset = offset
        for line in lines:
            self._one(run, line)

    def _one(self, run: Run, line: str) -> None:
        step = run.state.global_step
        record: dict[str, Any] = {"step": step}
        try:
            command = json.loads(line)
            if not isinstance(command, dict):
                raise ctl.CommandError(f"a command is a JSON object (got {line[:200]!r})")
        except ValueError as exc:
            record.update(status="refused", reason=f"malformed line: {exc}", line=line[:200])
            self._ack(run, record)
            return
        ident = str(command.get("id", ""))
        if ident and ident in self.done:
            return
        record.update(
            {k: command[k] for k in ("id", "command", "name", "arg", "value") if k in command}
        )
        try:
            self._apply(run, command)
        except Exception as exc:  # noqa: BLE001 - a command must not take the control callback down
            reason = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            record.update(status="refused", reason=reason)
        else:
            record.update(status="applied")
        if ident:
            self.done.append(ident)
        self.applied.append([ident, step, record["status"]])
        self._ack(run, record)

    def _apply(self, run: Run, command: dict[str, Any]) -> None:
        ctl.check(command, self._catalog)
        action = command["command"]
        if action == "stop":
            run.control.should_save = True  # a checkpoint first, so the run resumes here
            run.control.should_stop = True
        elif action == "save":
            run.control.should_save = True
        elif action == "evaluate":
            if run.framework == "lightning":
                raise ctl.CommandError("evaluate: Lightning has no evaluation request")
            run.control.should_evaluate = True
        elif action in ("enable", "disable"):
            key = command["name"]
            built = self._entries()[key]
            self._session.dispatcher.set_enabled(built.label, action == "enable")
            if action == "disable" and key not in self.disabled:
                self.disabled.append(key)
            if action == "enable" and key in self.disabled:
                self.disabled.remove(key)
        else:  # set
            key, arg = command["name"], command["arg"]
            callback = self._entries()[key].callback
            setattr(callback, arg, ctl.coerce_arg(type(callback), key, arg, command.get("value")))
            self.overrides.setdefault(key, {})[arg] = command.get("value")

    def _ack(self, run: Run, record: dict[str, Any]) -> None:
        if record["status"] == "refused":
            logger.warning(
                "callbridge control: refused at step %d: %s", record["step"], record["reason"]
            )
        else:
            logger.info(
                "callbridge control: %s applied at step %d", record.get("command"), record["step"]
            )
        if run.state.is_main_process and self._dir is not None:
            ctl.append(self._dir / ctl.AUDIT, record)

    def state_dict(self) -> dict[str, Any]:
        return {
            "offset": self.offset,
            "done": list(self.done),
            "overrides": {k: dict(v) for k, v in self.overrides.items()},
            "disabled": list(self.disabled),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.offset = int(state.get("offset", 0))
        self.done = list(state.get("done", []))
        self.overrides = {k: dict(v) for k, v in state.get("overrides", {}).items()}
        self.disabled = list(state.get("disabled", []))
