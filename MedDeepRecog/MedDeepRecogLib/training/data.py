"""Training data held in memory as tensors: MedMNIST-style ``.npz`` or an image folder with a labels CSV.

The arrays are small, so everything is loaded once (no per-step file reading; DataLoader ``num_workers=0``).
Images become float32 ``(N, C, H, W)`` (``slices2d``) or ``(N, C, Z, Y, X)`` (``volume3d``), labels int64 ``(N,)``.
"""

from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ConfigError, ModelPackageError


@dataclass
class ArrayDataset:
    """Images ``(N, C, *spatial)`` float32 and labels ``(N,)`` int64 as numpy arrays."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> "ArrayDataset":
        """The cases at ``index`` (a copy)."""
        return ArrayDataset(self.images[index], self.labels[index])


@dataclass
class TrainValData:
    train: ArrayDataset
    val: ArrayDataset
    class_names: list[str]
    kind: str
    fingerprint: str
    description: str
    train_groups: np.ndarray | None = None  # (N_train,) patient / pseudo-patient group of each case, when known
    #: the validation split is one the data names (a .npz's val arrays, a labels CSV's split column), not the last
    #: ``data/val_fraction`` of each class cut while loading
    split_in_data: bool = True


def tail_per_class_split(labels: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, val)``: the last ``fraction`` of each class (file order) is validation.

    A contiguous tail limits leakage between adjacent (similar) samples such as neighbouring slices.
    """
    labels = np.asarray(labels).ravel()
    val = []
    for k in np.unique(labels):
        idx = np.nonzero(labels == k)[0]
        n_val = int(np.ceil(len(idx) * fraction)) if len(idx) > 1 else 0
        val.extend(idx[len(idx) - n_val:])
    val = np.sort(np.asarray(val, dtype=np.int64))
    train = np.setdiff1d(np.arange(len(labels)), val)
    return train, val


def to_channels_first(images: np.ndarray, kind: str, source: str | Path) -> np.ndarray:
    """Add the channel axis: 2D ``(N, H, W)`` or ``(N, H, W, C)`` (C ≤ 4); 3D ``(N, Z, Y, X)`` or ``(N, C, Z, Y, X)``."""
    if kind == "slices2d":
        if images.ndim == 3:
            return images[:, None]
        if images.ndim == 4 and images.shape[-1] <= 4:
            return np.moveaxis(images, -1, 1)
        if images.ndim == 4:
            return images
    else:
        if images.ndim == 4:
            return images[:, None]
        if images.ndim == 5:
            return images
    raise ConfigError(f"images of shape {images.shape} do not fit data/kind {kind!r}", source)


def scale_and_resize(images: np.ndarray, intensity_range: Sequence[float] | None,
                     size: Sequence[int] | None) -> np.ndarray:
    """Linearly map ``intensity_range`` to 0..1 (clipped), resize spatially to ``size`` (trilinear/bilinear)."""
    x = images.astype(np.float32)
    if intensity_range is not None:
        lo, hi = float(intensity_range[0]), float(intensity_range[1])
        x = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    if size is not None and tuple(x.shape[2:]) != tuple(size):
        import torch
        import torch.nn.functional as F
        mode = "bilinear" if len(size) == 2 else "trilinear"
        x = F.interpolate(torch.from_numpy(x), size=tuple(size), mode=mode, align_corners=False).numpy()
    return x


def default_pipeline(cfg) -> dict:
    """The preprocessing the package declares when the config gives none, as ``preprocessing`` steps:
    ``window`` mapping ``data/intensity_range`` linearly to 0..1 (clipped), then ``resample`` to ``data/size``
    (given (x, y, z) there, reversed from the array's (Z, Y, X)). ``cfg``: a :class:`.config.TrainConfig`."""
    steps: list[dict] = []
    if cfg.data.intensity_range is not None:
        lo, hi = (float(v) for v in cfg.data.intensity_range)
        steps.append({"name": "window", "center": (lo + hi) / 2.0, "width": hi - lo, "output": "unit"})
    if cfg.data.size is not None and len(cfg.data.size) == 3:
        steps.append({"name": "resample", "size": list(reversed([int(s) for s in cfg.data.size]))})
    return {"steps": steps}


def folder_input_spec(cfg) -> dict:
    """The parts of the package's ``input`` that decide what classify makes of one image of a folder, as ``train``
    records them: ``kind``, ``size`` (``data/size``), ``spacing_mm``, ``channels`` 1, ``content`` and the
    ``input/pipeline`` steps classify runs. Those the config declares; declaring none, a ``volume3d`` set's
    :func:`default_pipeline` (the package records it and classify runs it: ``data/intensity_range``'s window
    before the resample, so values outside the range are clipped before they are interpolated, and the resample
    step's grid before ``spacing_mm``'s); ``None`` for a ``slices2d`` set (its default is the window alone, which
    :func:`load_train_val` applies before resizing, as classify windows before it resizes).
    ``cfg``: a :class:`.config.TrainConfig`."""
    from ..preprocessing.pipeline import pipeline_steps

    steps = pipeline_steps(cfg.input.pipeline)
    if not steps and cfg.data.kind == "volume3d":
        steps = pipeline_steps(default_pipeline(cfg))
    return {"kind": cfg.data.kind, "size": None if cfg.data.size is None else list(cfg.data.size),
            "spacing_mm": cfg.input.spacing_mm, "channels": 1, "content": cfg.input.content,
            "pipeline": {"steps": steps} if steps else None}


