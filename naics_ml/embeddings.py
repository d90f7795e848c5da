"""The final embedding of every code, as a table and a picture, with how well it keeps the tree.

``naics_embeddings`` calls :func:`build_embeddings` on the last stage's folder. It writes the
table (Lorentz and Poincare coordinates, radius) and the Poincare-disk picture
(:mod:`naics_ml.evaluation.embedding_picture`), and measures per level of the tree the mean
radius and the share of codes whose nearest code of the parent level is their parent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from naics_ml.io import write_parquet_atomic

__all__ = ["EmbeddingsReport", "build_embeddings"]


@dataclass(frozen=True)
class EmbeddingsReport:
    """What :func:`build_embeddings` wrote and measured."""

    table: Path
    picture: Path
    rows: int
    dimensions: int  # coordinates per code on the hyperboloid (D + 1)
    levels: pl.DataFrame  # level, codes, mean_radius, parent_share


def build_embeddings(stage_dir: Path, table_path: Path, picture_path: Path) -> EmbeddingsReport:
    """Embed every code with the stage's model, write the table and the picture (atomically)."""
    import torch

    from naics_ml.evaluation.embedding_picture import plot_poincare_disk
    from naics_ml.evaluation.metrics import level_structure
    from naics_ml.inference.classifier import Classifier

    classifier = Classifier.from_checkpoint(stage_dir, memory=False)
    table = classifier.code_embeddings()  # rows in the code table's order, as .codes
    parent_index = classifier.codes["parent_index"]
    points = torch.tensor(table["coordinates"].to_list(), dtype=torch.float64)
    distance = classifier.manifold.pairwise_distance(points, points).numpy()
    levels = level_structure(
        distance,
        parent_index.fill_null(-1).to_numpy(),
        table["level"].to_numpy(),
        table["radius"].to_numpy(),
    )
    write_parquet_atomic(table, table_path)
    with_parents = table.with_columns(parent_index)
    plot_poincare_disk(with_parents, levels, picture_path, classifier.manifold.ball_radius)
    return EmbeddingsReport(
        table=Path(table_path),
        picture=Path(picture_path),
        rows=table.height,
        dimensions=points.shape[1],
        levels=levels,
    )
