"""What a cross-encoder reranker over ``predict``'s top candidates buys, and what it costs.

    DAGSTER_HOME=$PWD NAICS_REALTEXT_DIR=$PWD/../shared/realtext \\
        python benchmarks/reranker.py [--steps 400] [--stage PATH]

A cross-encoder started from the base model's weights (its top ``--layers`` trained, a linear
head on the mean of the pair's tokens) reads each (text, candidate code) pair together. It is
trained listwise (the true code against ``--negatives`` of ``predict``'s own top candidates) on
the Maryland training rows and index ``train`` entries, never on a held-out index text (as in
the stages) or Boston.
The reranked score of a top-``--top`` candidate is ``log p + beta * cross-encoder score``;
``beta`` (0 = ``predict`` as served) is chosen on the validation sets (mean hit@1 of the index
``validation`` split and Maryland validation, the stages' selection score); Boston is reported
for information only. Prints JSON: the grid, the chosen beta, training and scoring time, and
the pairs scored per second (a text costs ``--top`` pairs). Reads the served stage of
``--revision`` unless ``--stage`` names one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

import numpy as np

from naics_ml.revision_folder import RevisionFolder

BETAS = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 1e3)  # 1e3: the cross-encoder alone
DESCRIPTION_LEAD = re.compile(
    r"^This (U\.S\. )?industry comprises establishments (primarily )?engaged in ", re.I
)


def labelled_sets(folder: RevisionFolder, codes: list[str], train_entries: int) -> dict:
    """name -> (texts, true codes): the training and the validation sets, and Boston."""
    import polars as pl

    from naics_assets.resources import RealTextSource
    from naics_ml.data.index_split import held_out_keys, normalize_text

    entries = pl.read_parquet(folder.entries)
    labelled = RealTextSource(local_dir=os.environ.get("NAICS_REALTEXT_DIR")).load(codes)
    evaluation = held_out_keys(entries)  # Maryland rows that are index val/test texts: out
    maryland = labelled["train"].filter(
        ~pl.col("text").map_elements(normalize_text, return_dtype=pl.String).is_in(evaluation)
    )
    train = entries.filter(pl.col("split") == "train")
    train = train.sample(min(train_entries, train.height), seed=0)
    validation = entries.filter(pl.col("split") == "validation")

    def frame(f: pl.DataFrame) -> tuple[list[str], list[list[str]]]:
        return f["text"].to_list(), f["codes"].to_list()

    return {
        "maryland_train": frame(maryland),
        "index_train": (train["text"].to_list(), [[c] for c in train["code"]]),
        "maryland_val": frame(labelled["val"]),
        "index_val": (validation["text"].to_list(), [[c] for c in validation["code"]]),
        "boston_info_only": frame(labelled["eval"]),
    }


def candidate_texts(folder: RevisionFolder, codes: list[str], kind: str) -> list[str]:
    """Each six-digit code as the cross-encoder reads it: its title, or title and the first
    sentence of its description without the Census's opening words."""
    import polars as pl

    table = pl.read_parquet(folder.codes)
    title = dict(zip(table["code"], table["title"], strict=True))
    if kind == "title":
        return [title[c] for c in codes]
    description = dict(zip(table["code"], table["description"].fill_null(""), strict=True))
    return [f"{title[c]}: {DESCRIPTION_LEAD.sub('', description[c]).split('. ')[0]}" for c in codes]


class CrossEncoder:
    """The base model's top layers and a linear head scoring (text, candidate) pairs."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        from naics_ml.model.base import DEFAULT_BASE_MODEL, load_base_model, load_tokenizer

        self.max_length = args.max_length
        self.tokenizer = load_tokenizer(DEFAULT_BASE_MODEL)
        self.model = load_base_model(DEFAULT_BASE_MODEL)
        self.model.requires_grad_(False)
        for layer in self.model.encoder.layer[-args.layers :]:
            layer.requires_grad_(True)
        self.head = torch.nn.Linear(self.model.config.hidden_size, 1)

    def __call__(self, texts: list[str], candidates: list[str]):
        encoded = self.tokenizer(
            texts,
            candidates,
            truncation=True,
            max_length=self.max_length,
            padding=True,
            return_tensors="pt",
        )
        hidden = self.model(**encoded).last_hidden_state
        mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * mask).sum(1) / mask.sum(1)).squeeze(-1)


def train(encoder: CrossEncoder, ranked: dict, candidates: list[str], args) -> float:
    """Listwise training on the training sets; returns its seconds."""
    import torch

    rng = np.random.default_rng(0)
    layers = [p for p in encoder.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": layers, "lr": args.lr}, {"params": encoder.head.parameters(), "lr": 1e-3}],
        weight_decay=0.01,
    )
    warmup = 30
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, 1 - s / args.steps)
    )
    encoder.model.train()
    start = time.perf_counter()
    for _ in range(args.steps):
        texts, pairs = [], []
        for _ in range(args.batch):
            name = "maryland_train" if rng.random() < args.maryland_share else "index_train"
            text, truth, top = ranked[name].sample(rng)
            negatives = [c for c in top if c not in truth]
            chosen = [truth[0], *rng.permutation(negatives[: args.top])[: args.negatives]]
            texts += [text] * len(chosen)
            pairs += [candidates[c] for c in chosen]
        scores = encoder(texts, pairs).view(args.batch, -1)
        target = torch.zeros(args.batch, dtype=torch.long)  # the true code comes first
        loss = torch.nn.functional.cross_entropy(scores, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    encoder.model.eval()
    return time.perf_counter() - start


class Ranked:
    """One set's texts, true code columns and ``predict``'s candidates, best first."""

    def __init__(self, texts: list[str], truth: list[list[str]], probability, codes) -> None:
        position = {c: i for i, c in enumerate(codes)}
        self.texts, self.true_codes = texts, truth
        self.truth = [[position[c] for c in row if c in position] for row in truth]
        self.probability = probability
        self.order = np.argsort(-probability, axis=1, kind="stable")

    def sample(self, rng: np.random.Generator) -> tuple[str, list[int], list[int]]:
        row = int(rng.integers(len(self.texts)))
        return self.texts[row], self.truth[row], self.order[row].tolist()


def cross_scores(encoder: CrossEncoder, ranked: Ranked, candidates: list[str], top: int):
    """(n, top) cross-encoder scores of each text's ``top`` candidates."""
    import torch

    pairs = [(row, int(c)) for row in range(len(ranked.texts)) for c in ranked.order[row, :top]]
    scores = []
    with torch.no_grad():
        for start in range(0, len(pairs), 256):
            chunk = pairs[start : start + 256]
            texts = [ranked.texts[row] for row, _ in chunk]
            scores.append(encoder(texts, [candidates[c] for _, c in chunk]).numpy())
    return np.concatenate(scores).reshape(len(ranked.texts), top)


