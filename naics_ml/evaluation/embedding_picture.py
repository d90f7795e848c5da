"""A picture of the embedding: every code in the Poincare disk, coloured by sector.

A 384-dimensional hyperbolic embedding has to lose something on a page. The *sector-wedge
projection* keeps what the hierarchy needs and says what it drops (docs/embedding_picture.md):

* **Radius is exact.** A code sits at its true Poincare-ball norm ``tanh(r / 2)`` (the ball
  scaled to the unit disk for any curvature), r its hyperbolic distance from the origin: the
  depth signal is drawn as it is, not rescaled.
* **Angle shows the tree.** Each sector gets a wedge proportional to its number of codes; the
  wedges follow the circular order of the sectors' mean directions (first two principal
  components), so sectors the model places close together sit side by side. Inside a wedge a
  code's angle is its coordinate along the sector's own first principal direction, so codes
  the model places close together inside a sector stay close on the page.
* Thin lines join each code to its parent; circles mark each level's mean radius.

A plain 2-D PCA of the directions was tried first: the sectors overlap in one crowded arc
(docs/embedding_picture.md), which is what the wedges avoid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from naics_ml.io import atomic_path

__all__ = ["disk_layout", "plot_poincare_disk"]

WEDGE_GAP = 0.15  # share of each wedge left empty on its two sides


def _principal_axes(vectors: np.ndarray, k: int) -> np.ndarray:
    """Coordinates of the centred rows along their first ``k`` principal directions."""
    centred = vectors - vectors.mean(axis=0)
    if len(vectors) < 2 or not np.any(centred):
        return np.zeros((len(vectors), k))
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:k].T


def disk_layout(poincare: np.ndarray, sector: np.ndarray) -> np.ndarray:
    """(n, 2) positions in the unit disk for Poincare-ball points (n, D) (see the module doc)."""
    poincare = np.asarray(poincare, dtype=np.float64)
    norm = np.linalg.norm(poincare, axis=1)
    direction = poincare / np.where(norm > 0, norm, 1.0)[:, None]
    sectors = sorted(set(sector.tolist()))
    means = np.stack([direction[sector == s].mean(axis=0) for s in sectors])
    plane = _principal_axes(means, 2)
    order = [sectors[i] for i in np.argsort(np.arctan2(plane[:, 1], plane[:, 0]))]
    counts = np.array([(sector == s).sum() for s in order], dtype=np.float64)
    edges = np.concatenate([[0.0], np.cumsum(counts)]) / counts.sum() * 2 * np.pi
    angle = np.zeros(len(poincare))
    for i, s in enumerate(order):
        rows = np.flatnonzero(sector == s)
        along = _principal_axes(direction[rows], 1)[:, 0]
        span = along.max() - along.min()
        unit = (along - along.min()) / span if span > 0 else np.full(len(rows), 0.5)
        width = edges[i + 1] - edges[i]
        angle[rows] = edges[i] + width * (WEDGE_GAP + (1 - 2 * WEDGE_GAP) * unit)
    return np.stack([norm * np.cos(angle), norm * np.sin(angle)], axis=1)


def plot_poincare_disk(
    embeddings: pl.DataFrame, levels: pl.DataFrame, path: Path, ball_radius: float = 1.0
) -> Path:
    """Draw ``embeddings`` (``poincare``, ``radius``, ``sector``, ``level``, ``parent_index``;
    any row order) in the disk with a ring at each level's mean radius (``levels``: ``level``,
    ``mean_radius`` in hyperbolic units), beside a box plot of radius by level; write the PNG
    atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = embeddings.sort("index")
    scale = float(ball_radius)
    figure, (axis, side) = plt.subplots(1, 2, figsize=(13, 9), gridspec_kw={"width_ratios": [3, 1]})
    _draw_disk(axis, frame, levels, scale)
    radius = frame["radius"].to_numpy()
    level = frame["level"].to_numpy()
    shown = sorted(set(level.tolist()))
    side.boxplot([radius[level == lvl] for lvl in shown], tick_labels=[str(v) for v in shown])
    side.set_xlabel("level (digits)")
    side.set_ylabel("hyperbolic distance from the origin")
    side.set_title("depth: radius by level")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=90, format="png")
    plt.close(figure)
    return Path(path)


def _draw_disk(axis, frame: pl.DataFrame, levels: pl.DataFrame, scale: float) -> None:
    """The disk panel: codes by sector, parent lines, level rings, sector labels."""
    import matplotlib.pyplot as plt

    sector = frame["sector"].to_numpy()
    xy = disk_layout(np.array(frame["poincare"].to_list()), sector) / scale
    axis.add_patch(plt.Circle((0, 0), 1.0, fill=False, color="black", linewidth=1))
    for mean in levels["mean_radius"].to_list():
        ring = np.tanh(mean / (2 * scale))
        axis.add_patch(plt.Circle((0, 0), ring, fill=False, color="grey", lw=0.5, ls="--"))
    parent = frame["parent_index"].fill_null(-1).to_numpy()
    for child in np.flatnonzero(parent >= 0):
        pair = xy[[child, parent[child]]]
        axis.plot(pair[:, 0], pair[:, 1], color="grey", lw=0.2, alpha=0.3, zorder=1)
    colours = plt.get_cmap("tab20")
    is_sector = frame["level"].to_numpy() == 2
    for i, s in enumerate(sorted(set(sector.tolist()))):
        rows, colour = sector == s, colours(i % 20)
        axis.scatter(*xy[rows].T, s=4 + 30 * is_sector[rows], zorder=2, color=colour)
        centre = xy[rows].mean(axis=0)
        label = 1.08 * centre / max(np.linalg.norm(centre), 1e-9)
        axis.annotate(s, label, ha="center", va="center", fontsize=9, weight="bold", color=colour)
    axis.set_xlim(-1.15, 1.15)
    axis.set_ylim(-1.15, 1.15)
    axis.set_aspect("equal")
    axis.axis("off")
    axis.set_title(
        f"{len(frame):,} NAICS codes in the Poincare disk, coloured by sector\n"
        "dashed: mean radius of each level; lines: code to parent; large dots: sectors",
        fontsize=10,
    )
