"""Stage timings for a pipeline run (published as a table artifact)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class StageTimer:
    rows: list[dict] = field(default_factory=list)

    @contextmanager
    def stage(self, name: str):
        started = time.monotonic()
        row = {"stage": name, "seconds": None, "status": "running"}
        self.rows.append(row)
        try:
            yield row
        except BaseException as exc:
            row["status"] = f"failed: {type(exc).__name__}"
            raise
        else:
            row["status"] = "ok"
        finally:
            row["seconds"] = round(time.monotonic() - started, 3)

    def seconds(self, name: str) -> float:
        return sum(r["seconds"] or 0.0 for r in self.rows if r["stage"] == name)
