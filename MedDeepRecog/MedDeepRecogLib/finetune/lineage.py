"""What a fine-tuning run's base descends from: which version ``--base ID`` means, and whether the base's line of
weights trained on the scans this run validates on. Both are read from the packages' ``model.json``
``provenance``.

**Which version an unversioned base means** (:func:`resolve_base`). ``--base ID`` takes the newest version of the
id, passing over the versions fine-tuned from an earlier version of that id on this same data set (the same files
and class map: ``provenance.dataset_fingerprint``) and every version derived from those. The new package is by
default the next version of the base's id, so without the rule a finished run changed what its own command meant:
running the README's command again trained 1.0.2 from 1.0.1, then 1.0.3 from 1.0.2, where the same command was to
return the finished run and the same command with more epochs to continue it; each link also trained again on
the voxels its validation scored. Another data set still starts from the newest version (a fine-tune of a
fine-tune on new cases), and ``ID@VERSION`` or a path is taken as it is, so a fine-tuned version is fine-tuned
further on the same data only when named.

**Whether the validation data is held out** (:func:`held_out_status`). A package records the scans it trained on
(``provenance.trained_on``: one entry per scan, by :func:`scan_id`, with the slab of it that was held out, if any),
its ancestors' included (:func:`merge_trained_on`). When the base trained on a validation case's scan, or on
slices of the validation slab, this run's figures are marked *not held out* (model.json ``metrics``, the card,
``segment``'s caveat) rather than refused: fine-tuning a model on a scan it has seen is a legitimate way to adapt
it (often the only scan there is), and what is wrong is only the claim the figure would make. A base that records
no scans (made before they were recorded, or by ``train``) is compared by its data set fingerprint alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, Iterable, Sequence

import numpy as np
import SimpleITK as sitk

log = logging.getLogger(__name__)


def scan_id(image: sitk.Image) -> str:
    """``sha256:…`` of a scan as read: its voxels as float32 and its grid (size; spacing, origin and direction to
    1e-4), so the same scan in another container (``.nii.gz``, ``.nrrd``) has the same id and a resampled or edited
    copy another. Recorded per training scan in a package's ``provenance.trained_on``."""
    def rounded(values: Iterable[float]) -> list[float]:
        return [round(float(v), 4) + 0.0 for v in values]   # + 0.0: -0.0 and 0.0 are one position

    digest = hashlib.sha256(json.dumps([list(image.GetSize()), rounded(image.GetSpacing()), rounded(image.GetOrigin()),
                                        rounded(image.GetDirection())]).encode())
    voxels = np.ascontiguousarray(sitk.GetArrayViewFromImage(image), dtype=np.float32)
    digest.update(voxels.data)
    return "sha256:" + digest.hexdigest()


def resolve_base(ref: str | None, fingerprint: str) -> tuple[str | None, str | None]:
    """The base to open for ``--base ref`` on the data set ``fingerprint`` (see the module docstring), and a note
    naming the newer versions passed over (``None`` when none was).

    ``ref`` naming a version, a path, or nothing (``none`` / ``scratch``) is returned as it is; so is an id with no
    version left after passing over (a catalog missing the version its own fine-tunes started from).
    """
    from ..packages import id_versions
    from ..packages.package import parent_ref

    versions = id_versions(ref) if ref and ref.lower() not in ("none", "scratch") else None
    if not versions:
        return ref, None
    passed: set[str] = set()
    for version, meta in versions:   # oldest first: a parent is older than its child
        prov = meta.get("provenance") if isinstance(meta.get("provenance"), dict) else {}
        parent = parent_ref(prov.get("parent"))
        if parent is None or parent.partition("@")[0] != ref:
            continue
        if prov.get("dataset_fingerprint") == fingerprint or parent in passed:
            passed.add(f"{ref}@{version}")
    kept = [v for v, _ in versions if f"{ref}@{v}" not in passed]
    if not kept:
        return ref, None
    newer = [v for v, _ in versions if f"{ref}@{v}" in passed and _after(v, kept[-1])]
    note = None
    if newer:
        note = (f"--base {ref} starts from {ref}@{kept[-1]}: {', '.join(newer)} "
                f"{'was' if len(newer) == 1 else 'were'} fine-tuned from {ref} on this data set (name "
                f"{ref}@VERSION to start from one)")
    return f"{ref}@{kept[-1]}", note


