"""``naics-gemini``: the few things the Dagster CLI cannot do for this project.

Revision partitions are dynamic (a new NAICS revision needs no code change), so a revision must be
registered on the instance before ``dagster asset materialize --partition <YEAR>`` accepts it.
The new-revision sensor does that by itself; this command does it by hand.
"""

from __future__ import annotations

import argparse
import sys

from naics_ml.data.census import validate_revision


def add_revisions(revisions: list[str]) -> list[str]:
    """Register revisions on the Dagster instance at DAGSTER_HOME; returns the newly added."""
    import dagster as dg

    from naics_assets.partitions import revision_partitions

    for revision in revisions:
        validate_revision(revision)
    with dg.DagsterInstance.get() as instance:
        known = set(instance.get_dynamic_partitions(revision_partitions.name))
        new = [r for r in revisions if r not in known]
        if new:
            instance.add_dynamic_partitions(revision_partitions.name, new)
    return new


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="naics-gemini", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add-revision", help="register NAICS revision partitions")
    add.add_argument("revisions", nargs="+", metavar="YEAR")
    args = parser.parse_args(argv)
    try:
        new = add_revisions(args.revisions)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"added: {', '.join(new) or 'none (already registered)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
