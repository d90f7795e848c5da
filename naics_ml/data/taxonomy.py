"""The NAICS tree and its distances.

The tree itself is a networkx DiGraph (parent -> child) so that it can be inspected and checked with
standard graph tools; the distances for all pairs come from a vectorised ancestor table instead of
2.2 million graph queries. Tree distance, as the original system defined it: edges from each code up
to the lowest common ancestor, summed over both sides, minus 0.5 when one code is an ancestor of the
other; 10.0 across sectors (sectors 31-33, 44-45 and 48-49 are one sector each).
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import polars as pl

CROSS_SECTOR_DISTANCE = 10.0
LEVELS = (2, 3, 4, 5, 6)
RELATIONS = ("parent", "ancestor", "sibling", "same_sector", "cross_sector")


def build_tree(codes: pl.DataFrame) -> nx.DiGraph:
    """Directed forest parent -> child with level, title and sector on each node."""
    tree = nx.DiGraph()
    for row in codes.select("code", "level", "title", "sector", "parent_code").iter_rows():
        code, level, title, sector, parent = row
        tree.add_node(code, level=level, title=title, sector=sector)
        if parent is not None:
            tree.add_edge(parent, code)
    return tree


def validate_tree(tree: nx.DiGraph) -> None:
    """Each sector's subtree is an arborescence whose levels grow by one per edge."""
    if not nx.is_forest(tree.to_undirected(as_view=True)):
        raise ValueError("NAICS taxonomy is not a forest (a code has two parents or a cycle)")
    for parent, child in tree.edges:
        if tree.nodes[child]["level"] != tree.nodes[parent]["level"] + 1:
            raise ValueError(f"NAICS taxonomy: edge {parent} -> {child} skips a level")


def ancestor_table(codes: pl.DataFrame) -> np.ndarray:
    """(n, 5) int32: column l-2 holds the index of the code's ancestor at level l (itself at its
    own level, -1 below it)."""
    n = codes.height
    level = codes["level"].to_numpy().astype(np.int64)
    parent = codes["parent_index"].fill_null(-1).to_numpy().astype(np.int64)
    table = np.full((n, len(LEVELS)), -1, dtype=np.int32)
    table[np.arange(n), level - 2] = np.arange(n)
    for column in range(len(LEVELS) - 1, 0, -1):  # walk up one level at a time
        known = table[:, column] >= 0
        table[known, column - 1] = parent[table[known, column]]
    return table


def _pair_stats(
    ancestors: np.ndarray, level: np.ndarray, i: np.ndarray, j: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distance, lca_level, is_ancestor) for index arrays i, j; lca_level 0 across sectors."""
    shared = (ancestors[i] == ancestors[j]) & (ancestors[i] >= 0)
    common = shared.sum(axis=1)  # ancestor chains are prefixes, so this counts shared levels
    lca_level = np.where(common > 0, common + 1, 0).astype(np.int8)
    li, lj = level[i], level[j]
    is_ancestor = (common > 0) & (lca_level == np.minimum(li, lj))
    distance = (li - lca_level) + (lj - lca_level) - 0.5 * is_ancestor
    distance = np.where(common > 0, distance, CROSS_SECTOR_DISTANCE).astype(np.float32)
    return distance, lca_level, is_ancestor


def tree_distance_matrix(codes: pl.DataFrame) -> np.ndarray:
    """(n, n) float32 tree distances, zero on the diagonal."""
    n = codes.height
    ancestors = ancestor_table(codes)
    level = codes["level"].to_numpy().astype(np.int64)
    matrix = np.zeros((n, n), dtype=np.float32)
    for start in range(0, n, 256):  # row blocks keep the (rows, n, 5) comparison small
        rows = np.arange(start, min(start + 256, n))
        i = np.repeat(rows, n)
        j = np.tile(np.arange(n), len(rows))
        distance, _, _ = _pair_stats(ancestors, level, i, j)
        matrix[rows] = distance.reshape(len(rows), n)
    np.fill_diagonal(matrix, 0.0)
    return matrix


def exclusion_matrix(codes: pl.DataFrame) -> np.ndarray:
    """(n, n) bool: [a, e] is True when a's cross-references exclude e."""
    n = codes.height
    matrix = np.zeros((n, n), dtype=bool)
    for a, targets in enumerate(codes["excluded_indices"].to_list()):
        if targets:
            matrix[a, targets] = True
    return matrix


def pair_table(codes: pl.DataFrame) -> pl.DataFrame:
    """Every unordered pair i < j once: indices, distance, LCA level, relation, exclusion flag."""
    n = codes.height
    i, j = np.triu_indices(n, k=1)
    ancestors = ancestor_table(codes)
    level = codes["level"].to_numpy().astype(np.int64)
    distance, lca_level, is_ancestor = _pair_stats(ancestors, level, i, j)
    relation = np.select(
        [
            lca_level == 0,
            is_ancestor & (np.abs(level[i] - level[j]) == 1),
            is_ancestor,
            (level[i] == level[j]) & (lca_level == level[i] - 1),
        ],
        [4, 0, 1, 2],
        default=3,
    )
    excluded = exclusion_matrix(codes)
    return pl.DataFrame(
        {
            "i": i.astype(np.int16),
            "j": j.astype(np.int16),
            "distance": distance,
            "lca_level": lca_level,
            "relation": pl.Series(np.asarray(RELATIONS)[relation]).cast(pl.Enum(RELATIONS)),
            "excluded": excluded[i, j] | excluded[j, i],
        }
    )


def matrix_from_pairs(pairs: pl.DataFrame, n: int) -> np.ndarray:
    """Rebuild the symmetric (n, n) distance matrix from a stored pair table."""
    matrix = np.zeros((n, n), dtype=np.float32)
    i, j = pairs["i"].to_numpy(), pairs["j"].to_numpy()
    matrix[i, j] = matrix[j, i] = pairs["distance"].to_numpy()
    return matrix
