"""The benchmark table: one row per model (and ProFD ablation), mean and spread over seeds.

``benchmark.json`` maps each row to ``rank1, mAP`` (means over seeds, fractions in [0, 1]), ``rank1_std,
mAP_std`` (sample standard deviation over seeds, 0 for one seed), ``params`` (parameters used at
inference), ``infer_img_s`` (images/s of the eval forward), ``train_s`` (seconds of training, mean over
seeds), ``peak_mem_mb`` (MiB, max over seeds), plus ``params_total``, ``runs`` and ``run_dirs``.
Ablation rows share ProFD's training: their ``train_s`` and ``peak_mem_mb`` are null. ``benchmark.csv``
holds the same rows; ``benchmark.md`` is the human-readable table with the command that made it.
"""
from __future__ import annotations

import csv
import io
import json
import os.path as osp
import statistics
from typing import Any, Dict, List, Optional, Sequence

from tabulate import tabulate

from ..fileio import atomic_write

__all__ = ["ROW_KEYS", "aggregate", "format_markdown", "write_tables"]

#: the documented keys of every benchmark.json row, in table order
ROW_KEYS = ("rank1", "mAP", "rank1_std", "mAP_std", "params", "infer_img_s", "train_s", "peak_mem_mb")
_EXTRA_KEYS = ("params_total", "runs", "run_dirs")
MEGA = 1e6


def _mean(values: List[Optional[float]]) -> Optional[float]:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else None


def _std(values: List[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(rows: Sequence[Dict[str, Any]], target: str) -> Dict[str, Any]:
    """One table row from the runs of one model (seeds).

    Args:
        rows: per run, ``{"results": {target: {...}}, "metrics": {...}, "run_dir": str}``.
        target: the evaluated dataset whose R1 / mAP the row reports.
    """
    r1 = [float(r["results"][target]["rank1"]) for r in rows]
    m_ap = [float(r["results"][target]["mAP"]) for r in rows]
    keys = ("params", "params_total", "infer_img_s", "train_s", "peak_mem_mb")
    metric = {k: [r["metrics"].get(k) for r in rows] for k in keys}
    peaks = [v for v in metric["peak_mem_mb"] if v is not None]
    params = [v for v in metric["params"] if v is not None]
    totals = [v for v in metric["params_total"] if v is not None]
    return {
        "rank1": statistics.fmean(r1), "mAP": statistics.fmean(m_ap), "rank1_std": _std(r1),
        "mAP_std": _std(m_ap), "params": params[0] if params else None,
        "infer_img_s": _mean(metric["infer_img_s"]), "train_s": _mean(metric["train_s"]),
        "peak_mem_mb": max(peaks) if peaks else None, "params_total": totals[0] if totals else None,
        "runs": len(rows), "run_dirs": [r["run_dir"] for r in rows],
    }


def _pct(mean: float, std: float, runs: int) -> str:
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if runs > 1 else "")


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "—"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{seconds:.1f} s"


def format_markdown(table: Dict[str, Dict[str, Any]]) -> str:
    """The table as GitHub markdown: R1 / mAP in %, parameters in millions, throughput, time, memory."""
    lines = []
    for name, r in table.items():
        lines.append([
            name, r["runs"], _pct(r["rank1"], r["rank1_std"], r["runs"]),
            _pct(r["mAP"], r["mAP_std"], r["runs"]),
            "—" if r["params"] is None else f"{r['params'] / MEGA:.2f} M",
            "—" if r["infer_img_s"] is None else f"{r['infer_img_s']:.0f}",
            _duration(r["train_s"]), "—" if r["peak_mem_mb"] is None else f"{r['peak_mem_mb']:.0f}",
        ])
    headers = ["model", "runs", "R1 (%)", "mAP (%)", "params (inference)", "inference (img/s)", "train time",
               "peak memory (MiB)"]
    return tabulate(lines, headers=headers, tablefmt="github", disable_numparse=True)


def _csv(table: Dict[str, Dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["model", *ROW_KEYS, "params_total", "runs"])
    for name, r in table.items():
        writer.writerow([name, *("" if r[k] is None else r[k] for k in (*ROW_KEYS, "params_total", "runs"))])
    return buf.getvalue()


def write_tables(table: Dict[str, Dict[str, Any]], output: str, header: str) -> Dict[str, str]:
    """Atomically write ``benchmark.json``, ``benchmark.csv`` and ``benchmark.md`` into ``output``.

    Args:
        table: row name -> :func:`aggregate` row.
        output: the benchmark folder.
        header: markdown text put above the table (command, target, machine).

    Returns:
        ``{"json": path, "csv": path, "md": path}``.
    """
    paths = {ext: osp.join(output, f"benchmark.{ext}") for ext in ("json", "csv", "md")}
    rows = {name: {k: r[k] for k in (*ROW_KEYS, *_EXTRA_KEYS)} for name, r in table.items()}
    atomic_write(paths["json"], lambda f: json.dump(rows, f, indent=2), binary=False)
    atomic_write(paths["csv"], lambda f: f.write(_csv(table)), binary=False)
    atomic_write(paths["md"], lambda f: f.write(f"{header}\n\n{format_markdown(table)}\n"), binary=False)
    return paths
