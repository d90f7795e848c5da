"""Classify free-text business descriptions into six-digit NAICS codes with a trained stage::

    clf = Classifier.from_checkpoint(served_stage("storage/artifacts", "2022"))
    clf.predict(["organic dairy farm"], top_k=3)[0][0]  # Prediction(code='112120', ...)
    clf.code_embeddings()  # polars frame: code, level, title, coordinates, radius, ...

A stage folder holds everything (``naics_ml.stage_folder``; loading: ``naics_ml.inference.
loading``): the checkpoint, the code table, the remembered entries and their saved points
(``points.pt``: loading takes seconds; without it, embedding the 2,125 codes and 20,402
remembered texts of 2022 takes over a minute on a 2-core CPU). ``predict`` then takes 0.1 s
for a few texts.

Scores: ``score`` is the probability of the code over *all* six-digit codes: the model's query
softmax blended with the score parts (``naics_ml.inference.parts``) by the weights the stage
chose on validation data (``blend.json``; the blend: ``naics_ml.inference.blend``).
``distance`` is the Lorentz geodesic distance to the code. Results are sorted by score, best
first (ties to the nearer code).

Device: the model and every point live on one device (``device="auto"``: CUDA, else Apple MPS,
else the CPU); the float64 scoring runs there too, except on MPS, which has no float64 (its
points live on the CPU: ``naics_ml.model.lorentz.float64_device``). What the methods return is
on the CPU.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from naics_ml.data.codes import six_digit_mask
from naics_ml.inference.blend import ScoreParts
from naics_ml.inference.calibration import Calibration, calibrate
from naics_ml.inference.entry_memory import MemoryConfig, candidate_positions
from naics_ml.inference.evidence import (
    EVIDENCE_KINDS,
    Evidence,
    ExclusionIndex,
    ExclusionWarning,
    nearest_rows,
)
from naics_ml.inference.fallback import Fallback, HierarchyIndex
from naics_ml.inference.level_heads import LevelHeads, fit_level_heads
from naics_ml.inference.lexical_memory import LexicalIndex
from naics_ml.inference.parts import BaseVote, EntryPoints, EntryWords
from naics_ml.inference.prediction import Prediction, ranked_predictions
from naics_ml.inference.stage_points import StagePoints, save_stage_points
from naics_ml.model.channels import channel_fingerprint, code_channel_texts
from naics_ml.model.lorentz import float64_device
from naics_ml.model.network import NaicsModel

__all__ = ["Classifier", "Prediction", "ScoreParts"]

PREDICT_CHUNK = 256  # texts classified together by predict
# Query rows scored at once: each (rows x 20k entries) float64 buffer of the scoring then stays
# under 32 MB, the largest block glibc's malloc keeps for reuse; larger ones are mapped afresh
# and faulted in page by page at every batch, which made 256 rows a third slower.
SCORE_ROWS = 128


class Classifier:
    """Nearest six-digit codes for free text, plus the table of all code embeddings."""

    def __init__(
        self,
        model: NaicsModel,
        codes: pl.DataFrame,
        temperature: float = 0.1,
        memory: pl.DataFrame | None = None,
        memory_config: MemoryConfig | None = None,
        points: StagePoints | None = None,
        calibration: Calibration | None = None,
        level_heads: LevelHeads | None = None,
    ) -> None:
        """``model`` with trained weights; codes (and the ``memory`` entries: ``text``,
        ``code``) are embedded here, once, unless ``points`` already holds them (the model is
        prepared only when it is not already prepared for exactly these code texts);
        ``level_heads`` reweight the ranking by level (``naics_ml.inference.level_heads``)."""
        self.model = model.eval()
        self.points_device = float64_device(model.device)  # see the module doc
        self.codes = codes.sort("index")
        self.temperature = float(temperature)
        self.manifold = model.manifold
        self._points = self._code_points(points)
        self.manifold.check(self._points)
        six = six_digit_mask(self.codes)
        if not six.any():
            raise ValueError("the code table has no six-digit codes")
        self._six_index = torch.as_tensor(np.flatnonzero(six), device=self.points_device)
        self._six_lifted = self.manifold.lifted(self._points[self._six_index])
        self._six_codes = self.codes["code"].to_numpy()[six]
        self.titles = dict(zip(self.codes["code"], self.codes["title"], strict=True))
        self.memory_config = memory_config or MemoryConfig()
        self.calibration = calibration  # None: confidence is the raw probability
        self.level_heads = level_heads
        self._hierarchy = HierarchyIndex.build(self._six_codes.tolist())
        self._exclusions: ExclusionIndex | None = None  # built on the first warning asked for
        self._saved_exclusions = None if points is None else points.exclusions
        self._init_memory(memory, points)
        self.base_vote: BaseVote | None = None  # the frozen base model's vote
        if self.memory_config.base_weight > 0:
            self._init_base_part(memory, None if points is None else points.base)

    def with_serving(
        self, memory_config: MemoryConfig, calibration: Calibration | None
    ) -> Classifier:
        """This classifier with another blend and calibration (what a stage's evaluation
        chose): a shallow copy sharing its points and memories; ``self`` is unchanged."""
        served = copy.copy(self)
        served.memory_config, served.calibration = memory_config, calibration
        temperatures = {  # each part holds its own
            "entry_points": memory_config.temperature or self.temperature,
            "entry_words": memory_config.lexical_temperature,
            "base_vote": memory_config.base_temperature,
        }
        for name, temperature in temperatures.items():
            if getattr(served, name) is not None:
                setattr(served, name, replace(getattr(served, name), temperature=temperature))
        return served

    def _code_points(self, points: StagePoints | None) -> torch.Tensor:
        """Every code's point: the saved ones, or embedded now (preparing the model if it is
        not prepared for exactly these code texts)."""
        if points is None:
            texts = code_channel_texts(self.codes)
            if self.model.code_fingerprint != channel_fingerprint(texts):
                self.model.prepare(texts)
            with torch.no_grad():
                return self.model.encode_all_codes().to(self.points_device)
        expected = (self.codes.height, self.model.config.embedding_dim + 1)
        if tuple(points.codes.shape) != expected:
            raise ValueError(
                f"saved code points have shape {tuple(points.codes.shape)}, "
                f"the model and code table need {expected}"
            )
        return points.codes.to(self.points_device)

    def _init_memory(self, memory: pl.DataFrame | None, points: StagePoints | None) -> None:
        """The entry memory as points and as words; the index entries that can be evidence."""
        config = self.memory_config
        self._memory = memory if memory is not None and memory.height else None
        self.entry_points: EntryPoints | None = None
        self.entry_words: EntryWords | None = None
        self._evidence_rows: dict[int, np.ndarray] = {}
        if self._memory is None or not config.active:
            return
        column = candidate_positions(memory["code"].to_numpy(), self._six_codes)
        column_t = torch.as_tensor(column, device=self.points_device)
        if config.weight > 0:
            saved = None if points is None else points.memory
            if saved is not None and len(saved) == memory.height:
                entry_points = saved.to(self.points_device)
            else:
                with torch.no_grad():
                    entry_points = self.embed(memory["text"].to_list()).to(self.points_device)
            temperature = config.temperature or self.temperature
            self.entry_points = EntryPoints.build(
                entry_points, column_t, self.manifold, temperature
            )
        if config.lexical_weight > 0:
            index = LexicalIndex(memory["text"].to_list())
            self.entry_words = EntryWords(index, column_t, config.lexical_temperature)
        kinds = memory["kind"] if "kind" in memory.columns else None
        usable = np.ones(memory.height, dtype=bool)
        if kinds is not None:
            usable = kinds.is_in(list(EVIDENCE_KINDS)).to_numpy()
        for col in np.unique(column[usable & (column >= 0)]):
            self._evidence_rows[int(col)] = np.flatnonzero(usable & (column == col))

    def _init_base_part(self, memory: pl.DataFrame | None, saved: torch.Tensor | None) -> None:
        """The frozen base model's vote over each six-digit code's title and description and
        every remembered entry (``naics_ml.inference.parts.BaseVote``)."""

        def encode(texts: Sequence[str]) -> torch.Tensor:
            return self.model.encode_frozen(texts).to(self.points_device)

        saved = None if saved is None else saved.to(self.points_device)
        temperature = self.memory_config.base_temperature
        self.base_vote = BaseVote.build(
            self.codes, memory, self._six_codes, encode, saved, temperature
        )

    def fit_level_heads(self, cache: Path | None = None) -> LevelHeads:
        """Fit the level heads on the base part's texts (the six-digit code texts and every
        remembered training text, as frozen vectors) and rank with them from now on;
        ``cache``: see ``naics_ml.inference.level_heads.fit_level_heads``."""
        if self.base_vote is None:
            self._init_base_part(self._memory, None)
        vote = self.base_vote
        self.level_heads = fit_level_heads(vote.vectors_t.T, vote.column, self._six_codes, cache)
        return self.level_heads

    @property
    def six_digit_codes(self) -> np.ndarray:
        """The candidates: six-digit codes, in the column order of :meth:`scores`."""
        return self._six_codes

    @property
    def memory_size(self) -> int:
        """Number of remembered entries (0 = plain embedding classifier)."""
        active = self._memory is not None and self.memory_config.active
        return self._memory.height if active else 0

    @classmethod
    def from_checkpoint(cls, path: Path | str, **options: Any) -> Classifier:
        """Rebuild the model of a stage folder (or its checkpoint file) and its points;
        ``options`` are the fields of :class:`naics_ml.inference.loading.LoadOptions`
        (base model, memory, blend, precision, device, ...)."""
        from naics_ml.inference.loading import LoadOptions, load_classifier

        return load_classifier(cls, path, LoadOptions(**options))

    def save_points(self, path: Path | str) -> Path:
        """Save the embedded codes and memory entries as the stage's ``points.pt``, for a
        Classifier built from that stage's own files (as the stage assets do)."""
        points = StagePoints(
            codes=self._points,
            memory=None if self.entry_points is None else self.entry_points.points,
            base=None if self.base_vote is None else self.base_vote.vectors_t.T.contiguous(),
            exclusions=torch.as_tensor(self.exclusions.vectors()),
        )
        return save_stage_points(path, points)

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Hyperboloid points (n, D+1) of free texts, on the CPU."""
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not one string")
        return self.model.encode_texts(list(texts)).cpu()

    def scores(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(distance, probability) arrays (n, m) of each text against the six-digit codes
        (``six_digit_codes`` order); ``probability`` includes the memory when there is one."""
        points = self.embed(texts)  # refuses a single string before list() splits it up
        return self.score_points(points, list(texts))

    def score_points(
        self,
        queries: torch.Tensor,
        texts: Sequence[str] | None = None,
        batch_size: int = SCORE_ROWS,
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`scores` for hyperboloid points (n, D+1) already embedded (e.g. by ``embed``);
        ``texts`` are the words behind them, needed by the lexical and base-model parts."""
        parts = self.score_parts(queries, texts, batch_size)
        return parts.distance, parts.mix(self.memory_config)

    def score_parts(
        self,
        queries: torch.Tensor,
        texts: Sequence[str] | None = None,
        batch_size: int = SCORE_ROWS,
        keep_entry_distance: bool = False,
        base_query: torch.Tensor | None = None,
    ) -> ScoreParts:
        """Each distribution of the blend separately, so that mixing them again with other
        weights costs no encoding (``naics_ml.evaluation.blend_tuning`` chooses weights so).
        ``keep_entry_distance`` also returns the texts' distances to the remembered entries
        (the evidence); (n, entries) floats, so only for small n. ``base_query``: the texts'
        frozen base vectors when already encoded (``NaicsModel.encode_texts_and_frozen``)."""
        frozen = self.base_vote is not None or self.level_heads is not None
        needs_texts = self.entry_words is not None or frozen
        if needs_texts and (texts is None or len(texts) != len(queries)):
            raise ValueError("the lexical and base parts need the texts of the query points")
        batches = [
            self._batch_parts(
                queries[start : start + batch_size],
                texts,
                start,
                keep_entry_distance,
                None if base_query is None else base_query[start : start + batch_size],
            )
            for start in range(0, len(queries), batch_size)  # bounds the (rows x entries) matrix
        ]
        if not batches:
            empty = np.zeros((0, len(self._six_index)))
            return ScoreParts(distance=empty, code=empty)
        return ScoreParts.concatenate(batches)

    def _batch_parts(
        self,
        rows: torch.Tensor,
        texts: Sequence[str] | None,
        start: int,
        keep_entries: bool,
        base_query: torch.Tensor | None,
    ) -> ScoreParts:
        """The module doc's parts for one batch of query points (``rows``, from ``start``)."""
        rows = rows.to(self.points_device)
        distance = self._six_lifted.distance_from(rows).to(rows.dtype).double()
        num_codes = distance.shape[1]
        batch_texts = None if texts is None else list(texts[start : start + len(rows)])
        parts: dict[str, np.ndarray | None] = {}
        if self.entry_points is not None:
            parts["points"], entry_distance = self.entry_points.scores(rows, num_codes)
            if keep_entries and self._evidence_rows:
                parts["entry_distance"] = entry_distance.cpu().numpy()
        if self.entry_words is not None:
            parts["lexical"], parts["matched"] = self.entry_words.scores(batch_texts, num_codes)
        if self.base_vote is not None or self.level_heads is not None:
            query = self.model.encode_frozen(batch_texts) if base_query is None else base_query
            query = query.to(self.points_device)
            parts["base_query"] = query.cpu().double().numpy()
        if self.level_heads is not None:
            parts["levels"] = self.level_heads.log_priors(query)
        if self.base_vote is not None:
            parts["base"] = self.base_vote.scores(query, num_codes)
        code = torch.softmax(-distance / self.temperature, dim=1).cpu().numpy()
        return ScoreParts(distance=distance.cpu().numpy(), code=code, **parts)

    def predict(
        self, texts: Sequence[str], top_k: int = 5, min_confidence: float = 0.5
    ) -> list[list[Prediction]]:
        """Per text, the ``top_k`` most probable six-digit codes, best first, each with its
        calibrated confidence, the text's fallback code (see :class:`Prediction`), the code's
        supporting entries and, for the top code, the exclusions the text resembles."""
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not one string")
        texts = list(texts)
        out: list[list[Prediction]] = []
        for start in range(0, len(texts), PREDICT_CHUNK):  # bounds the (rows x entries) matrix
            out += ranked_predictions(
                self, texts[start : start + PREDICT_CHUNK], top_k, min_confidence
            )
        return out

    def fallback(self, confidence: np.ndarray, min_confidence: float = 0.5) -> Fallback:
        """Per text, the deepest code whose summed ``confidence`` reaches ``min_confidence``."""
        return self._hierarchy.fallback(confidence, min_confidence)

    def confidence(self, probs: np.ndarray) -> np.ndarray:
        """``predict``'s probabilities, calibrated by the stage's temperature when it has one."""
        if self.calibration is None:
            return probs
        return calibrate(probs, self.calibration.temperature)

    def exclusion_warnings(
        self, columns: np.ndarray, texts: Sequence[str], base_query: np.ndarray | None = None
    ) -> list[list[ExclusionWarning]]:
        """Per text, the warnings for the candidate in ``columns`` (its top code)."""
        if base_query is None:
            base_query = self.frozen_vectors(texts)
        threshold = (self.calibration or Calibration()).exclusion_threshold
        return [
            self.exclusions.warnings(str(self._six_codes[c]), vector, threshold)
            for c, vector in zip(columns, base_query, strict=True)
        ]

    @property
    def exclusions(self) -> ExclusionIndex:
        """The code table's exclusion lines (vectors computed per code on first use)."""
        if self._exclusions is None:
            saved = self._saved_exclusions
            vectors = None if saved is None else saved.double().numpy()
            self._exclusions = ExclusionIndex(self.codes, self.frozen_vectors, vectors)
        return self._exclusions

    def frozen_vectors(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors (n, H) of the texts under the frozen base model (no adapter)."""
        with torch.no_grad():
            return self.model.encode_frozen(texts).cpu().double().numpy()

    def evidence(self, column: int, entry_distance: np.ndarray | None) -> tuple[Evidence, ...]:
        """Up to three index entries of the candidate in ``column``, nearest to the text."""
        rows = self._evidence_rows.get(column)
        if entry_distance is None or rows is None:
            return ()
        texts, codes = self._memory["text"], self._memory["code"]
        return tuple(
            Evidence(texts[int(r)], codes[int(r)], float(entry_distance[r]))
            for r in nearest_rows(entry_distance, rows, 3)
        )

    def code_embeddings(self) -> pl.DataFrame:
        """All codes: index, code, level, sector, title, ``coordinates`` (list[float], the
        D+1 hyperboloid coordinates, time-like first), ``poincare`` (list[float], the same
        point in the Poincare ball of radius sqrt(curvature), D coordinates) and ``radius``
        (distance from the origin, the depth signal)."""
        points = self._points.cpu().double()
        ball = self.manifold.to_poincare(points)
        return self.codes.select("index", "code", "level", "sector", "title").with_columns(
            pl.Series("coordinates", points.numpy().tolist(), dtype=pl.List(pl.Float64)),
            pl.Series("poincare", ball.numpy().tolist(), dtype=pl.List(pl.Float64)),
            pl.Series("radius", self.manifold.radius(points).numpy(), dtype=pl.Float64),
        )
