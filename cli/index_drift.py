"""Index drift as `check`, `status` and `verify` print it (README, "Indexes in staging")."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stagesync.deployments.index_mirror import collection_drift
from stagesync.deployments.production import ProductionReader
from stagesync.settings.collection import CollectionSettings
from stagesync.settings.model import Settings
from stagesync.state.index_mirror_records import index_mirror_records


def drift_of(settings: Settings, collection: CollectionSettings, production: ProductionReader,
             staging: Any) -> dict[str, Any]:
    """The drift of one collection (read-only), or why it could not be read."""
    return collection_drift(collection, production.collection(collection), staging,
                            index_mirror_records(staging, settings.staging, collection.name))


def drift_warnings(name: str, drift: Mapping[str, Any], problems_only: bool = False,
                   notes: bool = False) -> list[str]:
    """One line per drift item, for `check` and `status` (which shows problems only:
    missing, extra, changed, failed, demoted, and one note naming the unique indexes
    mirrored non-unique when `notes`)."""
    if drift.get("error"):
        return [f"{name}: index drift unknown: {drift['error']}"]
    if drift.get("mode") != "mirror":
        return []
    lines = [f"{name}: production index {m['production']!r} is missing in staging "
             f"(will be {m['staging']!r})" for m in drift.get("missing", [])]
    lines += [f"{name}: staging index {e!r} was mirrored by stagesync and production no "
              "longer has it (the next pass drops it)" for e in drift.get("extra", [])]
    lines += [f"{name}: staging index {c['staging']!r} differs from production's in "
              f"{', '.join(c['changes'])}" for c in drift.get("changed", [])]
    lines += [f"{name}: mirrored index {f['staging']!r} (production {f['production']!r}) "
              f"failed to build: {f['error']} (retried when production's definition changes "
              "or at the next resync)" for f in drift.get("failed", [])]
    lines += [f"{name}: mirrored index {d['staging']!r} (production {d['production']!r}) "
              f"refused sync writes ({d['error']}) and was demoted: staging keeps it "
              "non-unique or not at all until production's definition changes"
              for d in drift.get("demoted", [])]
    relaxed = [t["production"] for t in drift.get("translated", [])
               if any(str(how).startswith("non-unique") for how in t.get("how", []))]
    if relaxed and (notes or not problems_only):
        lines.append(f"{name}: unique in production, mirrored non-unique in staging (values "
                     f"production moves must not be refused): {', '.join(relaxed)}")
    if problems_only:
        return lines
    lines += [f"{name}: production index {s['production']!r} {s['reason']}"
              for s in drift.get("skipped", [])]
    lines += [f"{name}: production index {t['production']!r} translated: "
              f"{'; '.join(t['how'])}" for t in drift.get("translated", [])]
    lines += [f"{name}: production index {u['production']!r}: {u['why']}"
              for u in drift.get("unmanaged", [])]
    return lines