def reranked_metrics(ranked: Ranked, cross: np.ndarray, beta: float, codes) -> dict:
    """hit@1, hit@5, sector@1 with the top candidates rescored (the others fall behind)."""
    from naics_ml.evaluation.realtext_metrics import realtext_metrics

    top = ranked.order[:, : cross.shape[1]]
    score = np.full(ranked.probability.shape, -np.inf)
    logp = np.log(np.take_along_axis(ranked.probability, top, axis=1) + 1e-300)
    np.put_along_axis(score, top, logp + beta * cross, axis=1)
    found = realtext_metrics(score, codes, ranked.true_codes, "")
    return {k: round(found[k], 4) for k in ("hit1", "hit5", "sector_at_1")}


def main() -> None:
    from naics_ml.inference.classifier import Classifier
    from naics_ml.inference.serving import served_stage

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--revision", default="2022")
    parser.add_argument("--stage", type=Path, help="a stage folder (default: the served one)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=8, help="texts a step")
    parser.add_argument("--negatives", type=int, default=7)
    parser.add_argument("--top", type=int, default=10, help="candidates reranked")
    parser.add_argument("--layers", type=int, default=3, help="top layers trained")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--candidate", choices=("title", "title_description"), default="title")
    parser.add_argument("--train-entries", type=int, default=4000)
    parser.add_argument("--maryland-share", type=float, default=0.3)
    args = parser.parse_args()
    import torch

    torch.manual_seed(0)
    artifacts = Path(os.environ["DAGSTER_HOME"]) / "storage" / "artifacts"
    stage = args.stage or served_stage(artifacts, args.revision)
    folder = RevisionFolder.under(artifacts, args.revision)
    classifier = Classifier.from_checkpoint(stage)
    codes = classifier.six_digit_codes.tolist()
    sets = labelled_sets(folder, codes, args.train_entries)
    ranked = {
        name: Ranked(texts, truth, classifier.scores(texts)[1], codes)
        for name, (texts, truth) in sets.items()
    }
    candidates = candidate_texts(folder, codes, args.candidate)
    encoder = CrossEncoder(args)
    train_s = train(encoder, ranked, candidates, args)
    start = time.perf_counter()
    evaluated = ("index_val", "maryland_val", "boston_info_only")
    cross = {name: cross_scores(encoder, ranked[name], candidates, args.top) for name in evaluated}
    score_s = time.perf_counter() - start
    grid = []
    for beta in BETAS:
        row = {n: reranked_metrics(ranked[n], cross[n], beta, codes) for n in evaluated}
        selection = (row["index_val"]["hit1"] + row["maryland_val"]["hit1"]) / 2
        hit1 = {f"{n}_hit1": row[n]["hit1"] for n in evaluated}
        grid.append({"beta": beta, "selection_score": round(selection, 4), **hit1, "full": row})
    pairs = sum(len(ranked[n].texts) for n in evaluated) * args.top
    report = {
        "stage": str(stage),
        "settings": {k: v for k, v in vars(args).items() if k != "stage"},
        "train_s": round(train_s),
        "train_step_s": round(train_s / args.steps, 2),
        "pairs_per_s": round(pairs / score_s, 1),
        "texts_per_s_reranked": round(pairs / score_s / args.top, 2),
        "chosen_on_validation": max(grid, key=lambda g: g["selection_score"]),
    }
    report["grid"] = [{k: v for k, v in row.items() if k != "full"} for row in grid]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
