"""Partitions: one per NAICS revision (a four-digit year), added at run time, never in code."""

import dagster as dg

revision_partitions = dg.DynamicPartitionsDefinition(name="naics_revision")
