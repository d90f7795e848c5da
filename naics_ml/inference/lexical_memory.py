"""Word-overlap lookup of a query among the remembered index entries (the lexical half of a
hybrid retriever).

The embedding generalises across wordings, but it blurs rare, decisive words: it sent the
validation entry "Land clearing" to Land Subdivision, while the remembered entries that share
its words belong to Site Preparation Contractors, where it goes. TF-IDF over the entries (word
1-2-grams, sublinear tf, fitted on the entries themselves) finds those; the Classifier blends
its softmax over entries into the probability (see ``naics_ml.inference.entry_memory``). A
query that shares no word with any entry gets no lexical vote at all, rather than a uniform one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

__all__ = ["LexicalIndex"]


class LexicalIndex:
    """TF-IDF vectors of a fixed list of entry texts, and cosine similarities to new texts."""

    def __init__(self, entry_texts: Sequence[str]) -> None:
        if isinstance(entry_texts, str) or len(entry_texts) == 0:
            raise ValueError("a lexical index needs a non-empty sequence of entry texts")
        self._vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
        try:
            entries = self._vectorizer.fit_transform(list(entry_texts))
        except ValueError as err:  # every entry empty or made of stop-words only
            raise ValueError(f"the memory entries have no usable words: {err}") from err
        self._entries_t = entries.T.tocsr()  # (terms, entries): spares a conversion per call

    def __len__(self) -> int:
        return self._entries_t.shape[1]

    def similarity(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(cosine, matched)``: (len(texts), n) cosine similarity to each entry in [0, 1],
        and (len(texts),) whether the text shares any indexed word or bigram at all."""
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not one string")
        queries = self._vectorizer.transform(list(texts))  # rows are unit length or zero
        matched = np.asarray(queries.getnnz(axis=1) > 0)
        return np.asarray((queries @ self._entries_t).toarray()), matched