def _folder_array(image, spec: dict, path: Path) -> np.ndarray:
    """The array training takes from one image ``path`` of a folder, prepared by classify's own functions in
    classify's order (``inference/classify.py``) for the package input ``spec`` (:func:`folder_input_spec`):

    1. a ``binary_mask`` package's label map becomes its one structure at 255, cut to the model's field about it
       (:func:`..preprocessing.mask_input.image_for_model`); a structure classify would decline (mostly outside the
       field) or an image that is no mask of one structure is refused, naming the file; so is a label map or mask
       in the folder of a grey-level model (:func:`..preprocessing.mask_input.check_input_content`), which classify
       refuses to classify: trained on, it taught the network an input classify never gives it;
    2. the ``input/pipeline`` steps run on it (:func:`..preprocessing.pipeline.run_input_pipeline`), a 2D picture as
       the one-slice volume classify makes of it (:func:`..io.as_volume`);
    3. a one-component 3D image of a ``volume3d`` set goes through :func:`..preprocessing.model_grid.volume_from_image`,
       the function ``classify`` feeds the network with: reoriented to LPS and resampled to ``size`` (default: its
       own LPS shape, which resamples onto its own voxels) over ``spacing_mm`` when set, ``(Z, Y, X)`` float32. Read
       in stored index order instead, an ordinary RAS NIfTI trained mirrored left-right and front-back against what
       classify later gives the network, and a folder mixing storage orientations trained on inconsistently
       oriented arrays. Anything else: the stored voxels (:func:`..io.array_from_image`, ``(Y, X)`` / ``(Y, X, C)``).

    Without mask content or pipeline steps (a ``slices2d`` set's default), steps 1 and 2 leave the image as it is
    read, once checked to be no label map."""
    from ..contract import MASK_CONTENT
    from ..errors import InputImageError
    from ..io import array_from_image, as_volume
    from ..preprocessing.mask_input import LabelMapError

    kind, planar = spec["kind"], image.GetDimension() == 2
    try:
        if spec.get("content") == MASK_CONTENT or spec.get("pipeline"):
            from ..preprocessing.mask_input import image_for_model
            from ..preprocessing.pipeline import run_input_pipeline

            image = as_volume(image, path, allow_2d=kind == "slices2d")
            # a grey-level model's image is kept, once no label map (check_input_content): classify's own call
            image, _, outside = image_for_model(image, spec, path)
            if outside:
                raise ConfigError(f"{outside} (input/spacing_mm x data/size); leave it out of the training "
                                  "images or widen the field", path)
            image = run_input_pipeline(image, spec.get("pipeline"))
            if planar:   # back to the picture: training reads slices as (Y, X)
                image = image[:, :, 0]
        else:   # classify refuses a label map or mask for a grey-level model (image_for_model): so does training
            from ..preprocessing.mask_input import check_input_content

            check_input_content(image, spec, path)
    except LabelMapError as exc:   # classify's own words, and what to do about it in a training folder
        raise ConfigError(f"{exc.problem}; leave it out of the training images (a model of masks is trained with "
                          "input/content: binary_mask)", path) from None
    except InputImageError as exc:   # a training image classify would refuse: named as a data file's fault
        raise ConfigError(exc.problem, path) from None
    if kind != "volume3d" or image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        return array_from_image(image)
    from ..preprocessing.model_grid import volume_from_image
    from ..io.geometry import lps_view

    shape = list(spec["size"]) if spec.get("size") is not None else list(lps_view(image).array.shape)
    return volume_from_image(image, {"size": shape, "spacing_mm": spec.get("spacing_mm"), "channels": 1}).x[0, 0]


#: labels CSV columns naming each image's file (the first present is read), relative to the CSV's folder: the one
#: list ``train``'s folder reader (:func:`_read_folder`) and ``calibrate``'s CSV of scans read
FILE_COLUMNS = ("file", "filename", "image", "path")
#: the labels CSV column holding each image's class name
LABEL_COLUMN = "label"
#: labels CSV columns naming each image's patient group (the first present is read), as ``{split}_groups`` in a .npz
GROUP_COLUMNS = ("group", "patient", "patient_id", "subject")
#: the optional labels CSV column putting each image in a split (``data/train_split`` / ``data/val_split``)
SPLIT_COLUMN = "split"


def labels_csv_columns(header: Sequence[str], csv_path: Path) -> tuple[str, str]:
    """The file and label columns of a labels CSV ``header`` as the CSV spells them (:data:`FILE_COLUMNS`,
    :data:`LABEL_COLUMN`, any case); refused in one line naming the file and the columns it has."""
    cols = {str(c).lower(): c for c in header}
    fcol = next((cols[c] for c in FILE_COLUMNS if c in cols), None)
    lcol = cols.get(LABEL_COLUMN)
    if fcol is None or lcol is None:
        raise ConfigError(f"labels CSV needs a file column ({', '.join(FILE_COLUMNS)}) and a {LABEL_COLUMN} column, "
                          f"has {list(header)}", csv_path)
    return fcol, lcol


@dataclass
class FolderData:
    """What :func:`_read_folder` reads: images ``(N, *spatial)`` (or ``(N, Y, X, C)``), the ``N`` label strings, and
    the optional ``group`` / ``split`` columns ``(N,)`` (str) of the CSV at ``csv_path``."""

    images: np.ndarray
    labels: list[str]
    groups: np.ndarray | None
    splits: np.ndarray | None
    csv_path: Path


def _read_folder(folder: Path, labels_csv: str | None, spec: dict) -> FolderData:
    """Images listed in a CSV (columns ``file``/``filename``/``image``/``path`` and ``label``; optional
    ``group`` (or ``patient``, ``patient_id``, ``subject``) and ``split``) under ``folder``, read by the one image
    reader (:func:`..io.read_image`: size limits, truncated files, colour pictures to grey as at inference) and
    prepared as classify prepares them for the package input ``spec`` (:func:`_folder_array`). An image listed twice
    (the same file after resolving the path) is refused: its listings could land on both sides of the
    train/validation split; so is an empty group or split cell (naming its row)."""
    from ..io import read_image

    csv_path = Path(labels_csv) if labels_csv else folder / "labels.csv"
    if not csv_path.is_absolute() and not csv_path.exists():
        csv_path = folder / csv_path
    if not csv_path.is_file():
        raise ConfigError("labels CSV not found (set data/labels_csv)", csv_path)
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ConfigError("labels CSV has no rows", csv_path)
    cols = {c.lower(): c for c in rows[0]}
    fcol, lcol = labels_csv_columns(list(rows[0]), csv_path)
    gcol = next((cols[c] for c in GROUP_COLUMNS if c in cols), None)
    scol = cols.get(SPLIT_COLUMN)
    seen: dict[Path, int] = {}
    for n, row in enumerate(rows, start=2):   # row 1 is the header
        p = folder / row[fcol]
        if not p.is_file():
            raise ConfigError(f"image listed in {csv_path.name} not found", p)
        first = seen.setdefault(p.resolve(), n)
        if first != n:
            raise ConfigError(f"lists the image {p} twice (rows {first} and {n}): it could be in both "
                              "train and validation; list each image once", csv_path)
    for col in (gcol, scol):
        empty = next((n for n, row in enumerate(rows, start=2) if col and not str(row[col] or "").strip()), None)
        if empty is not None:
            raise ConfigError(f"row {empty} has no {col}: give every image one (or drop the column)",
                              csv_path)
    arrays, labels = [], []
    for row in rows:
        p = folder / row[fcol]
        arr = _folder_array(read_image(p), spec, p)
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            raise ConfigError(f"image listed in {csv_path.name} has {int((~np.isfinite(arr)).sum())} NaN or infinite "
                              "value(s); repair or remove it", p)
        arrays.append(arr)
        labels.append(str(row[lcol]).strip())
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ConfigError(f"images have different shapes {sorted(shapes)[:3]}; resize them first", folder)
    column = (lambda col: None if col is None else np.array([str(row[col]).strip() for row in rows]))
    return FolderData(np.stack(arrays), labels, column(gcol), column(scol), csv_path)


