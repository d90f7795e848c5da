"""The code location: assets, checks, resources, sensors and schedules of naics-gemini."""

import os

import dagster as dg

from naics_assets.assets.census import census_workbooks
from naics_assets.assets.codes import naics_codes, naics_index_entries
from naics_assets.assets.distances import naics_distances
from naics_assets.assets.embeddings import naics_embeddings
from naics_assets.assets.labels import labels_job, labels_sensor, reviewed_labels
from naics_assets.assets.records import business_codes, records_job, records_sensor
from naics_assets.assets.stages import STAGE_ASSETS
from naics_assets.assets.triplets import naics_triplets
from naics_assets.resources import ArtifactStore, CensusSource, RealTextSource, RecordsSource
from naics_assets.schedules import census_checksum_schedule
from naics_assets.sensors import automation_sensor, new_revision_sensor, revision_job
from naics_assets.tracking import MlflowTracker

defs = dg.Definitions(
    assets=[
        census_workbooks,
        naics_index_entries,
        naics_codes,
        naics_distances,
        naics_triplets,
        *STAGE_ASSETS.values(),
        naics_embeddings,
        business_codes,
        reviewed_labels,
    ],
    jobs=[revision_job, records_job, labels_job],
    sensors=[new_revision_sensor, automation_sensor, records_sensor, labels_sensor],
    schedules=[census_checksum_schedule],
    resources={
        "census": CensusSource(local_dir=os.environ.get("NAICS_CENSUS_DIR") or None),
        "realtext": RealTextSource(local_dir=os.environ.get("NAICS_REALTEXT_DIR") or None),
        "records": RecordsSource(
            local_dir=os.environ.get("NAICS_RECORDS_DIR") or None,
            labels_dir=os.environ.get("NAICS_LABELS_DIR") or None,
        ),
        "store": ArtifactStore.from_env(),
        # MLFLOW_TRACKING_URI is read when a run starts: a value copied here would be shown in
        # the UI and stored in every run's job snapshot, credentials included.
        "mlflow": MlflowTracker(),
    },
)
