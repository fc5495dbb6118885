"""Cost tables: what one machine class's jobs cost (:class:`advcam.cost_model.CostTable`) as a CSV, a row per
(stage, arch) with its seconds per unit, the stage's start-up and the source it was measured on. The shipped
tables live in ``advcam/costs/``; ``advcam estimate --calibrate`` writes one from a finished study."""
from __future__ import annotations

import csv
import os
from pathlib import Path

from ..cost_model import STAGES, CostTable
from ..errors import InputError

__all__ = ["read_cost_table", "write_cost_table"]

_HEADER = ["stage", "arch", "seconds_per_unit", "startup_s", "source"]


def write_cost_table(table: CostTable, path: str | os.PathLike) -> None:
    """The table as CSV: a row per (stage, arch) with its cost, the stage's start-up on each row, its source."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(_HEADER)
        for (stage, arch), c in sorted(table.c.items(), key=lambda kv: (STAGES.index(kv[0][0]), kv[0][1])):
            w.writerow([stage, arch, f"{c:.6g}", f"{table.startup.get(stage, 0.0):.6g}", table.source])


def read_cost_table(path: str | os.PathLike) -> CostTable:
    """A table written by :func:`write_cost_table`; InputError naming the file and what is wrong in it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"cost table '{path}' does not exist")
    table = CostTable(source=str(path))
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != _HEADER:
            raise InputError(f"cost table '{path}': columns {reader.fieldnames}, expected {_HEADER}")
        for i, row in enumerate(reader, start=2):
            if row["stage"] not in STAGES:
                raise InputError(f"cost table '{path}' line {i}: unknown stage '{row['stage']}'")
            try:
                table.c[(row["stage"], row["arch"])] = float(row["seconds_per_unit"])
                table.startup[row["stage"]] = float(row["startup_s"])
            except ValueError:
                raise InputError(f"cost table '{path}' line {i}: not a number in {row}") from None
            table.source = row["source"] or str(path)
    return table