def folder_train_val_rows(folder: FolderData, y: np.ndarray, tk: str, vk: str, val_fraction: float
                          ) -> tuple[np.ndarray, np.ndarray, str]:
    """The rows ``(train, val, how)`` of a folder's labels CSV as ``train`` splits them (``y``: the class index of
    each row): the CSV's split column (each row ``tk`` or ``vk``, no group on both sides), else the last
    ``val_fraction`` of each class in CSV order, refused when the CSV names groups (the tail would ignore them).
    The one rule, for training (:func:`load_train_val`) and scoring (:func:`load_package_folder_split`)."""
    csv_name = folder.csv_path.name
    if folder.splits is not None:   # the CSV's own split, as a .npz's train/val arrays
        other = sorted(str(v) for v in set(folder.splits) - {tk, vk})
        if other:
            raise ConfigError(f"column split holds {other}: each row is {tk!r} or {vk!r} "
                              "(data/train_split, data/val_split)", folder.csv_path)
        tr, va = np.nonzero(folder.splits == tk)[0], np.nonzero(folder.splits == vk)[0]
        if folder.groups is not None:
            both = sorted(set(folder.groups[tr]) & set(folder.groups[va]))
            if both:
                raise ConfigError(f"group {str(both[0])!r} has images in both {tk} and {vk}"
                                  f"{f' (and {len(both) - 1} more groups)' if len(both) > 1 else ''}: keep each "
                                  "patient on one side", folder.csv_path)
        return tr, va, f"splits {tk}/{vk} of the split column ({csv_name})"
    if folder.groups is not None:
        refuse_tail_with_groups("the CSV has no split column", "each class would ignore its groups",
                                f"add a split column ({tk}/{vk}) keeping each group on one side", vk,
                                folder.csv_path)
    tr, va = tail_per_class_split(y, val_fraction)
    return tr, va, f"validation = last {val_fraction:.0%} of each class (CSV order)"


def open_npz(path: Path):
    """``np.load`` of an ``.npz`` archive without pickle, its faults as one :class:`ConfigError` naming the file: not
    an archive (text, a single ``.npy`` array, damaged) and arrays of Python objects, which are never loaded."""
    try:
        z = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc):   # numpy's guess for any file without the .npy/.npz magic bytes
            raise ConfigError("cannot read .npz: not a NumPy .npz archive", path) from None
        raise ConfigError(f"cannot read .npz ({exc})", path) from None
    except Exception as exc:
        raise ConfigError(f"cannot read .npz ({exc})", path) from None
    if not hasattr(z, "files"):
        raise ConfigError(f"is a single NumPy array of shape {z.shape} (.npy), not an .npz archive of named "
                          "{split}_images / {split}_labels arrays", path)
    return z


def _declared_npz_array(z, key: str) -> tuple[tuple[int, ...], np.dtype] | None:
    """``(shape, dtype)`` that member ``key`` of archive ``z`` declares in its ``.npy`` header, read without its
    data; ``None`` when the member has no readable header (loading it then reports why)."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        with z.zip.open(f"{key}.npy") as member:
            read = readers.get(np.lib.format.read_magic(member))
            if read is None:
                return None
            shape, _, dtype = read(member)
    except Exception:  # a damaged member: loading it says what is wrong
        return None
    return tuple(int(d) for d in shape), dtype


def npz_array(z, key: str, path: Path) -> np.ndarray:
    """Array ``key`` of archive ``z``, refusing object arrays (pickled Python data) and damaged members, and an
    array whose header declares more bytes than the image limit (a few MB of deflate can hold GBs of zeros), before
    any of it is decompressed."""
    declared = _declared_npz_array(z, key)
    if declared is not None and declared[1].itemsize:
        from ..errors import InputImageError
        from ..limits import check_declared_image

        try:
            check_declared_image(declared[0], declared[1].itemsize, path, what=f"array {key!r}")
        except InputImageError as exc:  # the same words, raised as data files' errors are
            raise ConfigError(exc.problem, path) from None
    try:
        return z[key]
    except ValueError as exc:
        if "pickle" in str(exc) or "Object arrays" in str(exc):
            raise ConfigError(f"array {key!r} holds Python objects, which are never loaded; store numbers", path) \
                from None
        raise ConfigError(f"array {key!r} cannot be read ({exc})", path) from None
    except Exception as exc:
        raise ConfigError(f"array {key!r} cannot be read ({exc})", path) from None


def check_images_labels(x: np.ndarray, y: np.ndarray, what: str, path: Path) -> None:
    """Refuse image/label arrays that cannot train a classifier, naming the file, the arrays and the first bad
    entry: counts that differ, labels that are not whole numbers >= 0, images with NaN or infinite values."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 0 or y.ndim == 0:
        raise ConfigError(f"{what}: images and labels must be arrays, got shapes {x.shape} and {y.shape}", path)
    if len(x) == 0:
        raise ConfigError(f"{what}: holds no images", path)
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise ConfigError(f"{what}: images must be numbers, got {x.dtype}", path)
    y = y.reshape(len(y), -1)[:, 0] if y.ndim > 1 and y.shape[1:] and int(np.prod(y.shape[1:])) == 1 else y
    if len(x) != len(y):
        raise ConfigError(f"{what}: {len(x)} images but {len(y)} labels; they must pair up one to one", path)
    if y.ndim != 1:
        raise ConfigError(f"{what}: labels must be one class index per image, got shape {y.shape}", path)
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating) or y.dtype == np.bool_):
        raise ConfigError(f"{what}: labels must be class indices (whole numbers), got {y.dtype}", path)
    yf = y.astype(np.float64)
    bad = np.nonzero(~np.isfinite(yf) | (yf < 0) | (yf != np.round(yf)))[0]
    if len(bad):
        raise ConfigError(f"{what}: {len(bad)} label(s) are not class indices >= 0 (first: {y[bad[0]]!r} at index "
                          f"{int(bad[0])})", path)
    if np.issubdtype(x.dtype, np.floating):
        finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
        if not finite.all():
            idx = np.nonzero(~finite)[0]
            raise ConfigError(f"{what}: {len(idx)} image(s) hold NaN or infinite values (first at index "
                              f"{int(idx[0])}); remove or repair them", path)


def check_tail_validation(z, train_split: str, val_split: str, path: Path) -> None:
    """Refuse to take validation from the tail of split ``train_split`` when the file does not hold ``val_split``
    but holds other splits (a typo in ``data/val_split``: the file's own validation split would be ignored), or
    holds ``{train_split}_groups`` (a tail split ignores the patient groups, so one patient's images would land on
    both sides)."""
    held = npz_splits(z)
    if [s for s in held if s != train_split]:
        raise ConfigError(f"data/val_split {val_split!r}: the file holds no {val_split}_images/{val_split}_labels; "
                          f"its splits are {', '.join(repr(s) for s in held)}: name one of them", path)
    if f"{train_split}_groups" in z.files:
        refuse_tail_with_groups(f"the file holds no {val_split} split", f"{train_split} would ignore "
                                f"{train_split}_groups", "add a validation split to the file", val_split, path)


def refuse_tail_with_groups(missing: str, ignored: str, remedy: str, val_split: str, path: Path) -> None:
    """Refuse a tail validation split (:func:`tail_per_class_split`) of data that name patient groups: the tail
    cuts groups freely, so one patient's images would land in train and validation. One line for a .npz's
    ``{split}_groups`` (:func:`check_tail_validation`) and a labels CSV's group column."""
    raise ConfigError(f"data/val_split {val_split!r}: {missing}, and taking validation from the tail of {ignored} "
                      f"(one patient's images on both sides): {remedy}", path)


