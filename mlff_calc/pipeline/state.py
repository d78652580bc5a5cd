"""``RUN_DIR/state.json``: which distill stages finished, with which settings; written atomically.

Each stage record::

    {"status": "running" | "done", "key": sha256, "digest": sha256, "started": ISO time,
     "finished": ISO time, "seconds": float, "runs": int, "info": {...}}

``key`` hashes the settings that define a stage's outputs (and its inputs' digests); ``digest`` adds the
settings a stage can continue with in place (the training time budget). See :mod:`.distill` for how
they decide what re-runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import io
from ..errors import DataError, InputError

FORMAT = "mlff_calc.distill.state"
VERSION = 1


def digest(value: Any) -> str:
    """sha256 of the canonical JSON of ``value`` (sorted keys; floats as Python prints them)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class RunState:
    """The stage records of one run directory; every change is written to disk at once."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "state.json"
        self.stages: dict[str, dict[str, Any]] = {}
        self._lock = io.DirectoryLock(self.run_dir, "another mlff-calc distill")

    @classmethod
    def open(cls, run_dir: str | os.PathLike) -> "RunState":
        """Load (or start) the state of ``run_dir`` and lock the directory against a second distill.

        A non-empty directory without ``state.json`` is refused: it is not a distill run, and distill
        moves outputs it does not recognise out of the way.
        """
        state = cls(Path(run_dir))
        if state.run_dir.exists() and not state.run_dir.is_dir():
            raise InputError(f"--out {state.run_dir} exists and is not a directory")
        if state.run_dir.is_dir() and not state.path.exists():
            others = [p.name for p in state.run_dir.iterdir() if p.name != ".lock"]
            if others:
                raise InputError(f"--out {state.run_dir} is not empty and has no state.json, so it is not a "
                                 f"distill run directory (it holds {', '.join(sorted(others)[:5])}); "
                                 "choose a new or empty directory")
        state.run_dir.mkdir(parents=True, exist_ok=True)
        state._lock.acquire()
        if state.path.exists():
            try:
                raw = json.loads(state.path.read_text())
            except json.JSONDecodeError as exc:  # cannot happen with atomic writes, unless edited by hand
                raise DataError(f"{state.path} is not valid JSON ({exc}); fix or remove it") from None
            if raw.get("format") != FORMAT or raw.get("version", 0) > VERSION:
                raise DataError(f"{state.path} is not a distill state file this version can read")
            state.stages = raw.get("stages", {})
        else:
            state.save()
        return state

    def close(self) -> None:
        self._lock.release()

    def save(self) -> None:
        raw = {"format": FORMAT, "version": VERSION, "updated": now_iso(), "stages": self.stages}
        io.write_json(self.path, raw)

    def start(self, name: str, key: str, stage_digest: str) -> None:
        old = self.stages.get(name, {})
        runs = old.get("runs", 0) + 1 if old.get("key") == key else 1
        self.stages[name] = {"status": "running", "key": key, "digest": stage_digest, "started": now_iso(),
                             "runs": runs, "_t0": time.time()}
        self.save()

    def finish(self, name: str, info: dict[str, Any]) -> None:
        rec = self.stages[name]
        rec.update(status="done", finished=now_iso(), seconds=round(time.time() - rec.pop("_t0"), 3),
                   info=info)
        self.save()

    def forget(self, names) -> None:
        for name in names:
            self.stages.pop(name, None)
        self.save()
