"""``naics-gemini runs``: the latest finished MLflow run of each stage, side by side.

ML people compare stages in MLflow; this is the same comparison in a terminal, read from the
project's store (``MlflowTracker``: ``storage/mlflow/mlflow.db`` unless ``MLFLOW_TRACKING_URI``).
Every stage run logs the same metric names, so one row per metric lines the stages up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from naics_ml.stage_table import STAGE_NAMES

ROW_METRICS = (  # validation score (picks the served stage), hierarchy, index test, real text
    "selection_score",
    "parent_at_1",
    "recon_map",
    "spearman",
    "cophenetic",
    "test_top1",
    "memory_test_top1",
    "memory_test_top5",
    "realtext_val_hit1",
    "realtext_hit1",
    "realtext_hit5",
    "baseline_peer_realtext_hit1",
    "test_ece",
    "test_fallback_accuracy",
)


def latest_stage_runs(client: Any, experiment: str, revision: str | None) -> dict[str, Any]:
    """Stage -> its newest FINISHED run (of ``revision``, or of any revision)."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return {}
    query = "attributes.status = 'FINISHED'"
    if revision:
        query += f" and tags.naics_revision = '{revision}'"
    runs = client.search_runs(
        [found.experiment_id], filter_string=query, order_by=["attributes.start_time DESC"]
    )
    latest: dict[str, Any] = {}
    for run in runs:
        stage = run.data.tags.get("stage")
        if stage in STAGE_NAMES and stage not in latest:
            latest[stage] = run
    return {s: latest[s] for s in STAGE_NAMES if s in latest}


def _minutes(run: Any) -> str:
    if not run.info.end_time:
        return "n/a"
    return f"{(run.info.end_time - run.info.start_time) / 60_000:.1f} min"


def runs_table(runs: dict[str, Any], metrics: Sequence[str] = ROW_METRICS) -> str:
    """A plain-text table: one column per stage, rows run / revision / wall time / metrics."""
    stages = list(runs)
    rows = [
        ["", *stages],
        ["run", *(runs[s].info.run_id[:8] for s in stages)],
        ["revision", *(runs[s].data.tags.get("naics_revision", "?") for s in stages)],
        ["wall time", *(_minutes(runs[s]) for s in stages)],
    ]
    for name in metrics:
        values = [runs[s].data.metrics.get(name) for s in stages]
        rows.append([name, *("n/a" if v is None else f"{v:.3f}" for v in values)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def runs_records(runs: dict[str, Any], metrics: Sequence[str] = ROW_METRICS) -> list[dict]:
    """The same as JSON-ready records, one per stage."""
    return [
        {
            "stage": stage,
            "run_id": run.info.run_id,
            "revision": run.data.tags.get("naics_revision"),
            "wall_s": (run.info.end_time - run.info.start_time) / 1000
            if run.info.end_time
            else None,
            **{m: run.data.metrics.get(m) for m in metrics},
        }
        for stage, run in runs.items()
    ]
