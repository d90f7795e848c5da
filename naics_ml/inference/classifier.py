"""Classify free-text business descriptions into six-digit NAICS codes with a trained stage::

    clf = Classifier.from_checkpoint(served_stage("storage/artifacts", "2022"))
    clf.predict(["organic dairy farm"], top_k=3)[0][0]  # Prediction(code='112120', ...)
    clf.code_embeddings()  # polars frame: code, level, title, coordinates, radius, ...

(``served_stage``: ``naics_ml.inference.serving``, the stage validation chose.) Loading reads the
points of every code and remembered entry that the stage asset saved
(``points.pt``, a few seconds); without them, or when the stage's files changed since, it embeds
them afresh (over a minute for the 2,125 codes and 20,402 remembered texts of 2022 with MiniLM
on a 2-core CPU).
``predict`` is then fast (0.1 s for a few texts).

A stage folder holds everything needed: ``checkpoint.pt`` (model config + trainable weights),
``codes.parquet`` (the code table it was trained on) and, from the stage assets,
``memory.parquet`` (the labelled index entries it trained on) and ``points.pt``; the frozen base
model is loaded from the name or path in the model config (override with ``base_model=``).

Scores: ``score`` is the probability of the code over *all* six-digit codes. Without a memory it
is the model's query softmax ``softmax(-distance / temperature)`` with the stage's training
temperature (the distribution the query loss trains); with one it is that softmax blended with
the memory's, which reads the remembered entries both as points and as words
(``naics_ml.inference.entry_memory``), and with the frozen base model's own vote (its cosine
softmax over the code texts and remembered entries: what it knew before training). A stage's
``blend.json`` holds the weights it chose on validation data
(``naics_ml.evaluation.blend_tuning``). ``distance`` is the Lorentz geodesic distance to the
code. Results are sorted by score, best first (by distance, nearest first, when the embedding is
the only part).

Device: the model and every point, remembered entry and base vector live on one device
(``from_checkpoint(device="auto")``: CUDA, else Apple MPS, else the CPU; ``naics_ml.model.device``);
the float64 scoring runs there too, except on MPS, which has no float64: its points live on the
CPU (``naics_ml.model.lorentz.float64_device``). What the methods return (tensors of ``embed``,
numpy arrays, frames) is on the CPU.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from naics_ml.data.codes import six_digit_mask
from naics_ml.inference.blend import ScoreParts
from naics_ml.inference.calibration import Calibration, calibrate, load_calibration
from naics_ml.inference.entry_memory import (
    MemoryConfig,
    candidate_positions,
    load_stage_memory,
    memory_probabilities,
)
from naics_ml.inference.evidence import (
    EVIDENCE_KINDS,
    Evidence,
    ExclusionIndex,
    ExclusionWarning,
    nearest_rows,
)
from naics_ml.inference.fallback import Fallback, HierarchyIndex
from naics_ml.inference.level_heads import LevelHeads, fit_level_heads, load_level_heads
from naics_ml.inference.lexical_memory import LexicalIndex
from naics_ml.inference.serving import load_blend
from naics_ml.inference.stage_points import StagePoints, load_stage_points, save_stage_points
from naics_ml.model.channels import channel_fingerprint, code_channel_texts
from naics_ml.model.device import resolve_device
from naics_ml.model.lorentz import LiftedPoints, float64_device
from naics_ml.model.network import ModelConfig, NaicsModel
from naics_ml.model.precision import resolve_precision
from naics_ml.training.checkpoint import load_checkpoint, load_stage_codes, resolve_checkpoint

__all__ = ["Classifier", "Prediction", "ScoreParts"]

PREDICT_CHUNK = 256  # texts classified together by predict
# Query rows scored at once: each (rows x 20k entries) float64 buffer of the scoring then stays
# under 32 MB, the largest block glibc's malloc keeps for reuse; larger ones are mapped afresh
# and faulted in page by page at every batch, which made 256 rows a third slower.
SCORE_ROWS = 128


@dataclass(frozen=True)
class Prediction:
    """One ranked code for a text. ``score`` is the blended probability ``predict`` ranks by;
    ``confidence`` the same calibrated on validation data (a 0.7 is right about 70 % of the
    time); the fallback is the deepest code (6 to 2 digits) whose summed confidence reaches
    ``min_confidence`` (the same for every rank of a text; None when no level does)."""

    code: str
    title: str
    score: float  # probability of the code over all six-digit codes (see the module doc)
    distance: float  # Lorentz geodesic distance between the text and the code
    confidence: float = float("nan")
    fallback_code: str | None = None
    fallback_title: str | None = None
    fallback_confidence: float = float("nan")
    evidence: tuple[Evidence, ...] = ()  # the code's nearest labelled index entries
    warnings: tuple[ExclusionWarning, ...] = ()  # exclusions of the code the text resembles


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
        ``code``) are embedded here, once, unless ``points`` already holds them;
        ``level_heads`` reweight the ranking by level (``naics_ml.inference.level_heads``).

        The frozen prefix is cached (``model.prepare``) only when the codes must be embedded
        and the model is not already prepared for exactly these code texts (e.g. the model a
        stage has just trained).
        """
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
        self._six_titles = self.codes["title"].to_numpy()[six]
        self._titles = dict(zip(self.codes["code"], self.codes["title"], strict=True))
        self.memory_config = memory_config or MemoryConfig()
        self.calibration = calibration  # None: confidence is the raw probability
        self.level_heads = level_heads
        self._hierarchy = HierarchyIndex.build(self._six_codes.tolist())
        self._exclusions: ExclusionIndex | None = None  # built on the first warning asked for
        self._saved_exclusions = None if points is None else points.exclusions
        self._init_memory(memory, points)
        self._base_vectors_t: torch.Tensor | None = None  # (H, texts) unit vectors, see below
        self._base_column: torch.Tensor | None = None
        if self.memory_config.base_weight > 0:
            self._init_base_part(memory, None if points is None else points.base)

    def with_serving(
        self, memory_config: MemoryConfig, calibration: Calibration | None
    ) -> Classifier:
        """This classifier with another blend and calibration (what a stage's evaluation
        chose): a shallow copy sharing its points and memories; ``self`` is unchanged."""
        served = copy.copy(self)
        served.memory_config, served.calibration = memory_config, calibration
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
        self._memory = memory if memory is not None and memory.height else None
        self._memory_size = 0
        self._memory_column: torch.Tensor | None = None
        self._memory_points: torch.Tensor | None = None
        self._memory_lifted: LiftedPoints | None = None
        self._lexical: LexicalIndex | None = None
        self._evidence_rows: dict[int, np.ndarray] = {}
        if self._memory is None or not self.memory_config.active:
            return
        column = candidate_positions(memory["code"].to_numpy(), self._six_codes)
        self._memory_column = torch.as_tensor(column, device=self.points_device)
        self._memory_size = memory.height
        if self.memory_config.weight > 0:
            saved = None if points is None else points.memory
            if saved is not None and len(saved) == memory.height:
                self._memory_points = saved.to(self.points_device)
            else:
                with torch.no_grad():
                    self._memory_points = self.embed(memory["text"].to_list()).to(
                        self.points_device
                    )
            self.manifold.check(self._memory_points)
            self._memory_lifted = self.manifold.lifted(self._memory_points)
        if self.memory_config.lexical_weight > 0:
            self._lexical = LexicalIndex(memory["text"].to_list())
        kinds = memory["kind"] if "kind" in memory.columns else None
        usable = np.ones(memory.height, dtype=bool)
        if kinds is not None:
            usable = kinds.is_in(list(EVIDENCE_KINDS)).to_numpy()
        for col in np.unique(column[usable & (column >= 0)]):
            self._evidence_rows[int(col)] = np.flatnonzero(usable & (column == col))

    def _init_base_part(self, memory: pl.DataFrame | None, saved: torch.Tensor | None) -> None:
        """The frozen base model's texts: each six-digit code's title and description, then
        every remembered entry, as unit vectors with the column of their code."""
        from naics_ml.model.channels import code_texts

        texts = [
            t
            for t, six in zip(code_texts(self.codes), six_digit_mask(self.codes), strict=True)
            if six
        ]
        column = list(range(len(texts)))
        if memory is not None and memory.height:
            texts += memory["text"].to_list()
            column += candidate_positions(memory["code"].to_numpy(), self._six_codes).tolist()
        self._base_column = torch.as_tensor(column, dtype=torch.long, device=self.points_device)
        if saved is not None and len(saved) == len(texts):
            vectors = saved.to(self.points_device)
        else:
            vectors = self.model.encode_frozen(texts).to(self.points_device)
        # stored (H, texts): one text against the 21k vectors then takes half the time of a
        # product with the transposed view, which makes the BLAS stride across rows
        self._base_vectors_t = vectors.T.contiguous()

    def fit_level_heads(self, cache: Path | None = None) -> LevelHeads:
        """Fit the level heads on the base part's texts (the six-digit code texts and every
        remembered training text, as frozen vectors) and rank with them from now on;
        ``cache``: see ``naics_ml.inference.level_heads.fit_level_heads``."""
        if self._base_vectors_t is None:
            self._init_base_part(self._memory, None)
        self.level_heads = fit_level_heads(
            self._base_vectors_t.T, self._base_column, self._six_codes, cache
        )
        return self.level_heads

    @property
    def six_digit_codes(self) -> np.ndarray:
        """The candidates: six-digit codes, in the column order of :meth:`scores`."""
        return self._six_codes

    @property
    def memory_size(self) -> int:
        """Number of remembered entries (0 = plain embedding classifier)."""
        return self._memory_size

    @classmethod
    def from_checkpoint(
        cls,
        path: Path | str,
        *,
        base_model: str | None = None,
        base: Any = None,
        tokenizer: Any = None,
        allow_incomplete: bool = False,
        memory: bool = True,
        memory_config: MemoryConfig | None = None,
        reuse_points: bool = True,
        precision: str = "float32",
        device: str = "auto",
    ) -> Classifier:
        """Rebuild the model of a stage folder (or its checkpoint file) and its points.

        ``base_model`` overrides the config's base model name/path; ``base``/``tokenizer``
        objects are used as-is (tests). An unfinished stage is refused unless
        ``allow_incomplete``. ``memory=False`` ignores the stage's ``memory.parquet``. The
        stage's ``blend.json`` (``naics_ml.evaluation.blend_tuning``) gives the blend weights unless
        ``memory_config`` is passed. The stage's ``points.pt`` (``naics_ml.inference.stage_points``)
        spares embedding the codes and the memory again while it matches the stage's files;
        ``reuse_points=False`` embeds afresh. ``precision`` (``naics_ml.model.precision``):
        ``float32`` (the stage's own evaluation), ``bfloat16`` or ``auto`` for the texts to
        classify (the saved points stay as the stage computed them; with bfloat16 the frozen
        layers are then stored in it, ``ChannelEncoder.store_frozen_weights``). ``device``
        (``naics_ml.model.device``): where the model and the points live; ``auto`` is CUDA, else
        Apple MPS, else the CPU.
        """
        where = resolve_device(device)  # before any loading: a missing GPU fails at once
        file = resolve_checkpoint(path)
        state = load_checkpoint(file)
        if not state.get("complete", False) and not allow_incomplete:
            raise ValueError(
                f"{file} is an unfinished stage (step {state.get('step')}); "
                "pass allow_incomplete=True to use it anyway"
            )
        codes = load_stage_codes(file)
        config = ModelConfig.from_dict(state["model_config"])
        if base_model is not None:
            config = dataclasses.replace(config, base_model=base_model)
        model = NaicsModel(config, base=base, tokenizer=tokenizer)
        model.load_trainable_state_dict(state["model_state"])
        model.to(where)
        model.encoder.layer_dtype = resolve_precision(precision, where.type)
        temperature = float(state.get("train_config", {}).get("temperature", 0.1))
        entries = load_stage_memory(file) if memory else None
        memory_config = memory_config or load_blend(file)  # the weights the stage chose
        # the level heads only where the blend weighs them: otherwise they are work for nothing
        uses_levels = memory_config is not None and any(memory_config.level_weights)
        points = load_stage_points(file) if reuse_points else None
        classifier = cls(
            model,
            codes,
            temperature,
            memory=entries,
            memory_config=memory_config,
            points=points,
            calibration=load_calibration(file),
            level_heads=load_level_heads(file) if uses_levels else None,
        )
        if model.encoder.layer_dtype is not None:  # this model only classifies from now on
            model.encoder.store_frozen_weights(model.encoder.layer_dtype)
        return classifier

    def save_points(self, path: Path | str) -> Path:
        """Save the embedded codes and memory entries as the stage's ``points.pt``, for a
        Classifier built from that stage's own files (as the stage assets do)."""
        points = StagePoints(
            codes=self._points,
            memory=self._memory_points,
            base=None if self._base_vectors_t is None else self._base_vectors_t.T.contiguous(),
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
        frozen = self._base_vectors_t is not None or self.level_heads is not None
        needs_texts = self._lexical is not None or frozen
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
        config = self.memory_config
        rows = rows.to(self.points_device)
        distance = self._six_lifted.distance_from(rows).to(rows.dtype).double()
        num_codes = distance.shape[1]
        batch_texts = None if texts is None else list(texts[start : start + len(rows)])
        parts: dict[str, np.ndarray | None] = {}
        if self._memory_points is not None:
            entry_distance = self._memory_lifted.distance_from(rows).to(rows.dtype)
            if keep_entries and self._evidence_rows:
                parts["entry_distance"] = entry_distance.cpu().numpy()
            parts["points"] = (
                memory_probabilities(
                    entry_distance.double(),
                    self._memory_column,
                    num_codes,
                    config.temperature or self.temperature,
                )
                .cpu()
                .numpy()
            )
        if self._lexical is not None:
            cosine, hit = self._lexical.similarity(batch_texts)
            parts["lexical"] = (
                memory_probabilities(  # cosine distance 1 - cos: same softmax
                    torch.as_tensor(1.0 - cosine, device=self.points_device),
                    self._memory_column,
                    num_codes,
                    config.lexical_temperature,
                )
                .cpu()
                .numpy()
            )
            parts["matched"] = np.asarray(hit, dtype=bool)
        if self._base_vectors_t is not None or self.level_heads is not None:
            query = self.model.encode_frozen(batch_texts) if base_query is None else base_query
            query = query.to(self.points_device)
            parts["base_query"] = query.cpu().double().numpy()
        if self.level_heads is not None:
            parts["levels"] = self.level_heads.log_priors(query)
        if self._base_vectors_t is not None:
            parts["base"] = (
                memory_probabilities(
                    (1.0 - query @ self._base_vectors_t).double(),
                    self._base_column,
                    num_codes,
                    config.base_temperature,
                )
                .cpu()
                .numpy()
            )
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
            out += self._predict_chunk(texts[start : start + PREDICT_CHUNK], top_k, min_confidence)
        return out

    def _predict_chunk(
        self, texts: list[str], top_k: int, min_confidence: float
    ) -> list[list[Prediction]]:
        queries, frozen = self.model.encode_texts_and_frozen(texts)
        parts = self.score_parts(queries, texts, keep_entry_distance=True, base_query=frozen)
        distance, probs = parts.distance, parts.mix(self.memory_config)
        confidence = self.confidence(probs)
        fallback = self.fallback(confidence, min_confidence)
        k = min(top_k, distance.shape[1])
        # stable sort on (-probability, distance): ties in probability go to the nearer code
        order = np.lexsort((distance, -probs), axis=1)[:, :k]
        warnings = self.exclusion_warnings(order[:, 0], texts, frozen.cpu().double().numpy())
        out = []
        for row in range(len(order)):
            fb = fallback.codes[row]
            shared = {
                "fallback_code": fb,
                "fallback_title": None if fb is None else self._titles[fb],
                "fallback_confidence": float(fallback.mass[row]) if fb else float("nan"),
            }
            entry_distance = None if parts.entry_distance is None else parts.entry_distance[row]
            out.append(
                [
                    Prediction(
                        code=str(self._six_codes[i]),
                        title=str(self._six_titles[i]),
                        score=float(probs[row, i]),
                        distance=float(distance[row, i]),
                        confidence=float(confidence[row, i]),
                        evidence=self._evidence(int(i), entry_distance),
                        warnings=tuple(warnings[row]) if rank == 0 else (),
                        **shared,
                    )
                    for rank, i in enumerate(order[row])
                ]
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

    def _evidence(self, column: int, entry_distance: np.ndarray | None) -> tuple[Evidence, ...]:
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
