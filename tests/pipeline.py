"""What several test modules share about the pipeline: its asset names in graph order, and the
failure messages of an in-process run."""

from __future__ import annotations

import dagster as dg

ASSET_NAMES = (
    "census_workbooks",
    "naics_index_entries",
    "naics_codes",
    "naics_distances",
    "naics_triplets",
    "stage_01_easy",
    "stage_02_medium",
    "stage_03_hard",
    "naics_embeddings",
)


def error_text(result: dg.ExecuteInProcessResult) -> str:
    """Every step failure's message and its causes, one per line (for assertions)."""
    texts = []
    for event in result.get_step_failure_events():
        error = event.step_failure_data.error
        while error is not None:
            texts.append(error.message)
            error = error.cause
    return "\n".join(texts)
