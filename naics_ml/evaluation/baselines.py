"""Reference points measured in the same run as the model: a frozen base encoder, TF-IDF, and
the frozen encoder reading the index entries too (the no-training peer).

The frozen base encoder and TF-IDF embed each code's ``title + ". " + description`` (title
only when there is no description) and each query's text, compare by cosine distance and go through
``naics_ml.evaluation.metrics.evaluate_distances``, so their numbers are directly comparable with
the model's. Cosine vectors have no natural "distance from the origin"; ``radius_order`` uses the
vector norm before normalisation (mean-pooled hidden state norm / raw TF-IDF norm), a weak but
well-defined stand-in that says whether depth is readable from the norm at all.

The no-training peer (``baseline_peer_*``) is the strongest thing the frozen base model does
alone: a text's score for a code is half its cosine with the code's title and description, half
its cosine with the code's nearest index entry of the training splits (never ``validation`` or
``test``). What training adds is measured against it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
import torch
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer

from naics_ml.evaluation.metrics import evaluate_distances, six_digit_codes, six_digit_mask
from naics_ml.model.base import DEFAULT_BASE_MODEL, load_base_model, load_tokenizer
from naics_ml.model.channels import code_texts

ZERO_SHOT_PREFIX = "baseline_zero_shot_"
TFIDF_PREFIX = "baseline_tfidf_"
PEER_PREFIX = "baseline_peer_"
PEER_ROWS = 256  # query rows scored at once against every training entry


def _unit_rows(x: np.ndarray | sparse.spmatrix) -> tuple[np.ndarray | sparse.spmatrix, np.ndarray]:
    """Rows scaled to unit length (zero rows stay zero) and the original row norms."""
    if sparse.issparse(x):
        x = sparse.csr_matrix(x, dtype=np.float64)
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1))).ravel()
        scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        return sparse.diags(scale) @ x, norms
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1)
    scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    return x * scale[:, None], norms


def _cosine_distance(a, b) -> np.ndarray:
    """1 - cosine similarity for unit rows (dense result; a zero row is at distance 1 from all)."""
    sim = a @ b.T
    sim = sim.toarray() if sparse.issparse(sim) else np.asarray(sim)
    return 1.0 - sim


def cosine_metrics(
    code_vectors: np.ndarray | sparse.spmatrix,
    query_vectors: np.ndarray | sparse.spmatrix,
    codes: pl.DataFrame,
    tree_distance: np.ndarray,
    query_true_codes: Sequence[str],
    prefix: str,
) -> dict[str, float]:
    """The full metric dict for vectors compared by cosine distance (the shared baseline path).

    ``code_vectors`` has one row per code in ``index`` order; radius = row norm before
    normalising.
    """
    code_unit, code_norms = _unit_rows(code_vectors)
    query_unit, _ = _unit_rows(query_vectors)
    six = np.flatnonzero(six_digit_mask(codes))
    return evaluate_distances(
        _cosine_distance(code_unit, code_unit),
        codes,
        tree_distance,
        _cosine_distance(query_unit, code_unit[six]),
        query_true_codes,
        radius=code_norms,
        prefix=prefix,
    )


@torch.inference_mode()
def mean_pooled_embeddings(
    texts: Sequence[str], model, tokenizer, batch_size: int = 64, max_length: int = 256
) -> np.ndarray:
    """Mask-aware mean of the last hidden state per text, (len(texts), hidden) float32.

    Each distinct text is encoded once (only-child codes often repeat their parent's text), in
    order of token length so that padding stays small on a CPU.
    """
    model.eval()
    device = next(model.parameters()).device
    hidden = model.config.hidden_size
    if len(texts) == 0:
        return np.zeros((0, hidden), dtype=np.float32)
    unique, inverse = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
    encoded = tokenizer(unique.tolist(), truncation=True, max_length=max_length)
    lengths = np.array([len(ids) for ids in encoded["input_ids"]])
    order = np.argsort(lengths, kind="stable")
    out = np.empty((len(unique), hidden), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        features = [{k: encoded[k][i] for k in encoded} for i in idx]
        batch = tokenizer.pad(features, return_tensors="pt")
        batch = {k: v.to(device) for k, v in batch.items()}
        states = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
        out[idx] = pooled.float().cpu().numpy()
    return out[inverse.ravel()]


def zero_shot_metrics(
    codes: pl.DataFrame,
    tree_distance: np.ndarray,
    queries: Sequence[str],
    query_true_codes: Sequence[str],
    base_model: str = DEFAULT_BASE_MODEL,
    batch_size: int = 64,
    *,
    model=None,
    tokenizer=None,
) -> dict[str, float]:
    """Frozen base encoder, mean-pooled, cosine: every metric with prefix ``baseline_zero_shot_``.

    ``model``/``tokenizer`` objects, when given, are used instead of loading ``base_model``
    (tests pass a tiny random BERT).
    """
    model = model if model is not None else load_base_model(base_model)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(base_model)
    code_vectors = mean_pooled_embeddings(code_texts(codes), model, tokenizer, batch_size)
    query_vectors = mean_pooled_embeddings(list(queries), model, tokenizer, batch_size)
    return cosine_metrics(
        code_vectors, query_vectors, codes, tree_distance, query_true_codes, ZERO_SHOT_PREFIX
    )


def tfidf_metrics(
    codes: pl.DataFrame,
    tree_distance: np.ndarray,
    queries: Sequence[str],
    query_true_codes: Sequence[str],
) -> dict[str, float]:
    """TF-IDF (word 1-2-grams, sublinear tf) fitted on the code texts, cosine: prefix
    ``baseline_tfidf_``. Normalisation is done by the shared cosine path so that the raw norm can
    serve as radius."""
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, norm=None)
    code_vectors = vectorizer.fit_transform(code_texts(codes))
    query_vectors = vectorizer.transform(list(queries))
    return cosine_metrics(
        code_vectors, query_vectors, codes, tree_distance, query_true_codes, TFIDF_PREFIX
    )


def realtext_baseline_metrics(
    codes: pl.DataFrame,
    realtext: dict[str, pl.DataFrame],
    base_model: str = DEFAULT_BASE_MODEL,
    *,
    model=None,
    tokenizer=None,
) -> dict[str, float]:
    """Both baselines on labelled real texts (``naics_ml.data.realtext``): per set prefix ``p``,
    ``baseline_zero_shot_<p>*`` and ``baseline_tfidf_<p>*``, same code text as above."""
    from naics_ml.evaluation.realtext_metrics import realtext_metrics

    if not realtext:
        return {}
    mask = six_digit_mask(codes)
    candidates = six_digit_codes(codes)
    texts = [t for t, six in zip(code_texts(codes), mask, strict=True) if six]
    model = model if model is not None else load_base_model(base_model)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(base_model)
    dense_codes = unit_vectors(texts, model, tokenizer)
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    sparse_codes = vectorizer.fit_transform(texts)
    metrics: dict[str, float] = {}
    for prefix, frame in realtext.items():
        queries, truth = frame["text"].to_list(), frame["codes"].to_list()
        dense = unit_vectors(queries, model, tokenizer)
        lexical = (vectorizer.transform(queries) @ sparse_codes.T).toarray()
        metrics |= realtext_metrics(
            dense @ dense_codes.T, candidates, truth, ZERO_SHOT_PREFIX + prefix
        )
        metrics |= realtext_metrics(lexical, candidates, truth, TFIDF_PREFIX + prefix)
    return metrics


def unit_vectors(texts: Sequence[str], model, tokenizer) -> np.ndarray:
    """Mean-pooled frozen vectors of ``texts``, scaled to unit length (cosine by product)."""
    return _unit_rows(mean_pooled_embeddings(list(texts), model, tokenizer))[0]


def peer_entries(entries: pl.DataFrame) -> pl.DataFrame:
    """The index entries the no-training peer may read: ``text`` and ``code`` of every entry
    outside the held-out splits."""
    from naics_ml.data.index_split import HELD_OUT_SPLITS

    return entries.filter(~pl.col("split").is_in(list(HELD_OUT_SPLITS))).select("text", "code")


def peer_scores(
    query_unit: np.ndarray, code_unit: np.ndarray, entry_unit: np.ndarray, entry_column: np.ndarray
) -> np.ndarray:
    """(q, m): half the cosine with each code's text (``code_unit``, m rows), half the cosine
    with its nearest entry (``entry_unit`` rows, of candidate ``entry_column``); a code
    without entries scores its text's cosine alone."""
    order = np.argsort(entry_column, kind="stable")
    columns, starts = np.unique(entry_column[order], return_index=True)
    out = np.empty((len(query_unit), len(code_unit)))
    for start in range(0, len(query_unit), PEER_ROWS):
        rows = query_unit[start : start + PEER_ROWS]
        code_sim = rows @ code_unit.T
        nearest = code_sim.copy()
        if len(order):
            nearest[:, columns] = np.maximum.reduceat(rows @ entry_unit[order].T, starts, axis=1)
        out[start : start + len(rows)] = 0.5 * code_sim + 0.5 * nearest
    return out


def peer_metrics(
    codes: pl.DataFrame,
    entries: pl.DataFrame,
    realtext: dict[str, pl.DataFrame],
    base_model: str = DEFAULT_BASE_MODEL,
    *,
    model=None,
    tokenizer=None,
) -> dict[str, float]:
    """The no-training peer of the module doc: ``baseline_peer_test_*`` on the index ``test``
    split, and per real-text set prefix ``p`` ``baseline_peer_<p>*`` with hit@1 per sector."""
    from naics_ml.evaluation.metrics import retrieval_metrics
    from naics_ml.evaluation.realtext_metrics import realtext_metrics, sector_metrics
    from naics_ml.inference.entry_memory import candidate_positions

    model = model if model is not None else load_base_model(base_model)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(base_model)

    def unit(texts: Sequence[str]) -> np.ndarray:
        return unit_vectors(texts, model, tokenizer)

    candidates = six_digit_codes(codes)
    code_text = [t for t, six in zip(code_texts(codes), six_digit_mask(codes), strict=True) if six]
    known = peer_entries(entries).filter(pl.col("code").is_in(candidates.tolist()))
    columns = candidate_positions(known["code"].to_numpy(), candidates)
    vectors = (unit(code_text), unit(known["text"].to_list()), columns)
    test = entries.filter(pl.col("split") == "test")
    metrics: dict[str, float] = {}
    if test.height:
        score = peer_scores(unit(test["text"].to_list()), *vectors)
        metrics |= retrieval_metrics(
            -score, candidates, test["code"].to_numpy(), PEER_PREFIX + "test_"
        )
    for prefix, frame in realtext.items():
        score = peer_scores(unit(frame["text"].to_list()), *vectors)
        truth = frame["codes"].to_list()
        metrics |= realtext_metrics(score, candidates, truth, PEER_PREFIX + prefix)
        metrics |= sector_metrics(score, candidates, truth, PEER_PREFIX + prefix)
    return metrics
