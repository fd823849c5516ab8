"""Where the heatmap sits on a slice model's own validation images: how much of it lies at the image border.

Why: the disease sets have no lesion outlines, so the pointing game can only be played on the few scans with lesion
labels (:mod:`.localisation`), none of them from the model's own collection. A border band needs no outline, and
the border is where the known shortcuts sit: ultrasound text, calipers and probe marks, the CT table, the zero
padding of every convolution. A heatmap whose peaks crowd into the band looks at those, not at a lesion.

Each validation image (never used in training or selection) goes through ``classify_scan`` as the PNG a user would
give (1 mm pixels), heatmap clearing included, and on the heatmap on the image's own grid this counts

- **peak in band**: images whose heatmap maximum lies within ``band`` (a fraction of the side) of an edge, next to
  the band's share of the image area (where uniformly placed peaks would fall);
- **heat in band**: the mean share of the heat mass inside the band, next to the same area share;
- both per predicted class, the top class of each image (a shortcut is often one class's);
- for a CT slice model, **on the table**: the same two counts over the CT table under the patient, found on each
  image as the package standardises it but with the table kept (:func:`..preprocessing.table.table_mask`), next to
  the table's share of the image. A package that blanks the table (``input.slices.remove_table``) can hardly put
  heat there, since the heatmap is cleared outside the body (what remains lies on the body mask's closed rim).

Training-config block (optional), registered with the training config when this module is imported
(``training.hooks.register_config_block``; ``meddeeprecog train`` imports it)::

    placement: {bands: [0.1, 0.2]}

The figures go into ``model.json`` (``placement``) and the card. ``bench/heat_placement.py`` measures a bundled
package the same way.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import ConfigError, MedDeepRecogError
from ..training.hooks import ConfigBlock, PackageDraft, RunHooks, register_config_block

#: Band widths (fractions of the side) measured when a config gives none.
DEFAULT_BANDS = (0.1, 0.2)


def band_mask(shape: tuple[int, int], band: float) -> np.ndarray:
    """``(H, W)`` bool: True within ``band`` x side (at least one pixel) of any edge."""
    h, w = shape
    bh, bw = max(1, round(band * h)), max(1, round(band * w))
    inner = np.zeros(shape, bool)
    inner[bh:h - bh, bw:w - bw] = True
    return ~inner


def placement(heat: np.ndarray, band: np.ndarray) -> tuple[bool, float] | None:
    """(peak inside ``band``, share of heat mass inside ``band``) of one ``(H, W)`` heatmap; ``None`` when it holds
    no heat (nothing to place)."""
    total = float(heat.sum())
    if not np.isfinite(total) or total <= 0:
        return None
    peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return bool(band[peak]), float(heat[band].sum() / total)


def summarise(rows: Sequence[Mapping[str, Any]], class_names: Sequence[str], band: np.ndarray) -> dict[str, Any]:
    """Figures of one band from ``rows`` ``{"predicted": class name, "placed": placement(...) or None}``."""
    placed = [r for r in rows if r["placed"] is not None]

    def figures(sub):
        return {"images": len(sub),
                "peak_in_band": round(float(np.mean([r["placed"][0] for r in sub])), 4) if sub else None,
                "heat_in_band": round(float(np.mean([r["placed"][1] for r in sub])), 4) if sub else None}

    out = {"band_area": round(float(band.mean()), 4), **figures(placed), "per_predicted_class": {}}
    for name in class_names:
        sub = [r for r in placed if r["predicted"] == name]
        if sub:
            out["per_predicted_class"][name] = figures(sub)
    return out


def table_masks(package: Any, images: np.ndarray) -> list[np.ndarray] | None:
    """Per image ``(H, W)`` bool: the CT table on the image's own grid, found on the image standardised with the
    package's slice options, table kept; ``None`` unless the package reads CT slices."""
    from ..preprocessing.slices import slice_options, standardise_slices
    from ..preprocessing.table import table_mask

    spec = package.input_spec
    if spec.get("kind") != "slices2d" or str(package.meta.get("modality", "")).upper() != "CT":
        return None
    options = {**slice_options(spec), "remove_table": False}
    scaled = standardise_slices(images, size=(8, 8), options=options).scaled
    return [table_mask(s, float(options["foreground_threshold"])) for s in scaled]


