"""``census_workbooks``: the four Census workbooks of a revision, validated and checksummed."""

import dagster as dg

from naics_assets.partitions import revision_partitions
from naics_assets.resources import ArtifactStore, CensusSource


@dg.asset(partitions_def=revision_partitions, group_name="census", kinds={"excel"})
def census_workbooks(
    context: dg.AssetExecutionContext, census: CensusSource, store: ArtifactStore
) -> dg.MaterializeResult:
    """Copy or download the codes, descriptions, index and cross-reference workbooks.

    All four are validated (xlsx bytes, sheet, columns, then together) in a staging folder;
    ``census`` is then switched in one step to link to the new set (``census-<digest>``), so a
    previous materialization is never replaced in part.
    """
    revision = context.partition_key
    with store.lock(context):
        files = census.fetch(revision, store.revision(revision).census)
    rows = "\n".join(
        f"| {f.role} | `{f.path.name}` | {f.bytes:,} | `{f.sha256[:16]}…` |" for f in files
    )
    metadata: dict[str, object] = {
        "revision": revision,
        "folder": dg.MetadataValue.path(str(store.revision(revision).census)),
        "set": store.revision(revision).census.resolve().name,
        "files": dg.MetadataValue.md(
            "| role | file | bytes | sha256 |\n|---|---|---|---|\n" + rows
        ),
    }
    for f in files:
        metadata[f"{f.role}_source"] = f.source
        metadata[f"{f.role}_bytes"] = f.bytes
        metadata[f"{f.role}_sha256"] = f.sha256
    return dg.MaterializeResult(metadata=metadata)
