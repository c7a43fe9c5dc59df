"""cells.csv: one row per sweep cell and method, llama-bench-like columns (pandas reads it as
it is). Numbers come from derived.cells only."""

from __future__ import annotations

import csv
import os

from ..results import RunResults

CSV_COLUMNS = ("model", "method", "test", "n_prompt", "n_gen", "n_depth", "n_threads", "n_batch",
               "status", "runs", "pp_tps", "tg_tps", "tg_tps_total", "ttft_ms", "ttft_ms_lo",
               "ttft_ms_hi", "tpot_ms", "tpot_ms_lo", "tpot_ms_hi", "e2e_ms", "steady_rss_mb",
               "peak_rss_mb", "first_divergence", "batch_divergence", "bandwidth_gb_s", "decode_floor_ms",
               "decode_efficiency", "prefill_floor_ms", "prefill_efficiency", "warnings", "error", "node",
               "machine_kind")


def write_cells_csv(results: RunResults, folder: str) -> str:
    """Write it atomically beside results.json; returns its path."""
    path = os.path.join(folder, "cells.csv")
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in results.derived.cells:
            writer.writerow({k: row.get(k) for k in CSV_COLUMNS}
                            | {"model": results.model.get("name"), "warnings": " | ".join(row["warnings"])})
    os.replace(tmp, path)
    return path