def training_slices(cfg) -> dict | None:
    """The ``input.slices`` options a ``slices2d`` config's images are standardised with in training and that its
    package records (so ``evaluate``, ``calibrate``, ``robustness --data`` and ``pretrain`` pools do the same):
    ``input/slices``, else ``{}`` (:data:`..preprocessing.slices.SLICE_DEFAULTS`), because ``classify`` standardises
    every slice (:func:`..preprocessing.slices.standardise_slices`) whether the package names options or not: a
    network trained on images only scaled by ``data/intensity_range`` was given other inputs at classify time than
    ``train`` and ``evaluate`` had measured. ``None`` for ``volume3d`` and for ``input/slices_as_stored: true``
    (images already standardised as classify's slices are, e.g. MedNIST's crops for ``body-region``).
    ``cfg``: a :class:`.config.TrainConfig` (here, not in ``config``: ``data`` reads it while loading)."""
    if cfg.data.kind != "slices2d" or cfg.input.slices_as_stored:
        return None
    return dict(cfg.input.slices) if cfg.input.slices is not None else {}


def refuse_npz_pipeline(cfg, path: Path) -> None:
    """Refuse ``input/pipeline`` steps for training arrays of a ``.npz``: classify runs them on every scan
    (:func:`..preprocessing.pipeline.run_input_pipeline`), but the arrays carry no voxel geometry (spacing,
    orientation) for grid, mask or mm-sized steps to run on, so training would learn from images that never went
    through them. One line naming the setting and its steps."""
    from ..preprocessing.pipeline import pipeline_steps

    _refuse_steps_on_npz(pipeline_steps(cfg.input.pipeline), "training arrays", "train from an image folder "
                         "(data/format: folder, a labels CSV) or leave input/pipeline out", path)


def _refuse_steps_on_npz(steps: list, arrays: str, remedy: str, path: Path) -> None:
    """The one refusal of ``input/pipeline`` ``steps`` on the ``arrays`` of the ``.npz`` ``path`` (none: nothing to
    refuse), for training (:func:`refuse_npz_pipeline`) and scoring (:func:`refuse_package_npz_pipeline`) alike."""
    if steps:
        names = ", ".join(str(s.get("name") if isinstance(s, dict) else s) for s in steps)
        raise ConfigError(f"input/pipeline steps ({names}) run on every scan at classify time, but the .npz {arrays} "
                          f"carry no voxel geometry to run them on: {remedy}", path)


def _is_unit_window(step) -> bool:
    """A ``window`` step mapping ``center``/``width`` to 0..1: the range :meth:`..packages.package.Package.data_params`
    reads and :func:`scale_and_resize` applies."""
    return (isinstance(step, dict) and step.get("name") == "window" and step.get("output", "unit") == "unit"
            and set(step) <= {"name", "center", "width", "output"} and {"center", "width"} <= set(step))


def refuse_package_npz_pipeline(pkg, path: Path) -> None:
    """Refuse to score package ``pkg`` on the ``.npz`` ``path`` when its ``input.pipeline`` holds steps the arrays
    cannot go through (:func:`load_eval_split` only windows and resizes them): such a package learnt from a folder's
    images prepared by those steps (training refuses them on a ``.npz``: :func:`refuse_npz_pipeline`), and its
    figures on arrays that skipped them would be of other inputs than classify gives it. What ``train`` records
    when the config declares no steps (:func:`..training.train.default_pipeline`: a unit window of
    ``data/intensity_range``, then a resample to ``input.size``) is what the arrays get, in that order, and an
    empty pipeline (``{steps: []}``) asks for nothing: both are scored as before."""
    from ..preprocessing.pipeline import pipeline_steps

    steps = pipeline_steps(pkg.input_spec.get("pipeline"))
    rest = list(steps)
    if rest and _is_unit_window(rest[0]):
        rest.pop(0)
    size = pkg.input_spec.get("size")
    if rest and size and len(size) == 3 and isinstance(rest[0], dict) and rest[0].get("name") == "resample" \
            and set(rest[0]) == {"name", "size"} and list(rest[0]["size"]) == list(reversed(size)):
        rest.pop(0)
    if rest:
        _refuse_steps_on_npz(steps, "arrays", f"{pkg.id}@{pkg.version} learnt from images that went through them; "
                             "score it on the scans themselves (calibrate --data takes a CSV of scans)", path)


