"""Choose the Classifier's blend weights on validation data, per stage, and keep them with it.

``Classifier.predict`` mixes the trained embedding, the entry memory (as points and as words)
and the frozen base model's own vote (``MemoryConfig`` in ``naics_ml.inference.entry_memory``).
How much each part should weigh depends on the stage: a stage fitted hard to the hierarchy
needs more of the base model's knowledge of free text. So every stage grid-searches the three
weights on its validation sets (the index ``validation`` split and the real-text validation set,
never a test or evaluation-only set), mixing parts computed once (``Classifier.score_parts``), and
writes the winner to ``blend.json`` in the stage folder; ``Classifier.from_checkpoint`` loads it.

When the parts carry the level heads' priors, a second grid search chooses the exponents of
the hierarchical decoding with the weights fixed. The objective is the mean hit@1 over the
validation sets, so that neither the index phrasing
nor the firm-written text is given up for the other. The same number ranks the stages
(``selection_score``): the stage that serves ``predict`` is chosen by validation.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from naics_ml.evaluation.realtext_metrics import realtext_metrics
from naics_ml.inference.entry_memory import MemoryConfig
from naics_ml.inference.serving import TunedBlend

GRID = {
    "weight": (0.0, 0.15, 0.25, 0.35),
    "lexical_weight": (0.0, 0.1, 0.2),
    "base_weight": (0.0, 0.2, 0.35, 0.5, 0.65, 0.8),
}
# the hierarchical decoding's exponents (naics_ml.inference.level_heads), searched second with
# the weights above fixed at their best: a grid of both at once would cost 36 times as much
LEVEL_GRID = {
    "sector_weight": (0.0, 0.25, 0.5, 1.0),
    "subsector_weight": (0.0, 0.25, 0.5),
    "group_weight": (0.0, 0.25, 0.5),
}


def tune_blend(
    parts: Mapping[str, object],
    truth: Mapping[str, Sequence[Sequence[str]]],
    candidates: Sequence[str] | np.ndarray,
    start: MemoryConfig = MemoryConfig(),
    grid: Mapping[str, Sequence[float]] = GRID,
    level_grid: Mapping[str, Sequence[float]] = LEVEL_GRID,
) -> TunedBlend:
    """Grid-search ``grid`` (values per ``MemoryConfig`` weight) for the best mean hit@1 over
    the sets (``parts[name]`` are that set's ``Classifier.score_parts``, ``truth[name]`` its
    true codes per text), then, when every set's parts carry level priors, ``level_grid`` with
    those weights fixed. Ties go to the earlier grid point (smaller weights); the other
    fields, temperatures included, stay those of ``start``."""
    if not parts:
        raise ValueError("tune_blend needs at least one validation set")

    def evaluate(config: MemoryConfig) -> dict[str, float]:
        return {
            name: realtext_metrics(p.mix(config), candidates, truth[name], "")["hit1"]
            for name, p in parts.items()
        }

    untuned = float(np.mean(list(evaluate(start).values())))
    best = _search(evaluate, start, grid, untuned)
    if level_grid and all(p.levels is not None for p in parts.values()):
        best = _search(evaluate, best.config, level_grid, untuned)
    return best


def _search(
    evaluate: Callable[[MemoryConfig], dict[str, float]],
    start: MemoryConfig,
    grid: Mapping[str, Sequence[float]],
    untuned: float,
) -> TunedBlend:
    """The best point of ``grid`` over ``start`` (the first of equal scores)."""
    best: TunedBlend | None = None
    for values in itertools.product(*grid.values()):
        weights = {**dataclasses.asdict(start), **dict(zip(grid, values, strict=True))}
        if weights["weight"] + weights["lexical_weight"] > 1.0:
            continue  # not a valid MemoryConfig
        config = MemoryConfig(**weights)
        per_set = evaluate(config)
        score = float(np.mean(list(per_set.values())))
        if best is None or score > best.score + 1e-12:
            best = TunedBlend(config, score, per_set, untuned)
    return best