def _after(version: str, other: str) -> bool:
    return tuple(int(p) for p in version.split(".")) > tuple(int(p) for p in other.split("."))


def trained_on_entry(case_id: str, scan: str, slab: dict[str, Any] | None = None) -> dict[str, Any]:
    """One ``provenance.trained_on`` entry: a training scan, and (``slab``: ``{"slices": [start, stop],
    "spacing_mm", "orientation"}``) the slab of it held out for validation, on the grid its indices count."""
    entry: dict[str, Any] = {"case": case_id, "scan": scan}
    if slab:
        entry.update({"held_out_slab": [int(s) for s in slab["slices"]],
                      "spacing_mm": [float(s) for s in slab["spacing_mm"]], "orientation": str(slab["orientation"])})
    return entry


#: What packages made before ``provenance.trained_on`` was written trained on, by the sha256 of their weights: the
#: bundled ts-organs-seg 1.0.0, trained on example_ct_sm (case ``ct_sm``) with slices 20:30 at 3 mm, RAS, held out
#: (its command, card and manifest). Kept here rather than written into that package's model.json, which records
#: what fine-tuning wrote when it trained (as :data:`..inference.segment.DEFAULT_ORIENTATION` is).
TRAINED_ON_BEFORE_RECORDED = {
    "5c6d9a131b1708f774ac14d88c454d0f2b4a107acacc538c904374fbb5a1ca63": [{
        "case": "ct_sm", "scan": "sha256:2df50c4a9fc655e6dcae5d2f73d058c219f7f3fcc6cc2db3ea15bc82595bf914",
        "held_out_slab": [20, 30], "spacing_mm": [3.0, 3.0, 3.0], "orientation": "RAS"}],
}


def recorded_scans(meta: dict[str, Any]) -> list[dict[str, Any]] | None:
    """A package's ``provenance.trained_on`` entries, or :data:`TRAINED_ON_BEFORE_RECORDED`'s for its weights
    (``None``: nothing records what it trained on)."""
    prov = meta.get("provenance") if isinstance(meta.get("provenance"), dict) else {}
    entries = prov.get("trained_on")
    if not isinstance(entries, list):
        weights = meta.get("weights") if isinstance(meta.get("weights"), dict) else {}
        entries = TRAINED_ON_BEFORE_RECORDED.get(str(weights.get("sha256")))
    if not isinstance(entries, list):
        return None
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("scan"), str)]


