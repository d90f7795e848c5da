"""The clean code table: one row per NAICS code with its four channel texts.

Cleaning decisions (each one fixes a pitfall of the published workbooks):
- codes are text; the range sectors ``31-33``/``44-45``/``48-49`` become ``31``/``44``/``48``
  and keep their published form in ``code_range``;
- titles come from the codes workbook (trailing spaces stripped), not from the descriptions workbook
  whose titles carry a stray trailing ``T``;
- a description that is the literal ``NULL`` is missing; one that only says "See industry
  description for NNNNNN." borrows that code's description (the only-child case);
- the ``Illustrative Examples:`` list moves to ``examples``, and the bare ``Cross-References.``
  heading is cut off: its items live in the cross-references workbook and become ``excluded``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import polars as pl

from naics_ml.data.census import CensusFormatError, CensusTables, read_census

RANGE_SECTORS = {"32": "31", "33": "31", "45": "44", "49": "48"}
_CODE = re.compile(r"^(\d{2,6}|\d{2}-\d{2})$")
_XREF_HEADING = re.compile(r"\s*Cross-References\.(.*)$", re.DOTALL)
_EXAMPLES_HEADING = re.compile(r"\s*Illustrative Examples:\s*(.*)$", re.DOTALL)
_SEE_OTHER = re.compile(r"^See industry description for (\d{6})\.?$")
# "…are classified in U.S. Industry 111191, …", "…in Industry Group 3121", "…in Sector 31-33".
_CODE_REFERENCE = re.compile(
    r"(?:Sectors?|Subsectors?|Groups?|Industry|Industries)\s+(\d{2}-\d{2}|\d{2,6})\b"
)


def sector_of(code: str) -> str:
    """Two-digit sector of a code, with 32/33 merged into 31, 45 into 44, 49 into 48."""
    head = code[:2]
    return RANGE_SECTORS.get(head, head)


def six_digit_mask(codes: pl.DataFrame) -> np.ndarray:
    """Boolean mask over the code table's rows in ``index`` order: the six-digit codes, the
    candidates of every classification and retrieval metric."""
    return (codes.sort("index")["level"] == 6).to_numpy()


def six_digit_codes(codes: pl.DataFrame) -> np.ndarray:
    """The six-digit codes (object array) in ``index`` order."""
    return codes.sort("index")["code"].to_numpy().astype(object)[six_digit_mask(codes)]


def parent_of(code: str) -> str | None:
    """Parent code: one digit shorter; three-digit codes hang under their (merged) sector."""
    if len(code) <= 2:
        return None
    if len(code) == 3:
        return sector_of(code)
    return code[:-1]


def normalize_code(published: str) -> str:
    """``31-33`` -> ``31``; anything else unchanged."""
    return published.split("-")[0]


def split_description(raw: str | None) -> tuple[str | None, list[str], str | None]:
    """Split a published description into (description, illustrative examples, cross-ref intro)."""
    if raw is None or raw.strip().upper() == "NULL":
        return None, [], None
    text = raw
    intro = None
    heading = _XREF_HEADING.search(text)
    if heading:
        intro = heading.group(1).strip() or None
        text = text[: heading.start()]
    examples: list[str] = []
    block = _EXAMPLES_HEADING.search(text)
    if block:
        examples = [line.strip() for line in block.group(1).splitlines() if line.strip()]
        text = text[: block.start()]
    text = re.sub(r"[ \t]+\n", "\n", text).strip()
    return (text or None), examples, intro


def referenced_codes(text: str) -> list[str]:
    """Codes a cross-reference names, in order, as our normalized codes."""
    return [normalize_code(m) for m in _CODE_REFERENCE.findall(text)]


def _unique_lines(lines: list[str]) -> list[str]:
    """First occurrence of each line, compared without case."""
    first: dict[str, str] = {}
    for line in lines:
        first.setdefault(line.casefold(), line)
    return list(first.values())


def _check_codes(frame: pl.DataFrame, tables: CensusTables) -> None:
    bad = frame.filter(~pl.col("code_range").str.contains(_CODE.pattern))
    if bad.height:
        raise CensusFormatError(
            f"codes workbook of {tables.revision}: malformed code(s) "
            f"{bad['code_range'].to_list()[:5]}"
        )
    dupes = frame.filter(pl.col("code").is_duplicated())
    if dupes.height:
        raise CensusFormatError(
            f"codes workbook of {tables.revision}: duplicate code(s) {dupes['code'].to_list()[:5]}"
        )


def build_code_table(
    tables: CensusTables, example_entries: pl.DataFrame | None = None
) -> pl.DataFrame:
    """The clean code table; ``example_entries`` (code, text) are appended to ``examples``."""
    frame = (
        tables.codes.select(
            pl.col("code").alias("code_range"),
            pl.col("title").str.strip_chars(),
        )
        .with_columns(pl.col("code_range").map_elements(normalize_code, pl.String).alias("code"))
        .with_row_index("index")
    )
    _check_codes(frame, tables)
    codes = frame["code"].to_list()
    position = {c: i for i, c in enumerate(codes)}
    descriptions, examples, intros = _descriptions(tables, codes, example_entries)
    excluded, excluded_codes = _exclusions(tables, codes, intros)
    parents = [parent_of(c) for c in codes]
    orphans = [
        c for c, p in zip(codes, parents, strict=True) if p is not None and p not in position
    ]
    if orphans:
        raise CensusFormatError(
            f"codes workbook of {tables.revision}: code(s) without a parent {orphans[:5]}"
        )
    return frame.select(
        pl.col("index").cast(pl.Int32),
        "code",
        "code_range",
        pl.col("code").str.len_chars().cast(pl.Int8).alias("level"),
        pl.Series("parent_code", parents, dtype=pl.String),
        pl.Series(
            "parent_index", [position.get(p) if p else None for p in parents], dtype=pl.Int32
        ),
        pl.Series("sector", [sector_of(c) for c in codes], dtype=pl.String),
        "title",
        pl.Series("description", [descriptions[c] for c in codes], dtype=pl.String),
        pl.Series("examples", ["\n".join(examples[c]) or None for c in codes], dtype=pl.String),
        pl.Series("excluded", [excluded[c] for c in codes], dtype=pl.String),
        pl.Series("excluded_codes", [excluded_codes[c] for c in codes], dtype=pl.List(pl.String)),
        pl.Series(
            "excluded_indices",
            [[position[t] for t in excluded_codes[c]] for c in codes],
            dtype=pl.List(pl.Int32),
        ),
    )


def _descriptions(
    tables: CensusTables, codes: list[str], example_entries: pl.DataFrame | None
) -> tuple[dict[str, str | None], dict[str, list[str]], dict[str, str | None]]:
    """Per code: its description ("See industry description for X" resolved), its example
    lines (plus ``example_entries``, deduplicated) and the intro of its exclusion list."""
    described: dict[str, tuple[str | None, list[str], str | None]] = {
        normalize_code(c): split_description(d)
        for c, d in tables.descriptions.select("code", "description").iter_rows()
    }
    missing = [c for c in codes if c not in described]
    if missing:
        raise CensusFormatError(
            f"{tables.revision}_NAICS_Descriptions.xlsx: no row for code(s) {missing[:5]}"
        )
    descriptions, examples, intros = {}, {}, {}
    for code in codes:
        text, lines, intro = described[code]
        see = _SEE_OTHER.match(text or "")
        if see and see.group(1) in described:
            text = described[see.group(1)][0]
        descriptions[code], examples[code], intros[code] = text, list(lines), intro
    if example_entries is not None:
        for code, text in example_entries.select("code", "text").iter_rows():
            examples[code].append(text)
    for code in codes:  # an index entry often repeats an illustrative example
        examples[code] = _unique_lines(examples[code])
    return descriptions, examples, intros


def _exclusions(
    tables: CensusTables, codes: list[str], intros: dict[str, str | None]
) -> tuple[dict[str, str | None], dict[str, list[str]]]:
    """Per code: the exclusion text (intro + cross-reference lines, None without any) and the
    codes those lines send activities to."""
    known = set(codes)
    items: dict[str, list[str]] = {c: [] for c in codes}
    targets: dict[str, list[str]] = {c: [] for c in codes}
    for code, text in tables.cross_references.select("code", "text").iter_rows():
        code = normalize_code(code)
        if code not in known:
            raise CensusFormatError(
                f"{tables.revision}_NAICS_Cross_References.xlsx: unknown code {code!r}"
            )
        items[code].append(text)
        for target in referenced_codes(text):
            if target in known and target != code and target not in targets[code]:
                targets[code].append(target)
    text = {
        c: "\n".join(([intros[c]] if intros[c] else []) + items[c]) if items[c] else None
        for c in codes
    }
    return text, targets


def unresolved_references(tables: CensusTables) -> list[tuple[str, str]]:
    """(code, named code) for each cross-reference naming a code the revision does not have.

    The line stays in the code's ``excluded`` text; only its link to that code cannot be made
    (none in the published 2022 and 2017 files, so ``naics_codes`` reports every one)."""
    known = {normalize_code(c) for c in tables.codes["code"]}
    return [
        (normalize_code(code), target)
        for code, text in tables.cross_references.select("code", "text").iter_rows()
        for target in referenced_codes(text)
        if target not in known
    ]


def level_counts(codes: pl.DataFrame) -> dict[int, int]:
    """Codes per level, 2..6."""
    counts = codes.group_by("level").len().sort("level")
    return {int(level): int(n) for level, n in counts.iter_rows()}


def load_code_table(census_dir: Path, revision: str) -> pl.DataFrame:
    """Read the workbooks and build the code table with the leak-free examples split applied."""
    from naics_ml.data.index_split import SplitConfig, split_index_entries

    tables = read_census(census_dir, revision)
    bare = build_code_table(tables)
    entries = split_index_entries(tables.index, bare, SplitConfig())
    return build_code_table(tables, entries.filter(pl.col("split") == "examples"))
