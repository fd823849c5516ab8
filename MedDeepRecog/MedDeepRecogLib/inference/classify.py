"""Classify one scan with a model package: the plain functions behind ``meddeeprecog classify``.

``classify_scan`` reads the scan, prepares the model input (package ``input``: pipeline, then slices or a volume),
predicts, explains in the same pass, and resamples the heatmap onto the scan's own grid. ``write_outputs`` writes
``<name>.json``, ``<name>_heatmap.nrrd`` and ``<name>_heatmap.png`` atomically (contract: docs/worker-protocol.md).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import SimpleITK as sitk

# finding_words lives in contract (the Slicer panel words the finding too, without torch); imported from here still
from ..contract import EXPLAIN_METHODS, GRADCAM_METHODS, finding_words, output_file, output_stem  # noqa: F401
from ..devices import resolve_device
from ..errors import ConfigError, InputImageError, ModelPackageError
from ..io import atomic_output, atomic_write_json, image_notes, read_image, validate_intensities
from ..io.dicom_read import dicom_modality
from ..io.image_content import label_map_values
from ..io.geometry import Geometry, lps_view
from ..io.slice_grid import acquired_grid
from ..packages.package import target_layer_of  # the check models --verify makes too
from ..preprocessing.pipeline import run_input_pipeline
from .model_input import (ModelGrid, SliceInput, as_volume, image_for_model, is_hounsfield, nearest_axial_slice,
                          slices_from_image, volume_from_image, whole_image_is_body)
from .predict import decide, predict_slices, predict_volume, slice_runs

log = logging.getLogger(__name__)

ProgressFn = Callable[..., None]

#: Heatmaps above this many voxels are written without compression (see ``_write_heatmap``).
_FAST_COMPRESSION_VOXELS = 20_000_000
#: ``explain.note`` of a heatmap that is 0 everywhere (Grad-CAM clips negative evidence to 0): it is written, but
#: shows nothing, and its faithfulness is not scored (deleting "the hottest voxels first" would be a random order)
HEATMAP_EMPTY_NOTE = ("heatmap empty: the method found no evidence for the label on this input (0 everywhere); "
                      "it shows nothing and its faithfulness is not scored")


@dataclass
class ClassificationResult:
    """Everything ``classify_scan`` found for one scan (``to_json`` gives the contract's JSON).

    Attributes:
        input: the scan's path (or ``"<image>"``); ``name``: base name for the output files.
        model: ``{"id", "version"}``; ``class_names`` in model order; ``probabilities`` ``(K,)``.
        decision: ``{"label", "top_class", "confidence", "uncertain", "reasons"}`` (see ``predict.decide``).
        per_slice: per-slice labels (slice models) or attention weights (CNN-LSTM).
        explain: ``{"method", ...}``; ``heatmap``: float32 0..1 on the scan's grid, or ``None``.
        model_map / model_grid: the model-space map and where it sits (for faithfulness scores and checks).
        image: the scan (``None`` unless given as an image or ``keep_image``); ``overlay``: (scan, heatmap)
            :class:`~MedDeepRecogLib.explain.overlay.Planes` through ``heatmap``'s peak on the scan's grid
            (:func:`~MedDeepRecogLib.explain.overlay.peak_view_index`); ``timing_s``: seconds per stage.
        uncertainty: temperature-scaled probabilities, predictive entropy, ``low_confidence`` and MC-dropout / TTA
            spread (:func:`.trust.scan_uncertainty`), or ``None``.
        inputs: a multi-modal (fusion) case's scans, one ``{"modality", "path" (None: not given),
            "modality_guess"}`` per modality the model takes (``input`` is the first's path), else ``None``.
    """

    input: str
    name: str
    model: dict
    class_names: list[str]
    probabilities: np.ndarray
    decision: dict
    per_slice: list = field(default_factory=list)
    explain: dict = field(default_factory=dict)
    heatmap: sitk.Image | None = None
    model_map: np.ndarray | None = None
    model_grid: ModelGrid | None = None
    model_input: Any = None
    image: sitk.Image | None = None
    overlay: Any = None
    modality_guess: str = "unknown"
    timing_s: dict = field(default_factory=dict)
    uncertainty: dict | None = None
    input_notes: list = field(default_factory=list)
    #: a gapped DICOM series read with --allow-slice-gaps: the true slice grid the heatmap NRRD is written on
    #: (``io.slice_grid``; the heatmap itself stays on the scan's grid for everything measured on it)
    acquired: Any = None
    input_dimension: int = 3
    slice: dict | None = None  # classify --slice-mm: {"index", "position_mm"} of the one slice classified
    finding: dict | None = None  # slice models on a volume: the slices that carry the finding (see finding_range)
    route: dict | None = None  # --model auto: the chosen model and why (inference.route)
    temperature: float = 1.0  # the package's fitted temperature (1.0: not calibrated); see network_scale_note
    registration: dict | None = None  # fusion with --register: what it did (fusion.grid.registration_record)
    feature_maps: np.ndarray | None = None  # slice models: Grad-CAM on the target layer's grid (faithfulness reuses it)
    voting_logits: np.ndarray | None = None  # slice models: the voting slices' logits (predict.Prediction)
    voting: np.ndarray | None = None  # slice models: (N,) bool, the slices that voted (predict.Prediction)
    decision_context: "DecisionContext | None" = None  # what the decision read besides the network's output
    inputs: list | None = None  # a multi-modal case: [{"modality", "path", "modality_guess"}] per model modality
    min_probability: float | None = None  # the package's decision threshold on ``confidence`` (None: it has none)

    @property
    def label(self) -> str:
        return self.decision["label"]

    def probability_map(self) -> dict[str, float]:
        return {c: round(float(p), 6) for c, p in zip(self.class_names, self.probabilities)}

    def to_json(self, outputs: dict[str, str | None] | None = None) -> dict[str, Any]:
        return {
            "input": self.input,
            "model": self.model,
            "label": self.decision["label"],
            "top_class": self.decision["top_class"],
            "confidence": self.decision["confidence"],
            "confidence_basis": confidence_basis(self),
            "probabilities_basis": probabilities_basis(self),
            "uncertain": self.decision["uncertain"],
            "uncertain_reasons": self.decision["reasons"],
            "modality": self.decision.get("modality"),
            "slice_agreement": self.decision.get("slice_agreement"),
            "section_mm": self.decision.get("section_mm"),
            "regions": self.decision.get("regions"),
            "probabilities": self.probability_map(),
            "per_slice": self.per_slice,
            **({"slice": self.slice} if self.slice else {}),
            **({"finding": self.finding} if self.finding else {}),
            **({"route": self.route} if self.route else {}),
            **({"inputs": self.inputs} if self.inputs else {}),
            **({"registration": self.registration} if self.registration else {}),
            "input_dimension": self.input_dimension,
            "input_notes": self.input_notes,
            "modality_guess": self.modality_guess,
            "explain": self.explain,
            "uncertainty": self.uncertainty,
            "timing_s": {k: round(v, 4) for k, v in self.timing_s.items()},
            "outputs": outputs or {},
        }


def voting_slices(result: "ClassificationResult") -> int:
    """How many slices voted on the scan's label (0 for a volume model)."""
    return sum(1 for r in result.per_slice if r.get("voted", True) and "label" in r)


#: How the figures of a result that reports no class (out of domain) are introduced, wherever they are shown:
#: the printed probabilities, the JSON's ``confidence_basis`` / ``probabilities_basis`` and the HTML report.
NOT_A_FINDING = "the model's output, not a finding"


def _no_class(result: "ClassificationResult") -> bool:
    return result.decision["label"] == OUT_OF_DOMAIN


def _outside_words(result: "ClassificationResult", n: int) -> str:
    """Why the slices' figures are no finding: none of them is in the domain, or the scan as a whole is not."""
    domain = result.decision.get("domain") or {}
    if n > 1 and domain.get("slices_in_domain") == 0:
        return f"none of the {n} slices is in this model's domain, so none of them is a vote for a class"
    return "the scan is outside this model's domain, so no class is reported"


def _min_probability(meta: dict) -> float | None:
    """The package's decision threshold on ``confidence`` (``decision.min_probability``), or ``None``."""
    value = (meta.get("decision") or {}).get("min_probability")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def slice_words(result: "ClassificationResult") -> str | None:
    """``slice 17 (S = 32.5 mm)`` for a ``--slice-mm`` run (one axial slice classified), else ``None``
    (:func:`..contract.slice_words`, the panel's wording too)."""
    from ..contract import slice_words as words

    return words(result.slice) or None


def confidence_basis(result: "ClassificationResult") -> str:
    """What ``confidence`` is, in words (the one number the CLI prints, the PNG and the report show); for a result
    that reports no class, that the figure is the model's output and no confidence in a finding. A ``--slice-mm``
    run's figure is that one slice's probability, not the scan's."""
    top = result.decision["top_class"]
    n = voting_slices(result)
    one = slice_words(result)
    of = f"the probability of {one} alone (not the scan's)" if one else "the scan's probability"
    if _no_class(result):
        over = f"the mean over {n} slices of their probability" if n > 1 else of
        return f"{NOT_A_FINDING}: {over} for {top}, but {_outside_words(result, n)}"
    note = network_scale_note(result)
    if n > 1:
        note = note or "each slice's own probability is the network's"
        threshold = ("" if result.min_probability is None else
                     f": the figure the model's minimum-probability threshold ({result.min_probability:.2f}) is "
                     "set on (one held-out image's probability)")
        return (f"mean over the {n} voting slices of each slice's probability for {top} (temperature-scaled when "
                f"the package is calibrated; {note}){threshold}")
    return f"{of} for {top}" + (f" (temperature-scaled; {note})" if note else "")


def network_scale_note(result: "ClassificationResult") -> str | None:
    """The one rule for which figures a calibrated package scales: ``confidence``, ``probabilities`` and the
    uncertainty block are temperature-scaled (what ``calibrate`` fitted), while ``per_slice`` probabilities (each
    slice's, or the one picture's) and the faithfulness curves stay the network's own softmax: they describe the
    network (which slice it leans on, how its output falls as heat is deleted), and the recorded per-slice figures
    of the bundled packages are kept. The note says so wherever a calibrated result shows both (``None`` when the
    package is not calibrated, or the result has neither)."""
    if result.temperature == 1.0:
        return None
    parts = [p for p, has in (("the per-slice probabilities", any("probability" in r for r in result.per_slice)),
                              ("the faithfulness curves", bool(result.explain.get("faithfulness")))) if has]
    if not parts:
        return None
    return (f"{' and '.join(parts)} are the network's own softmax, before the package's temperature "
            f"{result.temperature:g}")


def probabilities_basis(result: "ClassificationResult") -> str:
    """How ``probabilities`` aggregate the slices (they choose ``top_class``)."""
    n = voting_slices(result)
    if n > 1:
        basis = (f"softmax of the mean log-probability over the {n} {'' if _no_class(result) else 'voting '}slices (a "
                 f"geometric mean: one slice confidently saying otherwise pulls it down); it picks the label's "
                 f"class, and differs from the confidence")
    else:
        basis = "softmax of the model's output (temperature-scaled when the package is calibrated)"
        if slice_words(result):
            basis = f"{slice_words(result)} alone, not the scan: {basis}"
    return f"{NOT_A_FINDING} ({basis}): {_outside_words(result, n)}" if _no_class(result) else basis


def probabilities_label(result: "ClassificationResult") -> str:
    """What the printed probabilities are, in a few words (the command line's and the demo's probability line). For
    a slice stack they differ from the headline's confidence (a geometric mean against a plain mean of the slices'
    probabilities): the line names the confidence and what it is, so "confidence 0.78" above "glioma 0.821" does
    not read as two figures for one thing."""
    n = voting_slices(result)
    if n <= 1:
        label = "probabilities"
    elif _no_class(result):
        label = f"scan probabilities (geometric mean over {n} slices)"
    else:
        d = result.decision
        label = (f"scan probabilities (geometric mean over the {n} voting slices, which picks the label; the "
                 f"confidence {d['confidence']:.2f} is their plain mean for {d['top_class']})")
    return f"{NOT_A_FINDING} ({label})" if _no_class(result) else label


def headline(result: "ClassificationResult") -> str:
    """``MRBrain, confidence 0.83`` (or ``uncertain (top class MRBrain, confidence 0.41)``, or ``out-of-domain: no
    class reported``): the same number in the printed line, the PNG title, the HTML report and ``confidence`` in
    the JSON."""
    return decision_headline(result.decision)


def decision_headline(d: dict) -> str:
    """:func:`headline` of a decision ``{"label", "top_class", "confidence"}`` (classify's, or one ``robustness``
    reports for an attacked scan)."""
    if d["label"] == OUT_OF_DOMAIN:  # no class is reported, so no class's confidence either (the JSON keeps both)
        return f"{OUT_OF_DOMAIN}: no class reported"
    if d["label"] == d["top_class"]:
        return f"{d['label']}, confidence {d['confidence']:.2f}"
    return f"{d['label']} (top class {d['top_class']}, confidence {d['confidence']:.2f})"


def heatmap_warning(result: "ClassificationResult") -> str | None:
    """The warning line for an empty heatmap (:data:`HEATMAP_EMPTY_NOTE`) or one whose faithfulness score is
    negative, else ``None`` (:func:`..explain.faithfulness.unfaithful_warning`)."""
    from ..explain.faithfulness import unfaithful_warning

    if result.explain.get("empty"):
        return HEATMAP_EMPTY_NOTE
    return unfaithful_warning(result.explain.get("faithfulness"))


_MODEL_CACHE: dict[tuple, Any] = {}


def model_for(package, device: str):
    """The package's network on ``device`` in eval mode, built once per package and device (batch runs of one
    package reuse it; asking for another package frees the previous one), fused for inference
    (:func:`..models.eval_fusion.fuse_for_inference`: batch norms folded into their convolutions, in-place ReLUs;
    the same outputs with less memory traffic; this model only predicts, it never trains)."""
    from ..models.eval_fusion import fuse_for_inference

    key = (str(package.path), package.meta["weights"]["sha256"], device)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE.clear()  # keep one model: batch runs use one package
        model = package.build_model(device).eval()
        fuse_for_inference(model, keep=_explained_layers(model, package))
        _MODEL_CACHE[key] = model
    return _MODEL_CACHE[key]


def _explained_layers(model, package) -> list:
    """The modules the package's Grad-CAM target layer names (none when it names none, or nothing that exists:
    classify reports that itself)."""
    from ..explain.gradcam import resolve_layers

    layer = (package.meta.get("explain") or {}).get("target_layer")
    try:
        return [m for _, m in resolve_layers(model, layer)] if layer else []
    except KeyError:
        return []


def as_package(package):
    """A loaded ``ModelPackage`` as given, or the one an id / path names."""
    if isinstance(package, (str, Path)):
        from ..packages import load_package

        return load_package(package)
    return package


def check_classifier(package) -> None:
    """Refuse packages ``classify`` cannot apply to a whole scan, saying which command can.

    Raises:
        ModelPackageError: a segmentation model (``task == "segmentation"``), an ROI classifier
            (``input.kind == "roi3d"``: it classifies segments), or a multi-modal package (needs ``second``).
    """
    task = package.meta.get("task", "classification")
    ref = f"{package.id}@{package.version}"
    if task == "segmentation":
        raise ModelPackageError(f"model {ref} is a segmentation model, not a classifier; run "
                                f"`meddeeprecog segment INPUT --model {package.id} --out OUTPUT.seg.nrrd` instead")
    if task != "classification":
        raise ModelPackageError(f"model {ref} has task {task!r}; classify needs a classification model")
    if package.input_spec.get("kind") == "roi3d":
        raise ModelPackageError(
            f"model {ref} is an ROI classifier (input.kind roi3d, from `meddeeprecog finetune --task classify`): it "
            "classifies segments of a segmentation, not whole scans; apply it with `meddeeprecog classify SCAN "
            f"--model {package.id}@{package.version} --segments SEG.seg.nrrd --out DIR` "
            "(in Python: MedDeepRecogLib.inference.roi_classify.classify_segments)")


def classify_scan(path_or_image: str | Path | sitk.Image, package, *, explain: str = "gradcam",
                  device: str = "auto", progress: ProgressFn | None = None, name: str | None = None,
                  keep_image: bool = False, uncertainty: str = "auto", faithfulness: bool = True,
                  lesion: sitk.Image | None = None, spacing: tuple[float, float] | None = None,
                  slice_mm: float | None = None, source: str | Path | None = None,
                  lesion_source: str | Path | None = None) -> ClassificationResult:
    """Classify one scan and explain the prediction.

    Args:
        path_or_image: a scan file / DICOM folder, or a SimpleITK image (3D; 2D for slice models).
        source: for an image already read (e.g. by the router), the file it came from: errors, the output name
            and the result's ``input`` name it, as if the path had been given.
        package: a loaded ``ModelPackage``, or an id / path for ``load_package``.
        explain: ``gradcam``, ``gradcampp``, ``attention`` (models with attention) or ``none``.
        device: ``auto``, ``cpu`` or ``cuda``.
        progress: ``progress(stage, fraction, **extra)`` with fraction 0..1 of this scan.
        name: output base name (default from the path).
        keep_image: keep the scan read from a path in ``result.image`` (by default its voxels are released before
            the full-size heatmap is made, thin slabs kept for the overlay's planes, to bound peak memory).
        uncertainty: ``auto``, ``none``, ``mc-dropout`` or ``tta`` (see :func:`.trust.scan_uncertainty`); the
            package's calibrated temperature is applied to the probabilities in every case.
        faithfulness: score the heatmap (deletion / insertion AUC, :func:`.trust.heatmap_faithfulness`).
        lesion: optional lesion label image (any grid): pointing game and heatmap mass inside it.
        lesion_source: the file ``lesion`` was read from, named when the label does not fit the scan.
        spacing: pixel size (mm, (x, y)) of a PNG/JPEG input, which stores none (default 1 mm).
        slice_mm: slice models only: classify just the axial slice nearest this superior coordinate (mm, LPS = RAS
            S; Slicer's red slice offset); the heatmap is on the scan's grid with heat on that slice only.

    Returns:
        :class:`ClassificationResult` with the heatmap on the scan's own grid.

    Raises:
        InputImageError: unreadable or unusable scan. ModelPackageError / ConfigError: a model that does not fit
        the scan (channels, dimensions, no attention), a broken package.
    """
    if explain not in EXPLAIN_METHODS:
        raise ConfigError(f"unknown explanation {explain!r}; choose one of {', '.join(EXPLAIN_METHODS)}")
    report = progress or (lambda *a, **k: None)
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    package = as_package(package)
    check_classifier(package)
    if package.input_spec.get("modalities") and len(package.input_spec["modalities"]) > 1:
        raise ModelPackageError(f"model {package.id} takes {len(package.input_spec['modalities'])} modalities "
                                f"({', '.join(package.input_spec['modalities'])}); give the second one with "
                                "--second-input SCAN (MedDeepRecogLib.fusion.classify_fusion)")
    spec = package.input_spec
    kind = spec.get("kind")
    given = isinstance(path_or_image, sitk.Image)
    if given:
        image, src = path_or_image, ("<image>" if source is None else str(source))
    else:
        src = str(path_or_image)
        report("read", 0.0)
        image = read_image(path_or_image, spacing=spacing)
    name = name or (output_stem(src) if src != "<image>" else "image")
    where = None if src == "<image>" else src
    notes = image_notes(image)
    # a gapped series is read on an evenly stretched grid: the heatmap NRRD goes on the true one, decided before work
    acquired = acquired_grid(image, where, "the heatmap NRRD",
                             "leave the gap's neighbourhood out of the series or fill the gap, then classify again")
    if acquired is not None:
        notes.append(acquired.note("the heatmap NRRD", "no heat (0)"))
    if image.GetDimension() > 3:  # a singleton 4th axis is dropped, a 4D series refused (one line), before the
        image = as_volume(image, where, allow_2d=True)  # slice checks read the image's planes
    input_dimension = image.GetDimension()
    if kind == "slices2d":
        _check_slice_input(image, package, where)
    if slice_mm is not None and kind != "slices2d":
        raise ConfigError(f"--slice-mm classifies one slice with a 2D (slice) model; {package.id} is a "
                          f"{kind} model")
    from ..io import is_picture

    picture = is_picture(image)  # as_volume keeps the voxels and geometry, not the reader's notes
    image = as_volume(image, where, allow_2d=(kind == "slices2d"))
    validate_intensities(image, where)
    # a mask model's input is its structure cut about it; the heatmap still goes on the user's own grid (``image``)
    model_image, content_notes, outside_domain = image_for_model(image, spec, where)
    notes.extend(content_notes)
    if lesion is not None:
        lesion = lesion_on_scan_grid(lesion, image, notes, lesion_source)
    timing["read"] = time.perf_counter() - t0

    report("preprocess", 0.15)
    t = time.perf_counter()
    prepared = run_input_pipeline(model_image, spec.get("pipeline"))
    model_image = None
    chosen_slice = None
    if kind == "slices2d":
        if slice_mm is not None:
            k, position = nearest_axial_slice(prepared, slice_mm, where)
            chosen_slice = {"index": k, "position_mm": round(position, 3), "requested_mm": float(slice_mm)}
        inp = slices_from_image(prepared, spec, only_slice=None if chosen_slice is None else chosen_slice["index"],
                                whole_image_body=whole_image_is_body(package.meta.get("modality")))
    elif kind in ("volume3d", "roi3d"):
        if image.GetSize()[2] < 2:
            raise InputImageError(f"model {package.id} needs a volume, but the scan has a single slice "
                                  f"(size {list(image.GetSize())})", src)
        inp = volume_from_image(prepared, spec)
    else:
        raise ModelPackageError(f"model {package.id}: unsupported input kind {kind!r}")
    _check_fits(package, inp)
    if isinstance(inp, SliceInput) and inp.table_blanked is not None and inp.table_blanked.any():
        notes.append(f"the CT table under the patient was blanked before classifying on "
                     f"{int(inp.table_blanked.sum())} of {len(inp.table_blanked)} slices (the model was trained "
                     "without it: input.slices.remove_table)")
    timing["preprocess"] = time.perf_counter() - t

    report("predict", 0.35)
    t = time.perf_counter()
    dev = str(resolve_device(device))
    model = model_for(package, dev)
    target_layer = target_layer_of(package, model) if explain in GRADCAM_METHODS else None
    if kind == "slices2d":
        from ..uncertainty.report import package_temperature

        pred = predict_slices(model, inp, explain=explain, target_layer=target_layer,
                              class_names=package.class_names, device=dev, domain=package.domain,
                              heat_inset_mm=float((package.meta.get("explain") or {}).get("heat_inset_mm", 0.0)),
                              temperature=package_temperature(package.meta))
    else:
        pred = predict_volume(model, inp, explain=explain, target_layer=target_layer,
                              class_names=package.class_names, device=dev)
    timing["predict"] = time.perf_counter() - t
    from ..uncertainty import apply_temperature

    raw_probabilities = pred.probabilities
    pred.probabilities = apply_temperature(pred.probabilities, package.meta)  # identity when not calibrated

    modality = "CT" if is_hounsfield(image) else "MR"  # "MR" here means: not in HU
    modality_guess = _modality_guess(image, modality, picture)
    context = DecisionContext(hounsfield=modality, picture=picture, slices=isinstance(inp, SliceInput),
                              n_slices=int(inp.valid.sum()) if isinstance(inp, SliceInput) else int(image.GetSize()[2]),
                              n_classified=len(pred.per_slice), domain=pred.domain, section_mm=pred.section_mm,
                              outside_domain=outside_domain)
    decision = scan_decision(package, pred, context)
    if isinstance(inp, SliceInput):
        g = inp.grid
        for k, rec in enumerate(pred.per_slice):  # centre of each classified slice, LPS mm
            centre = g.origin + g.direction @ np.array([(g.size[0] - 1) / 2 * g.spacing[0],
                                                        (g.size[1] - 1) / 2 * g.spacing[1], k * g.spacing[2]])
            rec["lps_mm"] = [round(float(v), 2) for v in centre]
            rec["position_mm"] = rec["lps_mm"][2]  # superior coordinate (LPS z = RAS S): the axial slice offset
        decision["regions"] = pred.regions

    heatmap = None
    overlay = None
    explain_info: dict[str, Any] = {"method": explain}
    if pred.heatmap is not None:
        report("heatmap", 0.6)
        t = time.perf_counter()
        from ..explain.overlay import ScanSlabs, peak_view_index, planes_through
        from .heatmap import heatmap_on_input_grid

        # The overlay's planes go through the peak of the heatmap as written (on the scan's grid), not the model
        # grid's: resampling moves the hottest voxel by a voxel or so, and the PNG must match the NRRD. The scan is
        # let go of before the full-size float32 heatmap exists (peak memory about 2.5x the input, not 3.4x), so thin
        # slabs of it are kept around the model map's peak; the written peak lies within a voxel of it (linear
        # interpolation peaks next to a grid node), and in the rare case it does not (a tied maximum elsewhere) the
        # scan is read again.
        prepared = None
        release = not keep_image and not given
        geometry = Geometry.of(image)
        slabs = ScanSlabs.cut(image, _peak_in_view(pred.heatmap, pred.grid, image,
                                                   None if chosen_slice is None else chosen_slice["index"]))
        if release:
            image = None
        heatmap = heatmap_on_input_grid(pred.heatmap, pred.grid, geometry)
        if chosen_slice is not None:
            from .heatmap import keep_axial_slice
            heatmap = keep_axial_slice(heatmap, chosen_slice["index"])
        peak = peak_view_index(heatmap, none_if_empty=True)
        empty = peak is None
        # an empty map has no peak (argmax would be voxel 0, a corner): its planes go through the scan's centre
        if empty:
            peak = tuple(int(n) // 2 for n in lps_view(heatmap).array.shape)
        scan_planes = slabs.planes(peak)
        if scan_planes is None:
            scan = image if image is not None else as_volume(read_image(path_or_image, spacing=spacing), where,
                                                             allow_2d=(kind == "slices2d"))
            scan_planes = planes_through(scan, peak)
            del scan
        del slabs
        scan_planes.oriented = not picture
        overlay = (scan_planes, planes_through(heatmap, peak))
        timing["heatmap"] = time.perf_counter() - t
        explain_info.update({"class": package.class_names[pred.explained_class], **pred.extra})
        if empty:
            explain_info.update({"empty": True, "note": HEATMAP_EMPTY_NOTE})
    from ..uncertainty.report import package_temperature

    result = ClassificationResult(
        input=src, name=name, model={"id": package.id, "version": package.version},
        class_names=package.class_names, probabilities=pred.probabilities, decision=decision,
        per_slice=pred.per_slice, explain=explain_info, heatmap=heatmap, model_map=pred.heatmap,
        model_grid=pred.grid, model_input=inp, image=image, overlay=overlay,
        modality_guess=modality_guess,
        timing_s=timing, input_notes=notes, input_dimension=input_dimension, slice=chosen_slice, acquired=acquired,
        finding=finding_range(pred.per_slice, decision, package.class_names)
        if isinstance(inp, SliceInput) and len(pred.per_slice) > 1 else None, feature_maps=pred.feature_maps,
        voting_logits=pred.voting_logits, voting=pred.voting, decision_context=context,
        temperature=package_temperature(package.meta),
        min_probability=_min_probability(package.meta))
    report("trust", 0.7)
    t = time.perf_counter()
    _add_trust(result, package, model, target_layer, uncertainty=uncertainty, faithfulness=faithfulness,
               lesion=lesion, raw_probabilities=raw_probabilities)
    timing["trust"] = time.perf_counter() - t
    timing["total"] = time.perf_counter() - t0
    report("classified", 0.8, label=result.decision["label"])
    return result


def _add_trust(result: ClassificationResult, package, model, target_layer: str | None, *, uncertainty: str,
               faithfulness: bool, lesion: sitk.Image | None, raw_probabilities: np.ndarray) -> None:
    """Faithfulness (+ caption), lesion localisation and the uncertainty block; the package's low-confidence flag
    also makes the reported label ``uncertain`` (with the reason)."""
    from .trust import (faithfulness_caption, heatmap_faithfulness, heatmap_localisation, scan_lesion_reliance,
                        scan_uncertainty)

    if faithfulness and result.heatmap is not None and not result.explain.get("empty"):
        scores = heatmap_faithfulness(result, model, target_layer or package.target_layer)
        if scores is not None:
            if result.temperature != 1.0:   # the curves are the network's own softmax (network_scale_note)
                from ..uncertainty.report import UNCALIBRATED_SCALE

                scores["probability_scale"] = UNCALIBRATED_SCALE
            result.explain["faithfulness"] = scores
            result.explain["faithfulness_caption"] = faithfulness_caption(scores)
    if lesion is not None and result.heatmap is not None:
        result.explain["localisation"] = heatmap_localisation(result, lesion)
        reliance = scan_lesion_reliance(result, model, lesion)
        if reliance is not None:
            result.explain["localisation"]["lesion_reliance"] = reliance
    result.uncertainty = scan_uncertainty(result, model, package.meta, uncertainty,
                                          raw_probabilities=raw_probabilities)
    # the rule is part of the decision: --uncertainty none drops the figures from the JSON, not the rule
    mark_low_confidence(result.decision, result.uncertainty if result.uncertainty is not None
                        else low_confidence_figures(raw_probabilities, package.meta))


def low_confidence_figures(raw_probabilities: np.ndarray, meta: dict) -> dict:
    """The package's low-confidence figures (:func:`..uncertainty.report.calibration_figures`) of scan
    probabilities ``(K,)`` before temperature scaling, whose log serves as the scan's logits (the same softmax)."""
    from ..uncertainty.report import calibration_figures

    return calibration_figures(np.log(np.clip(np.asarray(raw_probabilities, dtype=np.float64), 1e-12, 1.0))[None],
                               meta)


def mark_low_confidence(decision: dict, uncertainty: dict | None) -> None:
    """The package's calibrated low-confidence rule: a predictive entropy at or above its threshold
    (``uncertainty["low_confidence"]``, :func:`..uncertainty.report.calibration_figures`) makes the reported label
    ``uncertain``, with the reason (an out-of-domain label stays: it says more than "unsure of the class")."""
    u = uncertainty or {}
    if u.get("low_confidence"):
        decision["reasons"] = [*decision["reasons"],
                               f"predictive entropy {u['predictive_entropy']:.2f} is at or above the model's "
                               f"low-confidence threshold {u['low_confidence_threshold']:.2f} (set on held-out images)"]
        decision["uncertain"] = True
        if decision["label"] != OUT_OF_DOMAIN:
            decision["label"] = "uncertain"


@dataclass
class DecisionContext:
    """What classify's decision reads about the scan besides the network's output (:func:`scan_decision`).

    Attributes:
        hounsfield: ``"CT"`` when the scan is in HU, else ``"MR"`` (not in HU); picture: a PNG/JPEG, whose grey
            levels say nothing of HU.
        slices: a slice model; n_slices: the slices with body (the scan's depth for a volume model);
            n_classified: the slices classified.
        domain: the package's out-of-domain check over the slices (``Prediction.domain``), or None.
        section_mm: the body box's smaller side (``Prediction.section_mm``), or None.
        outside_domain: why the input itself is outside the model's domain, as the input was prepared (a mask
            model's structure larger than its field of view: :func:`.model_input.image_for_model`), or None.
    """

    hounsfield: str
    picture: bool
    slices: bool
    n_slices: int
    n_classified: int = 0
    domain: dict | None = None
    section_mm: float | None = None
    outside_domain: str | None = None


def scan_decision(package, pred, context: DecisionContext) -> dict:
    """classify's decision on one scan: the package's decision rules (:func:`.predict.decide` on ``pred``'s
    temperature-scaled probabilities, slice agreement and confidence), then no class at all for a scan outside the
    model's domain (no slice passed the package's out-of-domain check; a CT in HU for an MR or ultrasound model;
    a mask model's structure larger than its field of view).
    The calibrated low-confidence rule comes after the uncertainty figures (:func:`mark_low_confidence`)."""
    decision = decide(pred.probabilities, package.class_names, package.meta.get("decision"),
                      agreement=pred.agreement, confidence=pred.slice_confidence, n_slices=context.n_slices,
                      modality=None if context.picture else context.hounsfield, section_mm=context.section_mm)
    if context.slices:
        decision["slice_agreement"] = round(pred.agreement, 4)
        decision["section_mm"] = context.section_mm
        if context.domain is not None:
            decision["domain"] = context.domain
            if context.domain["slices_in_domain"] == 0:
                _mark_out_of_domain(decision, _unlike_training_images(package, context.domain, context.n_classified))
    if context.hounsfield == "CT" and str(package.meta.get("modality") or "").upper() in ("MR", "US"):
        _mark_out_of_domain(decision, _wrong_modality(package))
    if context.outside_domain:
        _mark_out_of_domain(decision, context.outside_domain)
    return decision


def decision_for_logits(result: "ClassificationResult", package, logits) -> dict:
    """The decision classify would report had the network given ``logits`` on this scan's model input: per-slice
    logits ``(S, K)`` for a slice model (the slices that voted in ``result`` vote), the scan's logits ``(1, K)`` or
    ``(K,)`` for a volume model. Everything else the decision reads stays ``result``'s (its
    :class:`DecisionContext`: HU or not, the slices with body, the out-of-domain check, the body box), and the
    same rules apply as in :func:`classify_scan` (:func:`scan_decision`, temperature, and
    :func:`mark_low_confidence`, whatever ``--uncertainty`` gave ``result``). ``robustness --input`` compares these
    decisions: an attack "flips" the scan when the label classify reports changes."""
    import torch

    from ..uncertainty import apply_temperature
    from ..uncertainty.report import package_temperature
    from .predict import Prediction, slice_vote

    context = result.decision_context
    if context is None:
        raise ValueError("the classification result carries no decision context (not made by classify_scan)")
    logits = torch.as_tensor(logits).detach().float()
    if context.slices:
        pred, _ = slice_vote(logits, result.voting, package_temperature(package.meta))
    else:
        pred = Prediction(probabilities=torch.softmax(logits.reshape(1, -1), dim=1)[0].numpy())
    raw = pred.probabilities
    pred.probabilities = apply_temperature(raw, package.meta)
    decision = scan_decision(package, pred, context)
    mark_low_confidence(decision, low_confidence_figures(raw, package.meta))   # as classify applies it
    return decision


OUT_OF_DOMAIN = "out-of-domain"


def _modality_guess(image: sitk.Image, hounsfield_or_not: str, picture: bool) -> str:
    """The JSON's ``modality_guess``, as ``info`` reports it (:func:`..io.image_content.guess_modality`) but from the
    HU test already made on a subsample: the DICOM tag (CT, MR, US), else CT for HU, unknown for a picture, a label
    map (the masks the adrenal models classify) or a DICOM object tagged as another modality, else MR.
    ``hounsfield_or_not`` is classify's ``"CT"`` (HU) or ``"MR"`` (not HU), which its decision rules read."""
    tag = dicom_modality(image)
    if tag in ("CT", "MR", "US"):
        return tag
    if hounsfield_or_not == "CT":
        return "CT"
    return "unknown" if picture or tag or label_map_values(image) is not None else "MR"


#: How a reason for reporting no class begins (:func:`_mark_out_of_domain`).
OUT_OF_DOMAIN_REASON = "outside this model's domain: "


def _mark_out_of_domain(decision: dict, why: str) -> None:
    """Report no class: the scan is outside the model's domain, for the reason ``why``."""
    decision["reasons"] = [*decision["reasons"], f"{OUT_OF_DOMAIN_REASON}{why}"]
    decision["uncertain"], decision["label"] = True, OUT_OF_DOMAIN


def out_of_domain_reason(decision: dict) -> str | None:
    """Why classify reported no class for a scan (``decision`` as :func:`classify_scan` made it: the package's
    out-of-domain check, or a CT in HU for an MR / ultrasound model), in words; ``None`` for a scan within the
    model's domain. Other commands that run a package on a scan (``robustness --input``) report the same judgement
    from here rather than judging again."""
    if decision.get("label") != OUT_OF_DOMAIN:
        return None
    why = [r.removeprefix(OUT_OF_DOMAIN_REASON) for r in decision.get("reasons", [])
           if r.startswith(OUT_OF_DOMAIN_REASON)]
    return "; ".join(why) or "outside this model's domain"


def _unlike_training_images(package, domain: dict, n_slices: int) -> str:
    """Why a scan none of whose slices passed the package's out-of-domain check is outside the domain."""
    what = ("the image does not look" if n_slices == 1
            else f"none of the {domain['slices_checked']} slices checked looks")
    return (f"{what} like the images {package.id} was trained on "
            f"({package.meta.get('description', '').split('.')[0].strip()}); its class would be a guess")


def _wrong_modality(package) -> str:
    """Why a scan in Hounsfield units is outside an MR or ultrasound model's domain. Only this direction is judged:
    a picture or an MR volume is not in HU, but neither is an 8-bit CT export. (An MR padded with -1024 after
    resampling would read as HU; ``is_hounsfield`` samples the 0.5th percentile, so it takes a large pad.)"""
    return (f"the scan is CT in Hounsfield units (DICOM modality, or air below -500 HU), and {package.id} reads "
            f"{package.meta.get('modality')} images")


#: The class name that means "nothing found" (the lung and breast models'); a model without it names a finding on
#: every slice it reads.
NO_FINDING_CLASS = "normal"


def finding_range(per_slice: list[dict], decision: dict, class_names: Sequence[str] = ()) -> dict | None:
    """Which slices carry the reported finding: the longest run of consecutive voting slices whose own label is the
    scan's label, as axial indices and superior coordinates (mm, LPS z = RAS S). ``None`` without a label, and for
    a "normal" label (nothing found). A model without a "normal" class (the brain tumour model) labels every slice
    it reads with a finding, so its run is where it reads that class, not the lesion's extent: ``extent`` says which
    of the two the run is, and ``caveat`` says so in words."""
    label = decision.get("top_class") if decision.get("label") != OUT_OF_DOMAIN else None
    if label is None or label.lower() == NO_FINDING_CLASS:
        return None
    # the same runs as the JSON's ``regions`` (predict.label_runs), so the range printed is one of them
    runs = [r for r in slice_runs(per_slice) if r[0]["label"] == label]
    if not runs:
        return None
    best = max(runs, key=lambda r: (len(r), sum(x["probability"] for x in r)))
    lo, hi = sorted((best[0].get("position_mm"), best[-1].get("position_mm")), key=lambda v: (v is None, v))
    extent = any(c.lower() == NO_FINDING_CLASS for c in class_names)
    indices = [r["index"] for r in per_slice if r.get("voted", True) and r["label"] == label]
    return {"label": label, "first_index": best[0]["index"], "last_index": best[-1]["index"], "slices": len(best),
            "from_mm": lo, "to_mm": hi,
            "slices_with_label": len(indices), "label_indices": indices,
            # what each figure is, in the JSON itself: the printed range is the run, "in all" the label's slices
            "basis": (f"first_index..last_index (from_mm..to_mm): the longest run of consecutive voting slices read "
                      f"as {label}, the region of 'regions' printed as the finding; slices_with_label: every voting "
                      f"slice read as {label} (label_indices), in that run or not"),
            "extent": extent,
            **({} if extent else {"caveat": f"the model has no '{NO_FINDING_CLASS}' class, so every slice it reads "
                                            f"gets one of its classes: this is where it reads {label}, "
                                            "not the extent of a lesion"})}


def axial_panel_note(per_slice: Sequence[dict], planes: Any, target: str) -> str | None:
    """What the overlay's axial panel shows when its slice is read as another class than the heatmap's ``target``
    (the scan's label), else ``None``: the panel goes through the heatmap's peak, and brain1's "gradcam heatmap for
    glioma" showed slice 6, which the model itself reads as pituitary, as if it were glioma's evidence. The panel's
    slice is the per-slice record nearest its superior offset (``planes.offsets_mm[0]``, RAS S = ``position_mm``)."""
    offset = float(planes.offsets_mm[0]) if planes is not None and planes.n_axial > 1 else float("nan")
    placed = [r for r in per_slice if r.get("position_mm") is not None and "label" in r]
    if not np.isfinite(offset) or not placed:
        return None
    rec = min(placed, key=lambda r: abs(r["position_mm"] - offset))
    gaps = np.diff(sorted(r["position_mm"] for r in placed))
    if gaps.size and abs(rec["position_mm"] - offset) > 0.6 * float(gaps.min()):   # the panel is between records
        return None
    if rec["label"] == target:
        return None
    vote = "" if rec.get("voted", True) else ", a slice that did not vote"
    return (f"the axial panel's slice (S {rec['position_mm']:.1f} mm, index {rec['index']}) is itself read as "
            f"{rec['label']} (p {rec['probability']:.2f}{vote}): the heat on it is for {target}, the scan's label")


def axial_plane_size(image: sitk.Image) -> list[int]:
    """``[width, height]`` in pixels of the slices a 2D model reads: a 2D image's own plane; a volume's axial
    planes (the index axes nearest L and P, as :func:`..io.geometry.lps_view` orders them), whatever order the
    file stores its axes in."""
    from ..axes import lps_axis_order

    size = list(image.GetSize())
    if image.GetDimension() == 2:
        return size[:2]
    perm, _ = lps_axis_order(np.array(image.GetDirection(), dtype=float).reshape(3, 3))
    return [size[perm[0]], size[perm[1]]]


def slice_size_shortfall(image: sitk.Image, package) -> tuple[list[int], int] | None:
    """``(axial plane size, minimum side)`` when the planes a slice ``package`` reads in ``image``
    (:func:`axial_plane_size`) are smaller than its ``input.slices.min_pixels`` per side, else ``None``. Classify
    refuses such a scan (:func:`_check_slice_input`), and ``--model auto`` never routes one to that package."""
    from ..preprocessing.slices import min_slice_side

    minimum = min_slice_side(package.input_spec)
    size = axial_plane_size(image)
    return (size, minimum) if min(size) < minimum else None


def _check_slice_input(image: sitk.Image, package, path) -> None:
    """Refuse what a 2D (slice) model cannot read: a multi-frame file (cine frames are time points, not slices)
    and an image smaller than ``input.slices.min_pixels`` per side.

    Raises:
        InputImageError: naming the frames or the size.
    """
    from ..io.image_meta import multi_frame_refusal

    if (frames := multi_frame_refusal(image, f"the 2D model {package.id}", "classify")) is not None:
        raise InputImageError(frames, path)
    shortfall = slice_size_shortfall(image, package)
    if shortfall is not None:
        size, minimum = shortfall
        stored = list(image.GetSize())
        what = (f"the image is {size[0]} x {size[1]} pixels" if image.GetDimension() == 2 or size == stored[:2]
                else f"its axial slices (the planes a 2D model reads) are {size[0]} x {size[1]} pixels (stored as "
                     f"{' x '.join(map(str, stored))})")
        hint = ("; a single coronal or sagittal slice is read as rows of axial pixels: give it as a picture "
                "(PNG) or give its series" if image.GetDimension() == 3 and stored[2] == 1 and size != stored[:2]
                else "")
        raise InputImageError(f"{what}, too small for model {package.id} (at least {minimum} pixels per side; it "
                              f"works at {' x '.join(map(str, package.input_spec.get('size') or []))}){hint}", path)


def _peak_in_view(model_map: np.ndarray, grid: ModelGrid, image: sitk.Image,
                  axial_index: int | None = None) -> tuple[int, int, int]:
    """``(z, y, x)`` index in ``image``'s LPS view of the model-space map's maximum ``model_map`` ``(Z, Y, X)``:
    where the written heatmap will peak, to within a voxel. ``axial_index``: the one axial slice of the view the
    written heatmap keeps (``--slice-mm``); the map's maximum is then taken on the model slice nearest it."""
    view = lps_view(image)
    to_view = view.direction * view.spacing[None, :]

    def in_view(k: int, j: int, i: int) -> np.ndarray:
        point = grid.origin + grid.direction @ (np.array([i, j, k], dtype=float) * grid.spacing)
        return np.linalg.solve(to_view, point - view.origin)  # (x, y, z) of the view

    if axial_index is None:
        k, j, i = np.unravel_index(int(np.argmax(model_map)), model_map.shape)
    else:
        k = int(np.argmin([abs(in_view(kk, 0, 0)[2] - axial_index) for kk in range(model_map.shape[0])]))
        j, i = np.unravel_index(int(np.argmax(model_map[k])), model_map.shape[1:])
    idx = in_view(int(k), int(j), int(i))
    x, y, z = (int(np.clip(round(v), 0, n - 1)) for v, n in zip(idx, view.array.shape[::-1]))
    return (int(axial_index) if axial_index is not None else z), y, x


def _check_fits(package, inp) -> None:
    """Refuse a model/scan mismatch before running (channels, dimensions) with the package's own check."""
    import torch

    x = inp.x
    probe = torch.empty((1, *x.shape[1:]), dtype=torch.float32, device="meta")
    try:
        package.check_input(probe)
    except ModelPackageError:
        raise
    except Exception as exc:  # a package without check_input details: fall back to a generic message
        raise ModelPackageError(f"model {package.id} does not accept input of shape {tuple(x.shape)}: {exc}") from None


def lesion_on_scan_grid(lesion: sitk.Image, scan: sitk.Image, notes: list[str],
                        source: str | Path | None = None) -> sitk.Image:
    """``lesion`` (0/1, 2D or 3D, any grid) on the 3D ``scan``'s grid: a 2D label becomes a one-slice volume as a
    2D scan does; a label on another grid is resampled (nearest neighbour, in physical space) with a note in
    ``notes``, since its voxel counts then differ from the file's. ``source``: the label's file, named in errors.

    Raises:
        InputImageError: the label and the scan do not overlap (no labelled voxel lies inside the scan), before
            any model runs.
    """
    from ..errors import InputImageError
    from ..io import is_picture, same_geometry

    picture = is_picture(lesion)
    if lesion.GetDimension() == 2:
        lesion = sitk.JoinSeries([lesion])
    if picture:   # a label drawn on the picture (PNG/JPEG): pixel for pixel, whatever --spacing gave the scan
        if lesion.GetSize() != scan.GetSize():
            raise InputImageError(f"--lesion is a picture of {lesion.GetSize()[0]} x {lesion.GetSize()[1]} pixels; "
                                  f"a label drawn on a picture must have its size ({scan.GetSize()[0]} x "
                                  f"{scan.GetSize()[1]})", source)
        lesion.CopyInformation(scan)
    if not same_geometry(lesion, scan):
        labelled = int(np.count_nonzero(sitk.GetArrayViewFromImage(lesion)))
        lesion = sitk.Resample(lesion, scan, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        kept = int(np.count_nonzero(sitk.GetArrayViewFromImage(lesion)))
        if kept == 0:
            raise InputImageError(f"--lesion does not overlap the scan: none of its {labelled:,} labelled voxels "
                                  f"lies inside the scan's grid (size, origin, spacing or direction differ)",
                                  source)
        notes.append(f"the lesion label lies on another grid and was resampled onto the scan's (nearest "
                     f"neighbour): {labelled:,} labelled voxels there, {kept:,} on the scan's grid")
    return lesion


#: The files :func:`write_outputs` makes for one case (``contract.output_file`` roles): a name is free when none
#: of them exists (batch naming in ``commands.classify`` checks the same list).
CASE_OUTPUT_ROLES = ("result", "heatmap", "heatmap_png", "report")


def write_outputs(result: ClassificationResult, out_dir: str | Path, *, png: bool = True,
                  progress: ProgressFn | None = None,
                  extra: Callable[[dict], dict] | None = None) -> dict[str, str | None]:
    """:func:`write_case_outputs`, all or nothing: when a write fails (full disk, ...) the files this call made are
    removed again, and so is ``out_dir`` if it made it and it is left empty. Outputs of an earlier run in ``out_dir``
    are kept: this case's files then take the next free version of its name (``scan-2.json``, ...)."""
    from ..io import free_version

    out_dir = Path(out_dir)
    roles = CASE_OUTPUT_ROLES
    result.name = free_version(out_dir, result.name, lambda stem: [output_file(stem, role) for role in roles])
    names = [output_file(result.name, role) for role in roles]
    had_dir = out_dir.exists()
    try:
        return write_case_outputs(result, out_dir, png=png, progress=progress, extra=extra)
    except BaseException:
        for n in names:   # none of them existed before (free_version), so each is this call's
            (out_dir / n).unlink(missing_ok=True)
        if not had_dir:
            try:
                out_dir.rmdir()
            except OSError:
                pass
        raise


def write_case_outputs(result: ClassificationResult, out_dir: str | Path, *, png: bool = True,
                       progress: ProgressFn | None = None,
                       extra: Callable[[dict], dict] | None = None) -> dict[str, str | None]:
    """Write ``<name>.json``, ``<name>_heatmap.nrrd`` and ``<name>_heatmap.png`` into ``out_dir`` atomically.

    The heatmap NRRD is float32 on the scan's own grid (same size, origin, spacing, direction); the JSON is written
    last, so a JSON present means its outputs are complete. ``extra(outputs) -> {role: path}`` writes more files
    from the ones above (the HTML report) before the JSON, which lists them too. Returns the paths written
    (``None`` for skipped ones).
    """
    report = progress or (lambda *a, **k: None)
    out_dir = Path(out_dir)  # made by the first atomic write
    t = time.perf_counter()
    outputs: dict[str, str | None] = {"heatmap": None, "png": None}
    json_path = out_dir / output_file(result.name, "result")
    if result.heatmap is not None:
        report("write", 0.85)
        hm_path = out_dir / output_file(result.name, "heatmap")
        heatmap = result.heatmap
        if result.input_dimension == 2 and heatmap.GetDimension() == 3:
            heatmap = heatmap[:, :, 0]  # back on the 2D picture's own grid (origin, spacing, direction)
        elif result.acquired is not None and heatmap.GetDimension() == 3:
            heatmap = result.acquired.place_image(heatmap)   # each slice's heat at its acquired position
        _write_heatmap(heatmap, hm_path)
        outputs["heatmap"] = str(hm_path)
        if png and result.overlay is not None:
            from ..explain.overlay import planes_png

            png_path = out_dir / output_file(result.name, "heatmap_png")
            scan_planes, heat_planes = result.overlay
            # outside the domain no class is reported: the heat is where the network looked for its top class, which
            # is no finding (the Slicer panel shows none)
            target = (f"the network's top class {result.explain.get('class', '')} ({NOT_A_FINDING})"
                      if _no_class(result) else result.explain.get("class", ""))
            note = None if _no_class(result) else axial_panel_note(result.per_slice, scan_planes, target)
            title = (f"{result.model['id']} {result.model['version']}: {headline(result)}"
                     f"\n{result.explain.get('method')} heatmap for {target}{'; ' + note if note else ''}")
            caption = result.explain.get("faithfulness_caption", "")
            if result.explain.get("empty"):   # nothing to see: said in the title, not left to a black overlay
                title += "\nheatmap empty: no evidence found for the label on this input"
            if caption:
                title += f"\n{caption}"
            planes_png(scan_planes, heat_planes, png_path, title=title, warning=heatmap_warning(result),
                       colorbar_label=f"{result.explain.get('method')} heat (0..1)")
            outputs["png"] = str(png_path)
    result.timing_s["write"] = time.perf_counter() - t
    outputs["json"] = str(json_path)
    if extra is not None:
        outputs.update(extra(outputs))
    atomic_write_json(json_path, result.to_json(outputs))
    report("written", 1.0)
    return outputs


def _write_heatmap(heatmap: sitk.Image, path: Path) -> None:
    """Float32 NRRD: gzip-compressed up to ``_FAST_COMPRESSION_VOXELS`` voxels, raw above.

    Measured for a 512x512x300 map: raw 0.45 s, gzip level 1 ~12 s (float noise barely compresses), so big maps
    are written raw to keep classify within seconds.
    """
    n = int(np.prod(heatmap.GetSize()))
    with atomic_output(path) as tmp:
        sitk.WriteImage(heatmap, str(tmp), n <= _FAST_COMPRESSION_VOXELS)
