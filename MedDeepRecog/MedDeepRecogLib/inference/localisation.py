"""Where the heatmap lands, measured at the end of training on scans with lesion labels, for the model card.

Training-config block (optional), registered with the training config when this module is imported
(``training.hooks.register_config_block``; ``meddeeprecog train`` imports it), so training never names inference::

    localisation:
      - {name: brain1, scan: ../shared/data/pyradiomics_testcases/brain1_image.nrrd,
         lesion: ../shared/data/pyradiomics_testcases/brain1_label.nrrd}

Each case is classified exactly as ``meddeeprecog classify SCAN --lesion LABEL`` would (the package is staged in the
run folder first), and the card records, per case: the label, on how many lesion-bearing slices the heatmap's peak
lies inside the lesion (pointing game), the share of those slices' heat inside it next to the lesion's share of
their area, and the heatmap's faithfulness (deletion / insertion).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError, MedDeepRecogError
from ..training.hooks import ConfigBlock, PackageDraft, RunHooks, register_config_block


def validate_block(block: Any) -> list[dict] | None:
    """The ``localisation:`` block as kept in the config (``None`` when empty); raises :class:`ConfigError`."""
    if not block:
        return None
    if not isinstance(block, list) or not all(isinstance(c, Mapping) and set(c) == {"name", "scan", "lesion"}
                                              for c in block):
        raise ConfigError("localisation must be a list of {name, scan, lesion}")
    return [dict(c) for c in block]


def localisation_hooks(block: list[dict], cfg: Any = None) -> RunHooks:
    """Before the package is saved: score the heatmap on the block's cases, into ``model.json`` and the card."""

    def before_save(draft: PackageDraft, progress) -> None:
        from ..training.train import explain_method

        progress("heatmap localisation", 0.99)
        with draft.staged_package() as package:
            draft.meta["localisation"] = measure_localisation(block, draft.config.source, package)
        draft.card_sections.append(localisation_card_lines(draft.meta["localisation"], explain_method(draft.meta)))

    def check() -> None:
        check_cases(block, cfg.source if cfg is not None else None)

    return RunHooks(before_save=before_save, check=check)


def check_cases(cases: list[Mapping[str, Any]], source) -> list[tuple[str, Path, Path, Any]]:
    """``(name, scan path, lesion path, lesion mask)`` of every case ``{name, scan, lesion}`` (paths relative to
    the config file ``source``), refusing in one line that names the setting (``localisation/0/scan``) a file that
    is missing, a lesion label that :func:`..io.read_lesion_mask` refuses (empty, fractional...) and one that lies
    wholly outside its scan. The scan is read as a header only where it is one 3D file; the label is read whole."""
    from ..io import read_lesion_mask
    from ..schema import resolve_relative

    checked = []
    for i, case in enumerate(cases):
        where = f"localisation/{i}"
        scan = resolve_relative(str(case["scan"]), source, f"{where}/scan")
        lesion_path = resolve_relative(str(case["lesion"]), source, f"{where}/lesion")
        try:
            lesion = read_lesion_mask(lesion_path)
        except MedDeepRecogError as exc:
            raise ConfigError(f"{where}/lesion {str(lesion_path)!r}: {exc.problem}", source) from None
        try:
            grid = _scan_grid(scan)
            if grid is not None:
                from .classify import lesion_on_scan_grid
                lesion_on_scan_grid(lesion, grid, [], lesion_path)
        except MedDeepRecogError as exc:
            raise ConfigError(f"{where}: {exc.problem.replace('--lesion', 'the lesion', 1)} (scan "
                              f"{str(scan)!r}, lesion {str(lesion_path)!r})", source) from None
        checked.append((str(case["name"]), scan, lesion_path, lesion))
    return checked