def _same_grid(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two slabs count slices on one grid (spacing and orientation), so their indices compare."""
    sa, sb = a.get("spacing_mm"), b.get("spacing_mm")
    return (isinstance(sa, list) and isinstance(sb, list) and len(sa) == len(sb)
            and all(abs(float(x) - float(y)) < 1e-6 for x, y in zip(sa, sb))
            and a.get("orientation") == b.get("orientation"))


def merge_trained_on(*groups: Sequence[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The scans a package's weights trained on: its base's entries and its own, one entry per scan. A slab stays
    held out only where every run held it out (the overlap of their slabs on one grid); slabs on different grids
    cannot be compared, so the whole scan then counts as seen. A scan named differently by an earlier group (the
    bundled ts-organs-seg's manifest called example_ct_sm ``ct_sm``) takes the name of the latest group (this run's
    case, the file's stem as the manifest or CLI gives it): one name per case in a package's model.json, the one its
    ``provenance.cases`` uses."""
    merged: dict[str, dict[str, Any]] = {}
    for group in groups:
        for entry in group or []:
            have = merged.get(entry["scan"])
            if have is None:
                merged[entry["scan"]] = dict(entry)
                continue
            slab_a, slab_b = have.get("held_out_slab"), entry.get("held_out_slab")
            both = {"case": entry["case"], "scan": entry["scan"]}
            if slab_a and slab_b and _same_grid(have, entry):
                lo, hi = max(slab_a[0], slab_b[0]), min(slab_a[1], slab_b[1])
                if hi > lo:
                    both.update({"held_out_slab": [lo, hi], "spacing_mm": have["spacing_mm"],
                                 "orientation": have["orientation"]})
            merged[entry["scan"]] = both
    return list(merged.values())


def held_out_status(base, fingerprint: str, val_scans: Sequence[tuple[str, str]],
                    slab: dict[str, Any] | None = None,
                    train_scans: Sequence[tuple[str, str]] = ()) -> tuple[bool | None, str | None]:
    """Whether this run's validation data is held out from every weight it is scored with: ``(True, None)``,
    ``(False, why)``, or ``(None, None)`` when the base records nothing to tell (a package made before scans were
    recorded, or by ``train``, whose data set fingerprint is not this one's).

    Args:
        base: the base package (``None``: from scratch, nothing seen before this run).
        fingerprint: this run's data set fingerprint (compared with a base that records no scans).
        val_scans: ``(case id, scan id)`` of each case validated on whole (a split by case).
        slab: the held-out slab (``{"case", "scan", "slices", "spacing_mm", "orientation"}``) of a one-scan run.
        train_scans: ``(case id, scan id)`` of this run's training cases: a validation case that is a training
            case's scan under another id is no more held out.
    """
    if not val_scans and slab is None:
        return None, None   # nothing validated: nothing to call held out or not
    found = []
    own = {scan: case_id for case_id, scan in train_scans}
    for case_id, scan in val_scans:
        if scan in own:
            found.append(f"validation case {case_id!r} is the scan of training case {own[scan]!r}")
    known = True
    if base is not None:
        ref = f"{base.id}@{base.version}"
        seen = recorded_scans(base.meta)
        if seen is None:
            prov = base.meta.get("provenance") if isinstance(base.meta.get("provenance"), dict) else {}
            if prov.get("dataset_fingerprint") == fingerprint:
                found.append(f"base {ref} was trained on this same data set (its dataset fingerprint)")
            known = False
        else:
            by_scan = {e["scan"]: e for e in seen}
            base_saw = []
            for case_id, scan in val_scans:
                entry = by_scan.get(scan)
                if entry is not None:
                    kept = entry.get("held_out_slab")
                    base_saw.append(f"the scan of validation case {case_id!r}"
                                    + (f" (all but slices {kept[0]}:{kept[1]})" if kept else ""))
            if slab is not None and slab["scan"] in by_scan:
                entry = by_scan[slab["scan"]]
                kept = entry.get("held_out_slab")
                lo, hi = slab["slices"]
                if not (kept and _same_grid(entry, slab) and kept[0] <= lo and hi <= kept[1]):
                    if kept and _same_grid(entry, slab):
                        held = f"it held out only slices {kept[0]}:{kept[1]}"
                    elif kept:
                        held = (f"it held out slices {kept[0]}:{kept[1]} at {_grid(entry)}, another grid than "
                                f"this run's {_grid(slab)}")
                    else:
                        held = "it held out none of that scan"
                    base_saw.append(f"slices {lo}:{hi} of case {slab['case']!r} ({held})")
            if base_saw:
                found.append(f"base {ref} (or a model it descends from) trained on {'; '.join(base_saw)}")
    if found:
        return False, "; ".join(found)
    return (True, None) if known else (None, None)


def _grid(entry: dict[str, Any]) -> str:
    return f"{','.join(f'{float(s):g}' for s in entry['spacing_mm'])} mm {entry['orientation']}"
