"""The sweep's results store: a tidy table with one row per run, kept as JSON lines.

JSON lines because rows are appended one at a time by runs that may be interrupted: a partly written last line is
detected and ignored instead of corrupting the table, and re-running a finished run appends a newer row for the
same `run_id` (the newest row wins when reading). `to_csv` writes the same table for spreadsheets and pandas.
"""
import csv
import dataclasses
import io
import json
import math
import os
from typing import Iterable, List, Optional

from keras_nfnet import storage


@dataclasses.dataclass
class RunResult:
    """One pretraining run of a sweep: what was trained, what it cost and what it reached."""

    run_id: str  # unique within a sweep, e.g. "S1-e0.5-lr0.4"
    variant: str
    params: int  # trainable parameters, with the sweep's classifier head
    macs_per_image: int  # forward multiply-accumulates per image at the training resolution
    epochs: float  # the epoch budget (its own cosine schedule)
    learning_rate: float  # peak learning rate
    steps: int
    batch_size: int
    heldout_loss: float  # final held-out cross-entropy (the quantity the scaling laws are fitted to)
    flops: float  # accumulated training FLOPs (~6 x forward MACs per image seen)
    device_hours: float  # accumulated device-hours, summed over restarts
    heldout_accuracy: Optional[float] = None
    finetune_accuracy: Optional[float] = None  # filled in later when the run is fine-tuned
    image_size: Optional[int] = None
    seed: Optional[int] = None
    run_dir: Optional[str] = None
    status: str = "finished"  # "finished" or "diverged" (loss not finite); diverged runs still count as tried

    def __post_init__(self):
        if not self.run_id:
            raise ValueError("RunResult.run_id must be a non-empty string")
        for name in ("epochs", "learning_rate"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"RunResult.{name} must be a positive number, got {value!r}")
        if self.status not in ("finished", "diverged"):
            raise ValueError(f"RunResult.status must be 'finished' or 'diverged', got {self.status!r}")

    @property
    def ok(self) -> bool:
        """True when the run finished with a finite held-out loss (diverged runs are excluded from fits)."""
        return self.status == "finished" and self.heldout_loss is not None and math.isfinite(self.heldout_loss)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, row: dict) -> "RunResult":
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.name not in row]
        if missing:
            raise ValueError(f"results row {row.get('run_id', '?')!r} lacks required field(s) {missing}")
        # Unknown keys are kept out rather than rejected so that newer stores stay readable.
        return cls(**{k: v for k, v in row.items() if k in names})


FIELDS = [f.name for f in dataclasses.fields(RunResult)]


class ResultsStore:
    """Append-only JSON-lines table of `RunResult`s at `path` (created on first append). In a bucket, where an
    object cannot be appended to, an append rewrites the whole table in one object put (one writer: the sweep)."""

    def __init__(self, path: str):
        self.path = path

    def append(self, result: RunResult) -> None:
        line = json.dumps(_jsonable(result.to_dict()), sort_keys=True)
        if storage.is_remote(self.path):
            old = storage.read_text(self.path) if storage.exists(self.path) else ""
            storage.write_atomic(self.path, old + ("" if not old or old.endswith("\n") else "\n") + line + "\n")
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        # One write of a whole line, flushed and synced: a crash leaves at worst one partial last line.
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def load(self) -> List[RunResult]:
        """All runs, newest row per `run_id`, in first-seen order. A truncated last line is skipped."""
        if not storage.exists(self.path):
            return []
        rows = {}
        lines = storage.read_text(self.path).split("\n")
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                if i >= len(lines) - 2:  # the last (possibly unterminated) line: an interrupted append
                    continue
                raise ValueError(f"{self.path}:{i + 1} is not valid JSON; fix or remove that line")
            result = RunResult.from_dict(row)
            rows.pop(result.run_id, None)
            rows[result.run_id] = result
        return list(rows.values())

    def update(self, run_id: str, **fields) -> RunResult:
        """Appends a newer row for `run_id` with `fields` changed (e.g. finetune_accuracy after fine-tuning)."""
        rows = {r.run_id: r for r in self.load()}
        if run_id not in rows:
            raise ValueError(f"no run {run_id!r} in {self.path}; runs: {', '.join(sorted(rows)) or 'none'}")
        unknown = sorted(set(fields) - set(FIELDS) | ({"run_id"} & set(fields)))
        if unknown:
            raise ValueError(f"cannot set {unknown}; settable fields: {', '.join(f for f in FIELDS if f != 'run_id')}")
        row = RunResult.from_dict({**rows[run_id].to_dict(), **fields})
        self.append(row)
        return row

    def finished_ids(self) -> set:
        return {r.run_id for r in self.load()}

    def to_csv(self, csv_path: str) -> None:
        write_csv(self.load(), csv_path)


def write_csv(results: Iterable[RunResult], csv_path: str) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=FIELDS)
    writer.writeheader()
    for r in results:
        writer.writerow({k: ("" if v is None else v) for k, v in r.to_dict().items()})
    storage.write_atomic(csv_path, text.getvalue())


def read_csv(csv_path: str) -> List[RunResult]:
    """Reads a table written by `write_csv` (or by hand, e.g. from runs done elsewhere) back into `RunResult`s."""
    ints = {"params", "macs_per_image", "steps", "batch_size", "image_size", "seed"}
    floats = {"epochs", "learning_rate", "heldout_loss", "flops", "device_hours", "heldout_accuracy",
              "finetune_accuracy"}
    out = []
    with io.StringIO(storage.read_bytes(csv_path).decode("utf-8"), newline="") as f:
        for row in csv.DictReader(f):
            clean = {}
            for k, v in row.items():
                if v == "" or v is None:
                    continue
                clean[k] = int(float(v)) if k in ints else float(v) if k in floats else v
            out.append(RunResult.from_dict(clean))
    return out


def _jsonable(row: dict) -> dict:
    # json.dumps writes NaN/Infinity, which is not JSON; a diverged loss is stored as null with status "diverged".
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