def summarise_table(rows: Sequence[Mapping[str, Any]], class_names: Sequence[str]) -> dict[str, Any]:
    """Figures of the table from ``rows`` ``{"predicted", "table_area": share of the image or None (no table
    found), "on_table": placement(...) or None}``."""
    found = [r for r in rows if r["table_area"] is not None]
    placed = [r for r in found if r["on_table"] is not None]

    def figures(sub):
        return {"images": len(sub),
                "peak_on_table": round(float(np.mean([r["on_table"][0] for r in sub])), 4) if sub else None,
                "heat_on_table": round(float(np.mean([r["on_table"][1] for r in sub])), 4) if sub else None}

    out = {"images_with_table": len(found),
           "table_area": round(float(np.mean([r["table_area"] for r in found])), 4) if found else None,
           **figures(placed), "per_predicted_class": {}}
    for name in class_names:
        sub = [r for r in placed if r["predicted"] == name]
        if sub:
            out["per_predicted_class"][name] = figures(sub)
    return out


def measure_placement(package: Any, images: np.ndarray, *, bands: Sequence[float] = DEFAULT_BANDS,
                      progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Classify every ``(N, H, W)`` image as a PNG (uint8 / uint16; other types as a 2D NRRD) with ``package``
    and place its heatmap.

    Returns:
        ``{"images", "with_heat", "refused", "seconds", "bands": {"0.1": figures, ...}}`` (figures:
        :func:`summarise`), plus ``"table"`` (:func:`summarise_table`) for a CT slice model; images the model
        refuses (too small, unreadable) are counted, not placed.
    """
    import SimpleITK as sitk

    from .classify import classify_scan

    images = np.asarray(images)
    if images.ndim != 3 or not len(images):
        raise ConfigError(f"placement needs (N, H, W) images, got shape {images.shape}")
    suffix = ".png" if images.dtype in (np.uint8, np.uint16) else ".nrrd"
    masks = {f"{float(b):g}": band_mask(images.shape[1:], float(b)) for b in bands}
    tables = table_masks(package, images)
    rows: list[dict[str, Any]] = []  # per image: the predicted class and its placement in each band
    refused = 0
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="meddeeprecog-placement-"))
    try:
        path = tmp / f"image{suffix}"
        for i, image in enumerate(images):
            sitk.WriteImage(sitk.GetImageFromArray(np.ascontiguousarray(image)), str(path))
            try:
                result = classify_scan(path, package, uncertainty="none", faithfulness=False)
            except MedDeepRecogError:
                refused += 1
                continue
            heat = None
            if result.heatmap is not None:  # on the picture's own grid, as one slice (1, H, W)
                heat = sitk.GetArrayViewFromImage(result.heatmap).reshape(images.shape[1:])
            table = None if tables is None or not tables[i].any() else tables[i]
            rows.append({"predicted": result.decision.get("top_class"),
                         "placed": {b: None if heat is None else placement(heat, m) for b, m in masks.items()},
                         "table_area": None if table is None else float(table.mean()),
                         "on_table": None if heat is None or table is None else placement(heat, table)})
            if progress:
                progress(i + 1, len(images))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    first = next(iter(masks))
    out = {"images": len(images), "refused": refused,
           "with_heat": sum(r["placed"][first] is not None for r in rows),
           "seconds": round(time.perf_counter() - start, 1),
           "bands": {b: summarise([{"predicted": r["predicted"], "placed": r["placed"][b]} for r in rows],
                                  package.class_names, m) for b, m in masks.items()}}
    if tables is not None:
        out["table"] = summarise_table(rows, package.class_names)
    return out


def placement_card_lines(figures: Mapping[str, Any] | None, method: str, split: str = "val",
                         measured: str = "when the package was made") -> str:
    """The card section of :func:`measure_placement`'s figures (``""`` without them)."""
    if not figures or not figures.get("bands"):
        return ""
    pct = lambda v: "n/a" if v is None else f"{v:.1%}"  # noqa: E731
    bands = list(figures["bands"].items())
    head = " | ".join(f"peak in outer {float(b):.0%} / heat there" for b, _ in bands)
    rule = "|".join("---" for _ in range(len(bands) + 1))

    def row(name, get):
        cells = []
        for _, fig in bands:
            f = get(fig)
            cells.append("" if f is None else f"{pct(f['peak_in_band'])} / {pct(f['heat_in_band'])}")
        n = get(bands[0][1])
        return f"| {name} ({0 if n is None else n['images']}) | " + " | ".join(cells) + " |"

    rows = [row("all images", lambda f: f), "| band's share of the image (uniform placement) | "
            + " | ".join(f"{pct(f['band_area'])}" for _, f in bands) + " |"]
    names = list(bands[0][1]["per_predicted_class"])
    rows[1:1] = [row(f"top class {name}", lambda f, n=name: f["per_predicted_class"].get(n)) for name in names]
    refused = f"; {figures['refused']} refused" if figures.get("refused") else ""
    cold = figures["images"] - figures.get("refused", 0) - figures.get("with_heat", figures["images"])
    if cold > 0:   # a map cleared whole (heat outside the body, or in a cleared rim) has no peak to place
        refused += f"; {cold} whose heatmap held no heat after clearing, left out of the table"
    return f"""
## Where the heatmap sits on its {split} images ({method})
Measured {measured}: every {split} image ({figures['images']}{refused}; none used in training or selection)
classified as the PNG a user would give, heatmap on its own grid. No lesion outlines exist for these images, so this
counts what needs none: the images whose heatmap peak lies in the outer band of the image (text, calipers, table,
padding), and the share of heat there, next to the band's share of the area.

| images | {head} |
|{rule}|
{chr(10).join(rows)}
{table_card_lines(figures.get("table"))}"""


def table_card_lines(table: Mapping[str, Any] | None) -> str:
    """The card lines of :func:`summarise_table`'s figures (``""`` without them)."""
    if not table:
        return ""
    pct = lambda v: "n/a" if v is None else f"{v:.1%}"  # noqa: E731
    rows = [f"| all images with a table ({table['images']}) | {pct(table['peak_on_table'])} | "
            f"{pct(table['heat_on_table'])} |"]
    rows += [f"| top class {name} ({c['images']}) | {pct(c['peak_on_table'])} | {pct(c['heat_on_table'])} |"
             for name, c in table["per_predicted_class"].items()]
    return f"""
On the CT table (`preprocessing/table.py` finds it on each image as standardised, table kept): found on
{table['images_with_table']} images, where it covers {pct(table['table_area'])} of the image on average.

| images | heatmap peak on the table | heat on the table |
|---|---|---|
{chr(10).join(rows)}
"""


def validate_block(block: Any) -> dict | None:
    """The ``placement:`` block as kept in the config (``None`` when empty); raises :class:`ConfigError`."""
    if not block:
        return None
    if not isinstance(block, Mapping) or not set(block) <= {"bands"}:
        raise ConfigError("placement must be a mapping {bands: [fractions of the side, each above 0 and below 0.5]}")
    bands = block.get("bands", list(DEFAULT_BANDS))
    if (not isinstance(bands, list) or not bands
            or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 < b < 0.5 for b in bands)):
        raise ConfigError(f"placement/bands must be a list of fractions of the side above 0 and below 0.5, "
                          f"got {bands!r}")
    return {"bands": [float(b) for b in bands]}