def load_train_val(cfg, path: Path) -> TrainValData:
    """Load the train and validation sets described by ``cfg.data`` (a :class:`config.DataConfig`)."""
    d = cfg.data
    fmt = d.format if d.format != "auto" else ("folder" if path.is_dir() else "npz")
    split_in_data = True
    if fmt == "npz":
        refuse_npz_pipeline(cfg, path)
        z = open_npz(path)
        keys = set(z.files)
        tk, vk = d.train_split, d.val_split
        if {f"{tk}_images", f"{tk}_labels"} <= keys:
            x_tr, y_tr = npz_array(z, f"{tk}_images", path), npz_array(z, f"{tk}_labels", path)
            check_images_labels(x_tr, y_tr, f"{tk}_images/{tk}_labels", path)
            if {f"{vk}_images", f"{vk}_labels"} <= keys:
                x_va, y_va = npz_array(z, f"{vk}_images", path), npz_array(z, f"{vk}_labels", path)
                check_images_labels(x_va, y_va, f"{vk}_images/{vk}_labels", path)
                how = f"splits {tk}/{vk} of the file"
            else:
                check_tail_validation(z, tk, vk, path)
                tr, va = tail_per_class_split(y_tr.ravel(), d.val_fraction)
                x_tr, y_tr, x_va, y_va = x_tr[tr], y_tr[tr], x_tr[va], y_tr[va]
                how = f"split {tk}; validation = last {d.val_fraction:.0%} of each class (file order)"
                split_in_data = False
        elif {"images", "labels"} <= keys:
            x, y = npz_array(z, "images", path), npz_array(z, "labels", path)
            check_images_labels(x, y, "images/labels", path)
            tr, va = tail_per_class_split(y.ravel(), d.val_fraction)
            x_tr, y_tr, x_va, y_va = x[tr], y[tr], x[va], y[va]
            how = f"validation = last {d.val_fraction:.0%} of each class (file order, contiguous)"
            split_in_data = False
        else:
            raise ConfigError(f"npz has neither {tk}_images/{tk}_labels nor images/labels (keys: {sorted(keys)})",
                              path)
        groups = None
        if f"{tk}_groups" in keys and f"{vk}_images" in keys:
            groups = np.asarray(npz_array(z, f"{tk}_groups", path)).ravel()
            if len(groups) != len(x_tr):
                raise ConfigError(f"{tk}_groups holds {len(groups)} groups for {len(x_tr)} {tk} images; give one "
                                  "patient group per image", path)
            if not (np.issubdtype(groups.dtype, np.integer) or groups.dtype.kind in "US"):
                raise ConfigError(f"{tk}_groups must be integers or strings naming each image's patient group, got "
                                  f"{groups.dtype}", path)
        names = d.class_names
        if "class_names" in keys:
            stored = [str(s) for s in np.asarray(z["class_names"]).ravel()]
            if names is None:
                names = stored
            elif list(names) != stored:
                raise ConfigError(f"data/class_names {list(names)} do not match the class_names stored in the file "
                                  f"{stored}", path)
        y_tr, y_va = np.asarray(y_tr).ravel().astype(np.int64), np.asarray(y_va).ravel().astype(np.int64)
        if names is None and y_va.max(initial=0) > y_tr.max(initial=0):
            raise ConfigError(f"{vk} labels go up to {int(y_va.max())} but the {tk} labels only to "
                              f"{int(y_tr.max())}: a class the model never trains on cannot be scored; name the "
                              "classes in data/class_names if that is meant", path)
        k = int(y_tr.max(initial=0) + 1)
        names = names or [str(i) for i in range(k)]
        from ..packages.package import sha256_file

        fingerprint = sha256_file(path)
    else:
        folder = _read_folder(path, d.labels_csv, folder_input_spec(cfg))
        x, labels = folder.images, folder.labels
        names = d.class_names or sorted(set(labels))
        unknown = sorted(set(labels) - set(names))
        if unknown:
            raise ConfigError(f"labels {unknown} are not in data/class_names {names}", path)
        y = np.array([names.index(s) for s in labels], dtype=np.int64)
        tk, vk = d.train_split, d.val_split
        tr, va, how = folder_train_val_rows(folder, y, tk, vk, d.val_fraction)
        split_in_data = folder.splits is not None
        # the train rows' groups serve exactly as a .npz's {train_split}_groups: group-wise training/folds
        groups = None if folder.groups is None else folder.groups[tr]
        x_tr, y_tr, x_va, y_va = x[tr], y[tr], x[va], y[va]
        fingerprint = hashlib.sha256(np.ascontiguousarray(x).tobytes() + y.tobytes()).hexdigest()

    present = np.unique(y_tr)
    if len(present) < 2:
        raise ConfigError(f"the training data hold only one class ({names[int(present[0])] if len(present) else '-'}"
                          f"); a classifier needs at least two", path)
    if y_tr.max() >= len(names) or y_va.max(initial=0) >= len(names):
        raise ConfigError(f"labels go up to {max(y_tr.max(), y_va.max(initial=0))} but data/class_names has "
                          f"{len(names)} names", path)
    if len(y_va) == 0:
        raise ConfigError("the validation set is empty", path)
    used = np.unique(np.concatenate([y_tr, y_va]))
    if d.class_names is not None and len(used) and len(d.class_names) != int(used.max()) + 1 \
            and int(used.max()) < len(d.class_names):
        raise ConfigError(f"data/class_names lists {len(d.class_names)} classes {list(d.class_names)} but the labels "
                          f"use {int(used.max()) + 1} (0..{int(used.max())}); name one class per label", cfg.source)
    keep = max_train_rows(y_tr, d.max_train, cfg.source)
    if keep is not None:
        x_tr, y_tr = x_tr[keep], y_tr[keep]
        groups = groups[keep] if groups is not None else None
    slices = training_slices(cfg)
    if slices is not None:
        how += "; each image standardised as at inference (input/slices)"
        check_in_memory(len(x_tr) + len(x_va), [1, *(d.size or np.shape(x_tr)[1:3])], cfg)
        x_tr, x_va = (standardise_images(np.asarray(x), slices, d.size, path, d.intensity_range)
                      for x in (x_tr, x_va))
    else:
        x_tr, x_va = (to_channels_first(np.asarray(x), d.kind, path) for x in (x_tr, x_va))   # views: no copy yet
        check_in_memory(len(x_tr) + len(x_va), [x_tr.shape[1], *(d.size or x_tr.shape[2:])], cfg)
        # a folder's volumes went through the package's pipeline, data/intensity_range's window included
        # (folder_input_spec): a second window would map the 0..1 they hold again
        window = None if fmt == "folder" and d.kind == "volume3d" else d.intensity_range
        x_tr = scale_and_resize(x_tr, window, d.size)
        x_va = scale_and_resize(x_va, window, d.size)
    return TrainValData(ArrayDataset(x_tr, y_tr), ArrayDataset(x_va, y_va), list(names), d.kind,
                        f"sha256:{fingerprint}", f"{path.name}: {how}; train {np.bincount(y_tr, minlength=len(names)).tolist()}"
                        f", val {np.bincount(y_va, minlength=len(names)).tolist()}",
                        None if groups is None else np.asarray(groups).ravel(), split_in_data)


def check_in_memory(n_images: int, sample_shape: Sequence[int], cfg) -> None:
    """Refuse, before the float32 copies are made, a train + val set of ``n_images`` images of ``sample_shape``
    (C, *spatial) whose arrays would exceed :func:`..limits.max_dataset_bytes` (AdrenalMNIST3D at ``data/size``
    512^3 is 643 GiB; the allocator, asked for its train split's 594 GiB, failed with a line that named neither the
    setting nor the config); the line names ``data/size`` and the config."""
    from ..limits import check_dataset_bytes

    total = 4 * n_images * math.prod(int(v) for v in sample_shape)
    setting = f"data/size {list(cfg.data.size)}" if cfg.data.size is not None else "data/size (unset: the images' own)"
    check_dataset_bytes(total, f"{n_images:,} train and val images of {' x '.join(str(int(v)) for v in sample_shape)} "
                        "voxels as float32", setting, getattr(cfg, "source", None),
                        "give a smaller data/size or fewer images (data/max_train)")


def check_split_in_memory(z, key: str, split: str, kind: str, size, slices: dict | None, path: Path,
                          rows: int | None = None) -> None:
    """Refuse, before any of its images is decompressed, ``split`` of the open archive ``z`` whose float32 copy
    (images ``key`` as :func:`load_eval_split` prepares them: ``(N, C, *size)``) would exceed
    :func:`..limits.max_dataset_bytes`, the bound training's data keep to (:func:`check_in_memory`): ``evaluate``,
    ``calibrate`` and ``robustness --data`` resize to the model's input size, so a file of small images can ask for
    many times its own size. ``rows``: the images the split keeps of ``key`` (a whole file's train or val share),
    else all. The count and shape are those the ``.npy`` header declares; an unreadable header is judged when the
    array is loaded."""
    from ..limits import check_dataset_bytes

    declared = _declared_npz_array(z, key)
    if declared is None or len(declared[0]) < 3:
        return
    shape = declared[0]
    if slices is not None:   # standardise_images: one grey channel
        sample = [1, *(size or shape[1:3])]
    else:   # the channel rule of to_channels_first, on a view of no bytes
        first = to_channels_first(np.broadcast_to(np.zeros((), np.uint8), shape), kind, path)
        sample = [first.shape[1], *(size or first.shape[2:])]
    n = shape[0] if rows is None else rows
    check_dataset_bytes(4 * n * math.prod(int(v) for v in sample),
                        f"{n:,} images of {' x '.join(str(int(v)) for v in sample)} voxels as float32",
                        f"split {split!r}", path, "give fewer images (a smaller split or file)")


