"""Resume state of `embed_file`: which files a run writes, and what it has committed.

`OUT.state.json` (`state_path`, the one place that names it) records the committed rows and
the fingerprint of what they were made from; it is replaced atomically after the rows it
counts are durable, and stays after the run so a rerun can tell the output is complete.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import orjson

from .corpus import CorpusError
from .npy import fsync_dir

__all__ = ["OutputPaths", "ResumeState", "state_path"]


def state_path(output: Path) -> Path:
    """The resume state file of the run that writes `output` (`OUT.npy` -> `OUT.npy.state.json`).

    Every part of embedkit that reads or writes the state finds it here.
    """
    return output.with_name(output.name + ".state.json")


@dataclasses.dataclass(frozen=True)
class OutputPaths:
    """The files of one `embedkit embed -o OUT.npy` run.

    `OUT.npy.partial` and `OUT.mask.npy.partial` are written while the run is going and
    renamed when it is complete; `OUT.npy.state.json` records the committed rows and what they
    were made from, and stays after the run (so a rerun can tell it is already done).
    """

    data: Path
    mask: Path
    state: Path

    @classmethod
    def for_output(cls, out: Path) -> OutputPaths:
        """Name the sibling files of `out`."""
        stem = out.name[: -len(".npy")] if out.name.endswith(".npy") else out.name
        return cls(
            data=out,
            mask=out.with_name(stem + ".mask.npy"),
            state=state_path(out),
        )

    @property
    def data_partial(self) -> Path:
        """The data file while the run is going."""
        return self.data.with_name(self.data.name + ".partial")

    @property
    def mask_partial(self) -> Path:
        """The mask file while the run is going."""
        return self.mask.with_name(self.mask.name + ".partial")


@dataclasses.dataclass
class ResumeState:
    """What a run has committed, and the fingerprint of what it was made from.

    Saved atomically (write, fsync, rename, fsync the folder) after the rows it counts were
    fsynced, so after any crash `committed` rows are on disk and correct.
    """

    fingerprint: dict[str, Any]
    rows: int
    dim: int
    on_bad: str
    committed: int = 0
    bad: int = 0
    complete: bool = False
    version: int = 1

    @classmethod
    def load(cls, path: Path) -> ResumeState | None:
        """The saved state, or None when there is none."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            data = orjson.loads(raw)
            return cls(**data)
        except (orjson.JSONDecodeError, TypeError) as exc:
            raise CorpusError(
                f"{path} is not an embedkit state file ({exc}); remove it or use --force"
            ) from exc

    def save(self, path: Path) -> None:
        """Replace the state file atomically and durably."""
        tmp = path.with_name(path.name + ".tmp")
        payload = orjson.dumps(dataclasses.asdict(self), option=orjson.OPT_INDENT_2)
        with tmp.open("wb") as f:
            f.write(payload + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)

    def mismatch(self, fingerprint: dict[str, Any]) -> str | None:
        """Which recorded setting differs from `fingerprint` (None when all agree)."""
        for key in sorted(set(self.fingerprint) | set(fingerprint)):
            if self.fingerprint.get(key) != fingerprint.get(key):
                return key
        return None
