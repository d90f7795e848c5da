"""The weekly re-check: a known revision whose workbooks changed at the source runs again.

The Census Bureau corrects published workbooks in place (same names, new bytes). Each Monday this
schedule computes the SHA-256 of a revision's four workbooks at the source (validated in a
temporary folder: nothing under storage/ is replaced) and compares them with the ``<role>_sha256``
metadata of that revision's latest ``census_workbooks`` materialization.
"""

import hashlib

import dagster as dg

from naics_assets.partitions import revision_partitions
from naics_assets.resources import CensusSource
from naics_assets.sensors import revision_job
from naics_ml.data.census import ROLES

CENSUS_WORKBOOKS = dg.AssetKey("census_workbooks")
CHANGE_TAG = "naics/census_change"  # the run key, also as a tag: runs are found by it
CHANGED_TAG = "naics/changed_workbooks"
CHECK_TIMEOUT_S = 10.0  # per request: an unreachable web source must end inside one tick
RETRY_AFTER = (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)


def recorded_checksums(instance: dg.DagsterInstance, revision: str) -> dict[str, str] | None:
    """``role -> sha256`` of the latest ``census_workbooks`` materialization; None if never."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=CENSUS_WORKBOOKS, asset_partitions=[revision]), limit=1
    ).records
    if not records or records[0].asset_materialization is None:
        return None
    metadata = records[0].asset_materialization.metadata
    return {
        key.removesuffix("_sha256"): str(getattr(value, "value", value))
        for key, value in metadata.items()
        if key.endswith("_sha256")
    }


def change_key(revision: str, checksums: dict[str, str]) -> str:
    """One key per (revision, source state): the same change asks for one run, a later one again."""
    state = ";".join(f"{role}={checksums[role]}" for role in sorted(checksums))
    return f"census-{revision}-{hashlib.sha256(state.encode()).hexdigest()[:16]}"


def already_requested(instance: dg.DagsterInstance, key: str) -> bool:
    """A run for this change exists and did not fail: schedules' run keys only deduplicate within
    one tick, so the instance's runs are asked. A failed or canceled run is retried next week."""
    runs = instance.get_runs(filters=dg.RunsFilter(tags={CHANGE_TAG: key}))
    return any(run.status not in RETRY_AFTER for run in runs)


def source_state(census: CensusSource, revision: str) -> dict[str, str]:
    """The checksums the source offers now, with a short per-request timeout."""
    from naics_ml.data.download import DownloadConfig, source_checksums

    config = DownloadConfig(
        min(census.timeout_s, CHECK_TIMEOUT_S), census.retries, census.backoff_s
    )
    return source_checksums(revision, census.revision_dir(revision), config=config)


def check_revision(
    instance: dg.DagsterInstance, census: CensusSource, revision: str
) -> tuple[dg.RunRequest | None, str]:
    """A run request when the source differs from the last materialization; else why not.

    Raises OSError when the source cannot be reached (the caller stops asking it)."""
    recorded = recorded_checksums(instance, revision)
    if recorded is None:
        return None, f"{revision}: census_workbooks never materialized, nothing to compare"
    missing = [f"{role}_sha256" for role in ROLES if role not in recorded]
    if missing:
        return None, (
            f"{revision}: the latest census_workbooks materialization has no "
            f"{', '.join(missing)} metadata; materialize census_workbooks to record them"
        )
    try:
        current = source_state(census, revision)
    except ValueError as error:  # CensusFormatError: a missing or invalid workbook
        return None, f"{revision}: the source's workbooks are not usable: {error}"
    changed = [role for role in ROLES if current[role] != recorded[role]]
    if not changed:
        return None, f"{revision}: unchanged"
    key = change_key(revision, current)
    if already_requested(instance, key):
        return None, f"{revision}: {', '.join(changed)} changed, run {key} already requested"
    tags = {CHANGE_TAG: key, CHANGED_TAG: ",".join(changed)}
    return dg.RunRequest(partition_key=revision, run_key=key, tags=tags), (
        f"{revision}: {', '.join(changed)} changed"
    )


@dg.schedule(
    cron_schedule="0 6 * * 1",
    execution_timezone="UTC",
    job=revision_job,
    description="Mondays 06:00 UTC: re-run a revision whose workbooks changed at the source.",
)
def census_checksum_schedule(
    context: dg.ScheduleEvaluationContext, census: CensusSource
) -> dg.SkipReason | list[dg.RunRequest]:
    """Compare every known revision's source checksums with its last ``census_workbooks``."""
    revisions = sorted(context.instance.get_dynamic_partitions(revision_partitions.name))
    requests: list[dg.RunRequest] = []
    reasons: list[str] = []
    for position, revision in enumerate(revisions):
        try:
            request, reason = check_revision(context.instance, census, revision)
        except OSError as error:  # the whole source is down: no point asking for the others
            left = ", ".join(revisions[position:])
            reasons.append(f"source unreachable, not checked: {left} ({error})")
            break
        reasons.append(reason)
        if request is not None:
            requests.append(request)
    for reason in reasons:
        context.log.info(reason)
    if requests:
        return requests
    return dg.SkipReason("; ".join(reasons) or "no revision registered yet")