def standardise_images(images: np.ndarray, slices: dict, size, source,
                       intensity_range: Sequence[float] | None = None) -> np.ndarray:
    """``(N, H, W)`` (or ``(N, H, W, 1)``) grey images → ``(N, 1, *size)`` float32 0..1 through
    :func:`..preprocessing.slices.standardise_slices` with the package's ``input.slices`` options, so training sees
    exactly what classify feeds the network (8-bit images are not HU: the per-image percentile stretch applies).
    ``intensity_range``: first mapped to 0..1 (clipped), as the package's ``window`` step does before classify
    standardises. Images of at least twice ``work_size`` pixels per side are block-averaged first, over the blocks
    classify averages a slice of that size over (:func:`..preprocessing.slices.work_grid_factors`, unit pixels):
    standardised at full size instead, a folder of 512 x 512 pictures trained on other percentiles and body boxes
    than classify later gives the network."""
    from ..preprocessing.slices import block_mean, slice_options, standardise_slices, work_grid_factors

    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3:
        raise ConfigError(f"slices are standardised as classify's (input/slices) from grey images (N, H, W), got "
                          f"shape {images.shape} (classify reads one grey channel; input/slices_as_stored: true "
                          "trains on images as stored)", source)
    if intensity_range is not None:
        images = scale_and_resize(images[:, None], intensity_range, None)[:, 0]
    fy, fx = work_grid_factors(images.shape[1:], (1.0, 1.0), int(slice_options({"slices": slices})["work_size"]))
    # (1, 1): the images as they are (block_mean would only copy them); size defaults to the stored pixels, as before
    work = (lambda part: part) if (fy, fx) == (1, 1) else (lambda part: block_mean(part, fy, fx))
    out = [standardise_slices(work(images[i:i + 256]), (fy, fx), size=tuple(size or images.shape[1:]),
                              options=slices)[0]
           for i in range(0, len(images), 256)]
    return np.concatenate(out).astype(np.float32, copy=False)


def stratified_folds(labels: np.ndarray, folds: int, seed: int, source=None,
                     groups: np.ndarray | None = None) -> list[np.ndarray]:
    """Split case indices ``0..N-1`` into ``folds`` disjoint folds with about the same class mix each
    (MONAI's ``partition_dataset_classes``, shuffled with ``seed``); every index is in exactly one fold.

    With ``groups`` (a patient id per case) no group is split across folds: see :func:`group_folds`."""
    from monai.data import partition_dataset_classes

    labels = np.asarray(labels).ravel()
    counts = np.bincount(labels)
    if len(labels) < folds or counts[counts > 0].min() < folds:
        raise ConfigError(f"training/folds is {folds} but the training split has {len(labels)} cases with class counts "
                          f"{counts.tolist()}; every class needs at least one case per fold", source)
    if groups is not None:
        return group_folds(labels, np.asarray(groups).ravel(), folds, seed)
    parts = partition_dataset_classes(list(range(len(labels))), labels.tolist(), num_partitions=folds, shuffle=True,
                                      seed=seed)
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def max_train_rows(labels: np.ndarray, max_train: int | None, source=None) -> np.ndarray | None:
    """The training rows ``data/max_train`` keeps (sorted indices), ``None`` when it keeps them all: the first cases
    of every class, each class keeping its share (files are often sorted by class, so the first N cases would be
    one class); rounding may keep a case or two more than ``max_train``. Training and pretraining's pool take the
    same rows.

    Raises:
        ConfigError: the rows kept hold one class only.
    """
    labels = np.asarray(labels).ravel()
    if not max_train or max_train >= len(labels):
        return None
    share = {c: max(1, int(round(max_train * np.mean(labels == c)))) for c in np.unique(labels)}
    keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:n] for c, n in share.items()]))
    if len(np.unique(labels[keep])) < 2:
        raise ConfigError(f"data/max_train {max_train} leaves one class to train on; raise it", source)
    return keep


def holds_training_rows(pkg, data: Path, split: str) -> str | None:
    """``"is"`` when ``split`` of ``data`` is the split package ``pkg`` was trained on (the same file, recognised by
    its sha256 as the package's ``dataset_fingerprint``, and the config's ``train_split``), ``"holds"`` for ``all``
    of that file, else ``None``."""
    from ..packages import sha256_file

    prov = pkg.meta.get("provenance") or {}
    train_split = ((prov.get("config") or {}).get("data") or {}).get("train_split", "train")
    fingerprint = str(prov.get("dataset_fingerprint") or "")
    if split not in (train_split, "all") or not fingerprint.startswith("sha256:"):
        return None
    data = Path(data)
    folder = data.is_dir() or data.suffix.lower() == ".csv"
    if (folder_fingerprint(pkg, data) if folder else sha256_file(data)) != fingerprint[7:]:
        return None
    return "is" if split == train_split else "holds"


