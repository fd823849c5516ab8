"""What the command line, the Slicer module and the core agree on: file suffixes, output names and choice lists.

Imported by the writer (``inference``, ``commands``), the reader (``slicer_bridge``) and the Slicer module alike, so
a rule is spelled once; plain Python (no torch, SimpleITK or numpy), cheap to import inside Slicer. The output files
are described for people in ``docs/worker-protocol.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

#: Extensions SimpleITK writes and Slicer reads back with geometry intact.
WRITABLE_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
#: 2D picture formats: read as one grey slice, 1 mm pixels unless the caller gives a spacing.
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Every extension the reader opens (DICOM files, Analyze ``.hdr``/``.img``, Siemens ``.ima`` included).
READABLE_SUFFIXES = WRITABLE_SUFFIXES + (".seg.nrrd", ".dcm", ".ima", ".img", ".hdr") + PICTURE_SUFFIXES
#: Extensions of two parts: checked before the one-part extension they end with.
COMPOUND_SUFFIXES = (".seg.nrrd", ".nii.gz")
#: ``input.content`` of a package that classifies the mask of one structure (the adrenal models), not a scan: its
#: input is a label map, which the core cuts about the structure (:func:`.preprocessing.mask_input.image_for_model`).
MASK_CONTENT = "binary_mask"
#: A segmentation class whose validation Dice (as its package records it) is below this is named in ``segment``'s
#: caveat and marked in the Slicer panel: its segment overlaps the reference less than it misses it, so its volume
#: is not a measurement.
LOW_DICE = 0.5


def chosen_on_validation(metrics: Mapping[str, Any], training: Mapping[str, Any] | None = None) -> bool:
    """Whether a package's recorded validation figures also chose its checkpoint: they are the best of several
    looks at the same data, so optimistic, and whatever shows them says so. ``metrics.selected_by`` reads ``val
    <monitor>`` where ``train`` and ``finetune`` wrote it; a package made before finetune wrote it says the same by
    its ``training`` block (a monitor other than ``last`` and a best epoch: the bundled ts-organs-seg 1.0.0, best
    epoch 38 of 58 by its slab's Dice)."""
    if metrics.get("selected_by") is not None:
        return str(metrics["selected_by"]).startswith("val ")
    training = training or {}
    return training.get("monitor") not in (None, "last") and training.get("best_epoch") is not None


#: The scores a model list shows of a package's ``metrics`` (not its bookkeeping: train_time_s, n, best_epoch).
VALIDATION_FIGURES = ("auc", "balanced_accuracy", "accuracy", "dice", "hd95_mm")


def validation_caveats(metrics: Mapping[str, Any], training: Mapping[str, Any] | None = None) -> list[str]:
    """What must be said beside a package's validation figures wherever they are shown: chosen on them
    (:func:`chosen_on_validation`: optimistic), not held out (``metrics.held_out`` false, with its note)."""
    about = []
    if chosen_on_validation(metrics, training):
        about.append("the checkpoint was chosen on them, so optimistic")
    if metrics.get("held_out") is False:
        about.append(f"NOT held out: {metrics.get('held_out_note') or 'the model had trained on these voxels'}")
    return about


def validation_summary(metrics: Mapping[str, Any] | None, training: Mapping[str, Any] | None = None) -> str:
    """One line on a package's validation figures for a model list: the scores of :data:`VALIDATION_FIGURES` with
    :func:`validation_caveats`, or the package's ``metrics.note`` (a fine-tune without validation data: "no
    validation data: not scored") when it records no score."""
    metrics = metrics if isinstance(metrics, Mapping) else {}
    figures = [f"HD95 {float(metrics[key]):.1f} mm" if key == "hd95_mm" else f"{key} {float(metrics[key]):.2f}"
               for key in VALIDATION_FIGURES
               if isinstance(metrics.get(key), (int, float)) and not isinstance(metrics.get(key), bool)]
    if not figures:
        return str(metrics.get("note") or "no validation figures recorded")
    about = validation_caveats(metrics, training)
    return f"Validation figures{' (' + '; '.join(about) + ')' if about else ''}: {', '.join(figures)}."


def finding_words(finding: Mapping[str, Any]) -> str:
    """The finding in words, the same in the printed lines, the demo and the HTML report: the run's slices and
    superior range, that it is the longest run when other slices are read as the label too, and the caveat."""
    f = finding
    words = (f"{f['label']} on axial slices {f['first_index']}-{f['last_index']} counted from the most inferior "
             f"(S {f['from_mm']:.1f} to {f['to_mm']:.1f} mm)")
    if f.get("slices_with_label", f["slices"]) > f["slices"]:
        words += (f", the longest run of consecutive slices read as {f['label']} ({f['slices']} slices; "
                  f"{f['slices_with_label']} in all)")
    return words + (f"; {f['caveat']}" if f.get("caveat") else "")


def suffix_of(path: str | Path) -> str:
    """The file's extension as the reader and writer see it, lower case: ``.nii.gz`` and ``.seg.nrrd`` whole."""
    name = Path(path).name.lower()
    for ext in COMPOUND_SUFFIXES:
        if name.endswith(ext):
            return ext
    return Path(name).suffix


def unwritable_reason(path: str | Path) -> str | None:
    """Why a scan cannot be written to ``path`` (its extension), or ``None`` when it can: the one wording of the
    image writer and of the commands that check their output before any work."""
    suffix = suffix_of(path)
    if suffix in WRITABLE_SUFFIXES:
        return None
    if suffix == ".seg.nrrd":   # ends in .nrrd, but Slicer reads it as segments, not as a scan
        return (f"a .seg.nrrd is a segmentation, not a scan; write the scan as one of {', '.join(WRITABLE_SUFFIXES)} "
                "(e.g. .nrrd)")
    return f"unsupported output format {suffix or '(none)'}; use one of {', '.join(WRITABLE_SUFFIXES)}"


def output_stem(path: str | Path) -> str:
    """The base name of a scan's outputs (``<stem>.json``, ``<stem>_heatmap.nrrd`` ...): the file name without a
    readable extension (``scan`` for ``scan.nii.gz``, ``scan.png`` or ``scan.ima``), the file name without its last
    extension otherwise; a folder (a DICOM series) keeps its own name, and so does a file whose last "extension" is
    all digits (a DICOM file named by its UID, ``CT.1.3.12.2.1107.5.1.4.60064.300000221208``, or ``IM.0001``): two
    slices of one series must not share ``CT.1.3.12.2.1107.5.1.4.60064``."""
    p = Path(path)
    if p.is_dir():
        return p.name
    suffix = suffix_of(p)
    if suffix in READABLE_SUFFIXES:
        return p.name[: -len(suffix)]
    return p.name if suffix[1:].isdigit() else p.stem


#: Files written for one scan, ``<stem><suffix>`` in the output folder, by role.
OUTPUT_SUFFIXES = {
    "result": ".json",                    # classify: label, probabilities, explain, uncertainty, output paths
    "heatmap": "_heatmap.nrrd",           # classify: float32 0..1 on the scan's own grid
    "heatmap_png": "_heatmap.png",        # classify: three planes through the heatmap's peak
    "report": "_report.html",             # classify --report / demo
    "segment_labels": "_segments.json",   # classify --segments (ROI classifier)
    "robustness": "_robustness.json",     # robustness --input
    "robustness_png": "_robustness.png",
    "perturbation": "_perturbation.nrrd",  # robustness --input --write-perturbation
}


def output_file(stem: str, role: str) -> str:
    """The file name of output ``role`` (a key of :data:`OUTPUT_SUFFIXES`) for outputs named ``stem``."""
    return f"{stem}{OUTPUT_SUFFIXES[role]}"


#: ``classify --explain`` choices; ``none`` makes no heatmap.
EXPLAIN_METHODS = ("gradcam", "gradcampp", "attention", "none")
#: The explanations computed from gradients at a target layer (any network); ``attention`` needs a model with one.
GRADCAM_METHODS = ("gradcam", "gradcampp")
#: ``classify --uncertainty`` choices; ``auto``: MC dropout for volume models with dropout, else calibration only.
UNCERTAINTY_MODES = ("auto", "none", "mc-dropout", "tta")
#: ``--progress`` choices of every command.
PROGRESS_MODES = ("json", "bar", "none")
#: The id -> name tables of plain label maps that ``--label-table`` (finetune, classify --segments) reads
#: (:func:`.inference.roi_classify.read_label_table`), in the options' help.
LABEL_TABLE_FORMATS = ("JSON {\"5\": \"liver\"} (FILE.json#KEY picks a nested table, e.g. label_names.json#total) or a "
                       "Slicer color table (.ctbl/.txt lines 'value name r g b a')")

#: Training epochs: a whole number from 1 to this (train, fine-tune and the Slicer panel's epochs field).
MAX_EPOCHS = 100_000
#: Epochs a fine-tuning run trains when nothing says otherwise (command line, config file and Slicer panel alike).
FINETUNE_EPOCHS = 20


#: CPU threads a command may be given (``--threads``): from 1 to this.
MAX_THREADS = 1024


def bounded_int(low: int, high: int, what: str = "a whole number"):
    """An argparse ``type`` reading a whole number from ``low`` to ``high``: an option's bound is checked when the
    command line is read, before anything is allocated or run."""
    import argparse

    def read(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low} to {high}, got {value}")
        return value

    read.__name__ = what   # argparse names the type in its own messages
    return read


#: ``--threads`` as argparse reads it: a whole number from 1 to :data:`MAX_THREADS` (torch refuses 0 and below only
#: once training has begun).
thread_count = bounded_int(1, MAX_THREADS, "a whole number of threads")


def reproduce_command(words: Sequence[str], options: Mapping[str, Any]) -> str:
    """The command that reproduces a training run, for its package's provenance and model card:
    ``meddeeprecog WORDS`` and each of ``options`` given (``{"package_dest": "cat"}`` -> ``--package-dest cat``;
    ``None`` is an option not given), shell-quoted. ``train`` and ``robustness --train-config`` both record theirs
    here, so neither drops an option that decides the run (``--epochs``) or where it went; options that do not
    (``--progress``, ``--resume``: a resumed run ends where an uninterrupted one would) are not passed."""
    import shlex

    parts = ["meddeeprecog", *words]
    for name, value in options.items():
        if value is not None:
            parts += [f"--{name.replace('_', '-')}", str(value)]
    return " ".join(shlex.quote(str(p)) for p in parts)


def slice_words(record: Mapping[str, Any] | None) -> str:
    """``slice 17 (S = 32.5 mm)`` for a one-slice result's ``slice`` record (``classify --slice-mm``, the panel's
    Classify current slice), else ``""``: one wording for the core's lines and the panel's."""
    if not isinstance(record, Mapping) or "index" not in record:
        return ""
    return f"slice {record['index']} (S = {float(record.get('position_mm', 0.0)):.1f} mm)"