def _scan_grid(scan: Path):
    """An empty image on ``scan``'s 3D grid, from its header only; ``None`` for a folder, a picture or a 2D image
    (checked when the case is classified)."""
    import SimpleITK as sitk

    from ..errors import InputImageError
    from ..io.file_checks import check_data_files

    if scan.is_dir():
        return None
    if scan.is_file():
        check_data_files(scan)   # ITK's NRRD reader opens a detached header's data file with the header
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(scan))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputImageError("cannot be read as an image", scan) from None
    if reader.GetDimension() != 3:
        return None
    grid = sitk.Image([int(n) for n in reader.GetSize()], sitk.sitkUInt8)
    grid.SetOrigin(reader.GetOrigin())
    grid.SetSpacing(reader.GetSpacing())
    grid.SetDirection(reader.GetDirection())
    return grid


def measure_localisation(cases: list[Mapping[str, Any]], source, package) -> dict[str, Any]:
    """Classify every case ``{name, scan, lesion}`` (paths relative to the config file ``source``; the files are
    refused as :func:`check_cases` does) with ``package`` (the freshly trained model, staged:
    :meth:`.PackageDraft.staged_package`); returns ``{name: figures}``."""
    from .classify import classify_scan

    figures = {}
    for name, scan, lesion_path, lesion in check_cases(cases, source):
        try:
            result = classify_scan(scan, package, lesion=lesion, lesion_source=lesion_path, uncertainty="none")
        except MedDeepRecogError as exc:  # the scan cannot go to this model: say so in the card, don't fail
            figures[name] = {"label": None, "refused": exc.problem}
            continue
        loc = (result.explain.get("localisation") or {})
        per_slice = loc.get("per_slice") or {}
        faith = result.explain.get("faithfulness") or {}
        reliance = loc.get("lesion_reliance") or {}
        figures[name] = {
            "label": result.label, "top_class": result.decision["top_class"],
            "slices_with_lesion": per_slice.get("slices"), "pointing_hits": per_slice.get("pointing_hits"),
            "pointing_rate": per_slice.get("pointing_rate"), "mean_mass_inside": per_slice.get("mean_mass_inside"),
            "lesion_area_share": per_slice.get("lesion_area_share"),
            "faithfulness": faith.get("score"), "deletion_auc": faith.get("deletion_auc"),
            "insertion_auc": faith.get("insertion_auc"), "drop_lesion_filled": reliance.get("drop_lesion"),
            "drop_filled_elsewhere": reliance.get("drop_elsewhere")}
    return figures


def localisation_card_lines(figures: Mapping[str, Any] | None, method: str) -> str:
    if not figures:
        return ""
    fmt = lambda v, f="{:.2f}": "n/a" if v is None else f.format(v)  # noqa: E731
    rows = "\n".join(
        f"| {name} | refused: {f['refused']} | | | | | |" if f.get("refused") else
        f"| {name} | {f['label']} | {fmt(f['pointing_hits'], '{}')}/{fmt(f['slices_with_lesion'], '{}')} "
        f"({fmt(f['pointing_rate'], '{:.0%}')}) | {fmt(f['mean_mass_inside'], '{:.0%}')} | "
        f"{fmt(f['lesion_area_share'], '{:.1%}')} | {fmt(f['faithfulness'], '{:+.2f}')} | "
        f"{fmt(f.get('drop_lesion_filled'), '{:+.3f}')} / {fmt(f.get('drop_filled_elsewhere'), '{:+.3f}')} |"
        for name, f in figures.items())
    return f"""
## Where the heatmap lands ({method})
Measured when the package was made, with `meddeeprecog classify SCAN --lesion LABEL` on scans with lesion labels
(none of them training data). Pointing game: tumour-bearing slices whose heatmap peak lies inside the label. Heat
inside: the share of those slices' heat inside the label, next to the label's share of their area (what uniform heat
would give). Faithfulness: insertion minus deletion AUC, normalised (above 0: removing the hot pixels first hurts the
prediction more than removing random ones). Lesion reliance: how much the predicted class's probability falls when
the lesion is filled with the surrounding tissue's intensity, next to the same region filled elsewhere in the body
(a heatmap can only land on the lesion if the decision rests on it).

| scan | label | pointing game | heat inside lesion | lesion area | faithfulness | drop: lesion filled / elsewhere |
|---|---|---|---|---|---|---|
{rows}
"""


#: The ``localisation:`` training-config block (registered when this module is imported).
LOCALISATION_BLOCK = register_config_block(ConfigBlock("localisation", validate_block, localisation_hooks))