def placement_hooks(block: dict, cfg: Any = None) -> RunHooks:
    """Before the package is saved: place the heatmap on the run's raw validation images, into ``model.json`` and
    the card. What the block needs (a slice model; an .npz holding the validation images) is checked when the run
    starts, not after its training."""
    from ..training.config import resolve_data_path

    path = resolve_data_path(cfg)
    key = f"{cfg.data.val_split}_images"
    if cfg.data.kind != "slices2d":
        raise ConfigError(f"placement measures slice models; data/kind is {cfg.data.kind}", cfg.source)
    from ..training.data import open_npz

    if path.is_dir() or path.suffix.lower() != ".npz":
        raise ConfigError(f"the config's placement block measures the heatmap on the validation images of an .npz; "
                          f"data/path is {'a folder' if path.is_dir() else 'not an .npz file'}: drop placement, or "
                          "give an .npz with a validation split", path)
    with open_npz(path) as z:   # an unreadable file is refused there, naming it
        found = key in z.files
    if not found:
        raise ConfigError(f"the config's placement block needs {key} in the data file (the validation images as a "
                          "user would give them): drop placement, or give a file with that split", path)

    def before_save(draft: PackageDraft, progress) -> None:
        from ..training.train import explain_method

        with np.load(path, allow_pickle=False) as z:
            images = z[key]
        progress("heatmap placement", 0.99)
        with draft.staged_package() as package:
            figures = measure_placement(package, images, bands=block["bands"])
        draft.meta["placement"] = {"split": cfg.data.val_split, **figures}
        draft.card_sections.append(placement_card_lines(figures, explain_method(draft.meta),
                                                        split=cfg.data.val_split))

    return RunHooks(before_save=before_save)


#: The ``placement:`` training-config block (registered when this module is imported).
PLACEMENT_BLOCK = register_config_block(ConfigBlock("placement", validate_block, placement_hooks))
