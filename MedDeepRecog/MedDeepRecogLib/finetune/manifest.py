"""Which scans go with which segmentations: manifests, folders of pairs, and segment-name → class maps.

A fine-tuning data set is a list of :class:`Case` (a scan, its segmentation, optional per-case labels). It can be
given as

- a manifest file, JSON (``{"cases": [{"id", "image", "segmentation", "label"?, ...}], "class_map"?: {...},
  "label_table"?: PATH}`` or a bare list of cases) or CSV (columns ``image``, ``segmentation``, optional ``id``,
  ``label``, ``label_table``); relative paths are relative to the manifest's folder;
- a folder: ``manifest.json`` / ``manifest.csv`` inside it, else scans paired with segmentations by name
  (``NAME.nii.gz`` + ``NAME.seg.nrrd`` / ``NAME_seg.nii.gz`` / ``NAME_label.nrrd`` / ``NAME-label.nrrd`` ...);
- a single ``.seg.nrrd`` next to a scan of the same name.

Segment names are mapped to classes explicitly (:class:`ClassMap`): ``{"nodule-malignant": "malignant",
"kidney_*": "kidney"}`` (exact names first, then shell-style patterns). Segments that map to nothing are
reported, never silently used.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..errors import ConfigError, MedDeepRecogError
from ..schema import load_data

log = logging.getLogger(__name__)

#: Name endings that mark a file as a segmentation / label map rather than a scan (lower case).
SEGMENTATION_SUFFIXES = (".seg.nrrd", "_seg.nii.gz", "_seg.nii", "_seg.nrrd", "-seg.nrrd", "_label.nrrd",
                         "-label.nrrd", "_label.nii.gz", "-label.nii.gz", "_labels.nii.gz", "_mask.nii.gz",
                         "_mask.nrrd", "_labelmap.nrrd", "_labelmap.nii.gz")
SCAN_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


@dataclass(frozen=True)
class Case:
    """One scan with its segmentation.

    Attributes:
        case_id: unique name of the case (the unit of the train/validation split).
        image: scan file or DICOM series folder.
        segmentation: ``.seg.nrrd`` or label map file.
        label: optional per-case label (e.g. a diagnosis), kept for ROI classification of the whole case.
        label_table: optional id → name table for a plain label map: JSON ``{"5": "liver"}`` (``FILE.json#KEY``
            picks a sub-table, e.g. ``label_names.json#total_mr``), or a Slicer color table ``.ctbl``/``.txt``
            with ``value name r g b a`` lines.
        geometry: ``"physical"`` (segmentation resampled onto the scan by position) or ``"array"`` (voxels paired
            by index when the header of one file is known to be wrong and the sizes match).
    """

    case_id: str
    image: Path
    segmentation: Path
    label: str | None = None
    label_table: str | None = None
    geometry: str = "physical"


@dataclass
class ClassMap:
    """Explicit mapping from segment names to class names.

    Args:
        mapping: ``{segment name or glob pattern: class name}``; ``None`` maps every segment to its own name.
        classes: class order; by default the mapped class names in first-seen order of ``mapping``.
    """

    mapping: dict[str, str] | None = None
    classes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mapping is not None:
            if not self.mapping:
                raise ConfigError("the class map is empty: map at least one segment name to a class")
            if not self.classes:
                self.classes = list(dict.fromkeys(self.mapping.values()))

    def class_of(self, segment_name: str) -> str | None:
        """The class of ``segment_name``, or ``None`` when it maps to nothing (case-insensitive)."""
        if self.mapping is None:
            return segment_name
        lowered = {k.lower(): v for k, v in self.mapping.items()}
        name = segment_name.lower()
        if name in lowered:
            return lowered[name]
        for pattern, cls in lowered.items():
            if any(ch in pattern for ch in "*?[") and fnmatch.fnmatchcase(name, pattern):
                return cls
        return None

    def to_json(self) -> dict[str, Any]:
        return {"mapping": self.mapping, "classes": list(self.classes)}


def parse_class_map(spec: str | Path | Mapping[str, str] | None, setting: str = "--class-map",
                    where: Path | None = None) -> ClassMap:
    """Build a :class:`ClassMap` from a dict, a JSON file, or ``"a=x,b=y"`` text (``None``: identity).

    ``setting`` names where the map was given (``--class-map``, or a manifest's ``class_map``) in messages, ``where``
    the file that holds a mapping given as a dict (a manifest).

    Raises:
        ConfigError: malformed text or file, or a segment name mapped twice (:func:`_mapped_once`).
    """
    if spec is None or spec == "":
        return ClassMap(None)
    if isinstance(spec, Mapping):
        return ClassMap(_mapped_once(spec.items(), setting, where))
    text = str(spec)
    path = Path(text)
    if path.suffix.lower() == ".json" or path.exists():
        data = load_data(path, "class map file")
        if isinstance(data, dict) and "mapping" in data:
            return ClassMap(_mapped_once(data["mapping"].items(), setting, path), list(data.get("classes") or []))
        if not isinstance(data, dict):
            raise ConfigError("class map must be a JSON object {segment name: class}", path)
        return ClassMap(_mapped_once(data.items(), setting, path))
    pairs: list[tuple[str, str]] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" in item:
            key, value = item.split("=", 1)
        elif ":" in item:
            key, value = item.split(":", 1)
        else:
            key = value = item  # "liver" alone maps the segment to a class of the same name
        if not key.strip() or not value.strip():
            raise ConfigError(f"class map entry {item!r} must read SEGMENT=CLASS")
        pairs.append((key.strip(), value.strip()))
    return ClassMap(_mapped_once(pairs, setting))


def _mapped_once(pairs: Iterable[tuple[Any, Any]], setting: str, where: Path | None = None) -> dict[str, str]:
    """``{segment name: class}`` from ``pairs``, refusing a name given twice with different classes.

    Names are matched case-insensitively (:meth:`ClassMap.class_of`), so ``liver=a,Liver=b`` is such a pair too. A
    dict would keep the last entry: ``"liver,liver=spleen"`` trained the liver's voxels as "spleen" without a word.
    The same entry written twice (``liver,liver``) maps one way and is kept.

    Raises:
        ConfigError: naming the segment and its classes.
    """
    mapping: dict[str, str] = {}
    first: dict[str, str] = {}   # lower-cased name -> the name as first written
    for key, value in pairs:
        key, value = str(key), str(value)
        seen = first.setdefault(key.lower(), key)
        if seen in mapping and mapping[seen] != value:
            raise ConfigError(f"{setting}: {key!r} is mapped twice ({mapping[seen]}, {value}); map each segment "
                              "name to one class", where)
        mapping.setdefault(seen, value)
    return mapping


def _strip_suffix(name: str, suffixes: Iterable[str]) -> str | None:
    lower = name.lower()
    for suffix in sorted(suffixes, key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: len(name) - len(suffix)]
    return None


def _is_segmentation_name(name: str) -> bool:
    return _strip_suffix(name, SEGMENTATION_SUFFIXES) is not None


def _resolve(base: Path, value: str | None) -> Path | None:
    if value is None or str(value).strip() == "":
        return None
    path = Path(str(value).strip()).expanduser()
    return path if path.is_absolute() else (base / path)


def _resolve_table(base: Path, value: str | None) -> str | None:
    if value is None or str(value).strip() == "":
        return None
    file_part, _, key = str(value).strip().partition("#")
    path = _resolve(base, file_part)
    return f"{path}#{key}" if key else str(path)


def _cases_from_records(records: Sequence[Mapping[str, Any]], base: Path, source: Path,
                        default_table: str | None) -> list[Case]:
    cases = []
    for index, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise ConfigError(f"entry {index + 1} must be a mapping with 'image' and 'segmentation', got "
                              f"{type(record).__name__} {str(record)[:40]!r}", source)
        image = _resolve(base, record.get("image"))
        segmentation = _resolve(base, record.get("segmentation") or record.get("seg") or record.get("label_map"))
        if image is None or segmentation is None:
            raise ConfigError(f"entry {index + 1} needs both 'image' and 'segmentation'", source)
        case_id = str(record.get("id") or record.get("case") or _scan_stem(image))
        label = record.get("label")
        table = _resolve_table(base, record.get("label_table")) or default_table
        geometry = str(record.get("geometry") or "physical")
        if geometry not in ("physical", "array"):
            raise ConfigError(f"entry {index + 1}: geometry must be 'physical' or 'array', not {geometry!r}", source)
        cases.append(Case(case_id, image, segmentation, None if label in (None, "") else str(label), table, geometry))
    return cases


def _scan_stem(path: Path) -> str:
    return _strip_suffix(path.name, SCAN_SUFFIXES + (".seg.nrrd",)) or path.name


def read_manifest(path: str | Path) -> tuple[list[Case], ClassMap | None]:
    """Read a JSON or CSV manifest into cases (and the class map it may carry).

    Raises:
        ConfigError: unreadable file, missing columns, no entries.
    """
    path = Path(path)
    base = path.parent
    class_map = None
    if path.suffix.lower() == ".json":
        data = load_data(path, "manifest")
        if isinstance(data, list):
            records, table = data, None
        elif isinstance(data, dict):
            records = data.get("cases") or []
            table = _resolve_table(base, data.get("label_table"))
            if data.get("class_map"):
                class_map = parse_class_map(data["class_map"], "class_map", path)
        else:
            raise ConfigError("manifest must be a list of cases or an object with 'cases'", path)
        cases = _cases_from_records(records, base, path, table)
    elif path.suffix.lower() in (".csv", ".tsv"):
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            if not reader.fieldnames or not {"image", "segmentation"} <= {f.strip() for f in reader.fieldnames}:
                raise ConfigError("CSV manifest needs columns 'image' and 'segmentation'", path)
            records = [{k.strip(): v for k, v in row.items() if k} for row in reader]
        cases = _cases_from_records(records, base, path, None)
    else:
        raise ConfigError("manifest must be .json or .csv", path)
    if not cases:
        raise MedDeepRecogError("manifest lists no cases", path)
    return cases, class_map


def pair_folder(folder: str | Path) -> list[Case]:
    """Pair scans with segmentations of the same name inside ``folder`` (not recursive).

    Raises:
        MedDeepRecogError: no pairs found (the message lists what was found unpaired).
    """
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file())
    segs = {}
    for p in files:
        stem = _strip_suffix(p.name, SEGMENTATION_SUFFIXES)
        if stem is not None:
            segs[stem.lower()] = p
    scans = {}
    for p in files:
        if _is_segmentation_name(p.name):
            continue
        stem = _strip_suffix(p.name, SCAN_SUFFIXES)
        if stem is not None:
            scans[stem.lower()] = p
    cases = [Case(scans[k].name[: len(k)], scans[k], segs[k]) for k in sorted(scans) if k in segs]
    if not cases:
        raise MedDeepRecogError(
            f"no scan/segmentation pairs found (scans: {sorted(p.name for p in scans.values()) or 'none'}; "
            f"segmentations: {sorted(p.name for p in segs.values()) or 'none'}); name them NAME.nii.gz + "
            "NAME.seg.nrrd, or give a manifest.json/.csv", folder)
    unpaired = sorted(set(scans) ^ set(segs))
    if unpaired:
        log.warning("%s: unpaired files ignored: %s", folder, ", ".join(unpaired))
    return cases


def load_cases(data: str | Path, *, image: str | Path | None = None,
               label_table: str | None = None) -> tuple[list[Case], ClassMap | None]:
    """Cases from a manifest, a folder (its manifest or name pairs), a single ``.seg.nrrd`` beside its scan, or
    (with ``image``) one segmentation or label map of that scan.

    ``label_table`` (``FILE.json[#KEY]`` or a Slicer color table): the id → name table of every case that names
    none itself (plain label maps store only numbers).

    Every listed file must exist; a missing one raises :class:`MedDeepRecogError` naming the case.
    """
    data = Path(data)
    if not data.exists():
        raise MedDeepRecogError("data path does not exist", data)
    class_map = None
    if image is not None:
        if not data.is_file():
            raise ConfigError("--image pairs one scan with one segmentation: --data must then be a segmentation or "
                              "label map file, not a folder", data)
        image = Path(image)
        cases = [Case(_scan_stem(image), image, data)]
    elif data.is_dir():
        for name in ("manifest.json", "manifest.csv"):
            if (data / name).exists():
                cases, class_map = read_manifest(data / name)
                break
        else:
            cases = pair_folder(data)
    elif data.name.lower().endswith(".seg.nrrd"):
        stem = data.name[: -len(".seg.nrrd")]
        scans = [data.parent / f"{stem}{s}" for s in SCAN_SUFFIXES] + [data.parent / stem]
        found = [s for s in scans if s.exists()]
        if not found:
            raise MedDeepRecogError(f"no scan named {stem}.nii.gz/.nrrd beside this segmentation", data)
        cases = [Case(stem, found[0], data)]
    else:
        cases, class_map = read_manifest(data)
    if label_table:
        table = _resolve_table(Path.cwd(), label_table)
        cases = [c if c.label_table else replace(c, label_table=table) for c in cases]
    ids = [c.case_id for c in cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ConfigError(f"case ids must be unique; repeated: {', '.join(duplicates)}", data)
    for case in cases:
        table = Path(case.label_table.partition("#")[0]) if case.label_table else None
        for what, path in (("scan", case.image), ("segmentation", case.segmentation), ("label table", table)):
            if path is not None and not path.exists():
                raise MedDeepRecogError(f"case {case.case_id!r}: {what} not found", path)
    return cases, class_map


def _hash_path(path: Path, digest: "hashlib._Hash") -> None:
    if path.is_dir():
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(child.relative_to(path).as_posix().encode())
            _hash_path(child, digest)
    else:
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)


def dataset_fingerprint(cases: Sequence[Case], class_map: ClassMap | None = None, extra: Any = None) -> str:
    """``sha256:…`` over every file's bytes (DICOM folders file by file), case ids, labels and the class map.

    The same data and mapping always give the same fingerprint, wherever the files live.
    """
    digest = hashlib.sha256()
    for case in sorted(cases, key=lambda c: c.case_id):
        digest.update(f"{case.case_id}|{case.label}".encode())
        digest.update(str(case.label_table).partition("#")[2].encode())
        table = Path(case.label_table.partition("#")[0]) if case.label_table else None
        for path in (case.image, case.segmentation, table):
            if path is not None:
                _hash_path(path, digest)
    digest.update(json.dumps(class_map.to_json() if class_map else None, sort_keys=True).encode())
    digest.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return "sha256:" + digest.hexdigest()


def check_val_cases(cases: Sequence[Case], val_cases: Sequence[str]) -> None:
    """Refuse a ``--val-cases`` name that is no case of the data set (a split by case and ``--val-slab`` alike).

    Raises:
        ConfigError: naming the unknown ids and the cases there are.
    """
    known = {c.case_id for c in cases}
    unknown = [v for v in val_cases if v not in known]
    if unknown:
        raise ConfigError(f"validation case(s) {unknown} not in the data set (cases: {sorted(known)})")


def split_by_case(cases: Sequence[Case], val_fraction: float = 0.25, val_cases: Sequence[str] | None = None,
                  seed: int = 0) -> tuple[list[Case], list[Case]]:
    """Split cases (never slices or crops of one scan) into training and validation.

    Args:
        val_fraction: share of cases held out (at least one when there are two or more cases).
        val_cases: explicit validation case ids (overrides ``val_fraction``).

    Raises:
        ConfigError: an unknown case id in ``val_cases`` or nothing left for training.
    """
    import random

    if val_cases:
        check_val_cases(cases, val_cases)
        val = [c for c in cases if c.case_id in set(val_cases)]
    else:
        if len(cases) < 2 or val_fraction <= 0:
            return list(cases), []
        order = sorted(cases, key=lambda c: c.case_id)
        random.Random(seed).shuffle(order)
        n_val = min(len(cases) - 1, max(1, round(val_fraction * len(cases))))
        val = order[:n_val]
    train = [c for c in cases if c not in val]
    if not train:
        raise ConfigError("every case is in the validation set; nothing is left to train on")
    return train, val