def even_class_sample(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``n`` of the cases (all of them when ``n`` is not fewer), spread over the classes as evenly
    as their counts allow and drawn at random within each class with ``seed`` (the same every run).

    Files are often sorted by class, so their first ``n`` cases can be one class; an even share per class (rather
    than each class's share of the file) gives balanced accuracy and AUC something to measure on every class. A
    class with fewer cases than its share gives all it has and the others share the rest; the remainder of an
    uneven division goes to the largest classes."""
    labels = np.asarray(labels).ravel()
    if n >= len(labels):
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    quota, left = np.zeros(len(classes), dtype=np.int64), int(n)
    for rank, i in enumerate(np.argsort(counts, kind="stable")):   # smallest class first: its spare share moves on
        quota[i] = min(int(counts[i]), left // (len(classes) - rank))
        left -= quota[i]
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(labels == c), size=q, replace=False) for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(picked)).astype(np.int64)


#: the splits a file of ``images``/``labels`` only offers, cut by class as training cuts it
WHOLE_FILE_SPLITS = ("train", "val", "all")


def npz_splits(z) -> list[str]:
    """The labelled splits of the open archive ``z``: each ``{name}_images`` that has its ``{name}_labels``, then,
    for a file with ``images``/``labels``, those of :data:`WHOLE_FILE_SPLITS` it does not name itself."""
    keys = set(z.files)
    named = sorted(k.removesuffix("_images") for k in keys
                   if k.endswith("_images") and f"{k.removesuffix('_images')}_labels" in keys)
    whole = [s for s in WHOLE_FILE_SPLITS if s not in named] if {"images", "labels"} <= keys else []
    return named + whole


def _held_splits(z, val_fraction: float) -> str:
    """The splits ``z`` holds, as the end of a refusal: what a user may ask for instead."""
    splits = npz_splits(z)
    if not splits:
        return f"it holds no labelled split (keys: {sorted(z.files)})"
    text = f"it holds {', '.join(repr(s) for s in splits)}"
    if {"images", "labels"} <= set(z.files):
        text += (f" (of its images/labels as training cuts them: 'val' = the last {val_fraction:.0%} of each class "
                 "in file order, 'train' the rest, 'all' every image)")
    return text


def eval_split_source(z, split: str, path: Path, val_fraction: float = 0.2) -> str:
    """Where :func:`load_eval_split` takes ``split`` of the open archive ``z`` from: ``"split"`` (its own
    ``{split}_images``/``{split}_labels``) or ``"whole"`` (``images``/``labels``, cut by class: ``train``, ``val``
    or ``all``). Any other split is refused in one line naming the file and the splits it holds, before anything is
    decompressed: scoring some other part of the file under the asked name (e.g. the training images as ``test``)
    would report figures that are not what they say."""
    if f"{split}_images" in z.files:
        if f"{split}_labels" not in z.files:
            raise ConfigError(f"npz has {split}_images but no {split}_labels to score them against; "
                              f"{_held_splits(z, val_fraction)}", path)
        return "split"
    if split in WHOLE_FILE_SPLITS and {"images", "labels"} <= set(z.files):
        return "whole"
    raise ConfigError(f"npz has no split {split!r}; {_held_splits(z, val_fraction)}", path)


def load_eval_split(path: Path, split: str, kind: str, intensity_range=None, size=None,
                    val_fraction: float = 0.2, slices: dict | None = None,
                    min_side: int | None = None) -> ArrayDataset:
    """One split of a ``.npz`` for evaluation: its ``{split}_images``/``{split}_labels``; for a file with only
    ``images``/``labels``, ``"val"`` is the last ``val_fraction`` of each class (what training holds out),
    ``"train"`` the rest and ``"all"`` everything (see :func:`eval_split_source`). ``slices``: the package's
    ``input.slices``; the images are then standardised exactly as in training and classify.

    Refused with one line naming the file, as classify refuses a single image: a split the file does not hold
    (naming those it does), a split without its labels, no images, images all blank (one value each), and 2D images
    under ``min_side`` pixels per side; images whose float32 copy would exceed the data-set memory bound
    (:func:`check_split_in_memory`), before any is decompressed."""
    z = open_npz(path)
    source = eval_split_source(z, split, path, val_fraction)
    rows = None
    if source == "whole" and split != "all":   # the share the split keeps, from the labels alone: before any image
        labels = np.asarray(npz_array(z, "labels", path)).ravel()
        declared = _declared_npz_array(z, "images")
        if declared is not None and declared[0][:1] == (len(labels),):
            rows = len(tail_per_class_split(labels, val_fraction)[1 if split == "val" else 0])
    check_split_in_memory(z, f"{split}_images" if source == "split" else "images", split, kind, size, slices, path,
                          rows)
    if source == "split":
        x, y = npz_array(z, f"{split}_images", path), npz_array(z, f"{split}_labels", path)
        check_images_labels(x, y, f"split {split!r}", path)
    else:
        x, y = npz_array(z, "images", path), npz_array(z, "labels", path)
        check_images_labels(x, y, "images/labels", path)   # whole, before it is split by class
        if split != "all":
            tr, va = tail_per_class_split(np.asarray(y).ravel(), val_fraction)
            x, y = (x[va], y[va]) if split == "val" else (x[tr], y[tr])
            if len(x) == 0:   # the one thing the split can change: every class had a single image
                raise ConfigError(f"split {split!r} of images/labels holds no images (the last {val_fraction:.0%} "
                                  f"of each class with more than one image)", path)
    x = np.asarray(x)
    if kind == "slices2d" and min_side and x.ndim >= 3:
        side = min(x.shape[1:3]) if x.ndim == 4 and x.shape[-1] <= 4 else min(x.shape[-2:])
        if side < min_side:
            raise ConfigError(f"split {split!r}: images of {' x '.join(map(str, x.shape[1:]))} pixels are too small "
                              f"for the model (at least {min_side} pixels per side)", path)
    flat = x.reshape(len(x), -1)
    if (flat.min(axis=1) == flat.max(axis=1)).all():
        raise ConfigError(f"split {split!r}: every image is blank (a single value each)", path)
    if slices is not None:
        x = standardise_images(x, slices, size, path, intensity_range)
    else:
        x = scale_and_resize(to_channels_first(x, kind, path), intensity_range, size)
    return ArrayDataset(x, np.asarray(y).ravel().astype(np.int64))


def package_val_fraction(pkg) -> float:
    """The share of each class that training held out of a file of ``images``/``labels`` only for ``pkg`` (its
    config's ``data/val_fraction``; 0.2, the default, for a package that does not record it)."""
    cfg_data = ((pkg.meta.get("provenance") or {}).get("config") or {}).get("data") or {}
    return float(cfg_data.get("val_fraction") or 0.2)


def load_package_split(pkg, path: Path, split: str, min_side: int | None = None) -> ArrayDataset:
    """``split`` of a labelled ``.npz`` (or of an image folder with its labels CSV, as ``train`` reads it:
    :func:`load_package_folder_split`) prepared for package ``pkg`` as its training prepared it (:func:`load_eval_split`
    with the package's intensity range, size, ``input.slices`` and held-out share): what ``evaluate``, ``calibrate``
    and ``robustness --data`` score.

    Refused in one line before any image is decoded: a package that does not classify whole images (a
    segmentation model, an ROI classifier), a package whose ``input.pipeline`` steps the arrays cannot go through
    (:func:`refuse_package_npz_pipeline`), and a file whose stored ``class_names`` are
    not the package's (scoring brain tumour labels as body regions would print figures of nothing)."""
    ref = f"{pkg.id}@{pkg.version}"
    task = pkg.meta.get("task", "classification")
    if task != "classification":
        raise ModelPackageError(f"model {ref} is a {task} model: evaluate, calibrate and robustness --data score a "
                                "classifier on labelled images")
    if pkg.input_spec.get("kind") not in ("slices2d", "volume3d"):
        raise ModelPackageError(f"model {ref} (input.kind {pkg.input_spec.get('kind')!r}) does not classify whole "
                                "images: evaluate, calibrate and robustness --data score an image classifier")
    if path.is_dir() or path.suffix.lower() == ".csv":   # train's image folder and labels CSV
        return load_package_folder_split(pkg, path, split, min_side)
    refuse_package_npz_pipeline(pkg, path)
    z = open_npz(path)
    if "class_names" in z.files:
        stored = [str(s) for s in np.asarray(z["class_names"]).ravel()]
        if stored != [str(c) for c in pkg.class_names]:
            raise ConfigError(f"the file's class_names {stored} are not the classes of {ref} "
                              f"{list(pkg.class_names)}: its labels would be scored as other classes", path)
    intensity, size = pkg.data_params()
    return load_eval_split(path, split, pkg.input_spec["kind"], intensity, size, package_val_fraction(pkg),
                           slices=pkg.input_spec.get("slices"), min_side=min_side)


def _package_train_settings(pkg, folder: Path):
    """The ``data`` and ``input`` settings ``train`` prepared package ``pkg``'s folder images with (its recorded
    config), as an object :func:`folder_input_spec` and :func:`training_slices` read. A package that records no
    config (imported, made elsewhere) gets them from its ``input``: its window step as ``data/intensity_range``
    (a slice model's; a volume model's pipeline runs whole), its slice options, its size."""
    from types import SimpleNamespace

    # the defaults of .config's DataConfig / InputConfig (not imported: config imports this module)
    data_defaults = {"kind": "volume3d", "train_split": "train", "val_split": "val", "val_fraction": 0.2,
                     "labels_csv": None, "intensity_range": None, "size": None}
    input_defaults = {"spacing_mm": None, "pipeline": None, "content": None, "slices": None,
                      "slices_as_stored": False}
    pick = (lambda defaults, d: SimpleNamespace(**{k: d.get(k, v) for k, v in defaults.items()}))
    raw = (pkg.meta.get("provenance") or {}).get("config") or {}
    if raw.get("data") and raw.get("input") is not None:
        return SimpleNamespace(data=pick(data_defaults, raw["data"]), input=pick(input_defaults, raw["input"]))
    spec = pkg.input_spec
    intensity, size = pkg.data_params()
    steps = list((spec.get("pipeline") or {}).get("steps") or [])
    if spec["kind"] == "slices2d" and steps and _is_unit_window(steps[0]):
        steps = steps[1:]   # applied as data/intensity_range after the read, as train applies it
    else:
        intensity = None if spec["kind"] == "volume3d" else intensity
    data = pick(data_defaults, {"kind": spec["kind"], "size": size, "intensity_range": intensity})
    inp = pick(input_defaults, {"spacing_mm": spec.get("spacing_mm"), "pipeline": {"steps": steps} if steps else None,
                                "content": spec.get("content"), "slices": spec.get("slices"),
                                "slices_as_stored": spec["kind"] == "slices2d" and spec.get("slices") is None})
    return SimpleNamespace(data=data, input=inp)


def _package_folder(pkg, path: Path) -> tuple[object, FolderData, np.ndarray]:
    """``(settings, folder, y)``: the folder (or labels CSV) ``path`` read by the one folder reader as ``train``
    read it for package ``pkg`` (:func:`_package_train_settings`), each row's class the index of its label in the
    package's class names; a label that is not one of them is refused by name."""
    cfg = _package_train_settings(pkg, path)
    if path.is_dir():
        folder, labels_csv = path, None
        recorded = cfg.data.labels_csv
        if recorded and not Path(recorded).is_absolute() and (path / recorded).is_file():
            labels_csv = str(path / recorded)   # the CSV name the training config gave, when this folder has it
    else:
        folder, labels_csv = path.parent, str(path)
    if not folder.is_dir() or (labels_csv is not None and not Path(labels_csv).is_file()):
        raise ConfigError("evaluation data not found", path)
    data = _read_folder(folder, labels_csv, folder_input_spec(cfg))
    names = [str(c) for c in pkg.class_names]
    unknown = sorted(set(data.labels) - set(names))
    if unknown:
        raise ConfigError(f"label(s) {', '.join(repr(u) for u in unknown)} are not classes of "
                          f"{pkg.id}@{pkg.version} {names}", data.csv_path)
    return cfg, data, np.array([names.index(s) for s in data.labels], dtype=np.int64)


def load_package_folder_split(pkg, path: Path, split: str, min_side: int | None = None) -> ArrayDataset:
    """``split`` of an image folder with its labels CSV (``path`` the folder, or the CSV in it) prepared for
    package ``pkg`` exactly as ``train`` prepared that package's images (:func:`load_train_val`): the same reader
    (:func:`_read_folder`) and input spec (:func:`folder_input_spec`), the same slice standardisation
    (:func:`training_slices`) or window and resize. ``split``: ``all``, a value of the CSV's split column, or
    without one ``data/train_split`` / ``data/val_split`` as train cut them (:func:`folder_train_val_rows`)."""
    cfg, data, y = _package_folder(pkg, path)
    d = cfg.data
    if split == "all":
        rows = np.arange(len(y))
    elif data.splits is not None:
        held = sorted(set(str(v) for v in data.splits))
        if split not in held:
            raise ConfigError(f"the split column has no split {split!r}; it holds {', '.join(map(repr, held))} "
                              "(and 'all' takes every row)", data.csv_path)
        rows = np.nonzero(data.splits == split)[0]
    else:
        tk, vk = d.train_split, d.val_split
        if split not in (tk, vk):
            raise ConfigError(f"labels CSV has no split column: split {split!r} is not one train made; it offers "
                              f"{vk!r} (the last {d.val_fraction:.0%} of each class in CSV order, as train held it "
                              f"out), {tk!r} (the rest) and 'all'", data.csv_path)
        tr, va, _ = folder_train_val_rows(data, y, tk, vk, d.val_fraction)
        rows = va if split == vk else tr
    if len(rows) == 0:
        raise ConfigError(f"split {split!r} holds no images", data.csv_path)
    x, y = data.images[rows], y[rows]
    if d.kind == "slices2d" and min_side and x.ndim >= 3:
        side = min(x.shape[1:3]) if x.ndim == 4 and x.shape[-1] <= 4 else min(x.shape[-2:])
        if side < min_side:
            raise ConfigError(f"split {split!r}: images of {' x '.join(map(str, x.shape[1:]))} pixels are too small "
                              f"for the model (at least {min_side} pixels per side)", path)
    slices = training_slices(cfg)
    if slices is not None:
        x = standardise_images(np.asarray(x), slices, d.size, path, d.intensity_range)
    else:   # a folder's volumes went through the package's pipeline, its window included (as load_train_val)
        window = None if d.kind == "volume3d" else d.intensity_range
        x = scale_and_resize(to_channels_first(np.asarray(x), d.kind, path), window, d.size)
    return ArrayDataset(x, y)


def folder_fingerprint(pkg, path: Path) -> str:
    """The ``dataset_fingerprint`` ``train`` records for the image folder ``path`` (its read images and labels)."""
    _, data, y = _package_folder(pkg, path)
    return hashlib.sha256(np.ascontiguousarray(data.images).tobytes() + y.tobytes()).hexdigest()


def group_folds(labels: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Group-aware, class-balanced folds: every case of a group (patient) lands in the same fold.

    Written here because neither MONAI nor the project's dependencies offer a stratified group k-fold
    (scikit-learn's ``StratifiedGroupKFold`` would be the only reason to depend on scikit-learn). Greedy: groups in a
    seeded random order, largest first, each to the fold where it adds least to the sum of squared class loads
    (count / even share), i.e. to the fold holding fewest cases of the group's own classes. A group larger than an
    even share (heuristic pseudo-patients can chain hundreds of images) makes its fold uneven; no split can avoid it.
    """
    labels, groups = np.asarray(labels).ravel(), np.asarray(groups).ravel()
    k = int(labels.max()) + 1
    names, inverse = np.unique(groups, return_inverse=True)
    per_group = np.zeros((len(names), k), dtype=np.int64)
    np.add.at(per_group, (inverse, labels), 1)
    order = np.random.RandomState(seed).permutation(len(names))
    order = order[np.argsort(-per_group[order].sum(1), kind="stable")]
    target = np.bincount(labels, minlength=k) / folds
    fold_counts = np.zeros((folds, k), dtype=np.float64)
    fold_of_group = np.zeros(len(names), dtype=np.int64)
    for g in order:
        cost = (per_group[g] * (2 * fold_counts + per_group[g]) / np.maximum(target, 1) ** 2).sum(1)
        f = int(np.argmin(cost))
        fold_of_group[g] = f
        fold_counts[f] += per_group[g]
    fold_of_case = fold_of_group[inverse]
    return [np.flatnonzero(fold_of_case == f).astype(np.int64) for f in range(folds)]
