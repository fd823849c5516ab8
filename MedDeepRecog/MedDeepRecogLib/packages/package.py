"""Reading, checking, writing and cataloguing model packages (see the package docstring for the API).

torch is imported inside the functions that need it so that listing the catalog stays fast.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
import weakref
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .. import resources
from ..errors import ConfigError, ModelPackageError, extracted_from, forget_extracted

FORMAT_VERSION = 1
META_FILE = "model.json"
WEIGHT_FILES = ("weights.safetensors", "weights.pt")
INPUT_KINDS = {"slices2d": 2, "volume3d": 3, "roi3d": 3}
REQUIRED_KEYS = ("id", "version", "architecture", "class_names", "input", "weights")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def is_plain_name(text: str) -> bool:
    """Whether ``text`` may be a package id or version: letters, digits, ``.``, ``_``, ``-``, not starting with a
    dot or dash, so it can never name a path outside the catalog."""
    return bool(_ID_RE.match(str(text)))


# --------------------------------------------------------------------------------------------- catalog locations
def user_models_dir() -> Path:
    """``$MEDDEEPRECOG_HOME/models`` (default ``~/.meddeeprecog/models``); not created here."""
    home = os.environ.get("MEDDEEPRECOG_HOME")
    return (Path(home).expanduser() if home else Path.home() / ".meddeeprecog") / "models"


def catalog_dirs() -> list[Path]:
    """Catalog roots searched by ID, bundled first then the user's (a user package wins a version tie)."""
    return [resources.BUNDLED_MODELS_DIR, user_models_dir()]


def catalogs_with(dest: str | Path | None) -> list[Path]:
    """``dest`` (default: the user catalog) and every catalog a package id is resolved in: the folders a new
    version must be free in, since one written to ``dest`` would otherwise hide (or be hidden by) another."""
    root = Path(dest) if dest is not None else user_models_dir()
    return [root] + [d for d in catalog_dirs() if d.resolve() != root.resolve()]


# --------------------------------------------------------------------------------------------- versions
#: A package version: MAJOR.MINOR.PATCH of non-negative whole numbers, as the bundled packages use. No leading
#: zeros, so two folder names never mean the same version (``1.01.0`` and ``1.1.0`` would tie for "latest").
_VERSION_RE = re.compile(r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$")
VERSION_RULE = "MAJOR.MINOR.PATCH of whole numbers without leading zeros, e.g. 1.2.0"


def is_version(text: Any) -> bool:
    """Whether ``text`` is a package version (see :data:`VERSION_RULE`); only such versions are ever "latest"."""
    return isinstance(text, str) and bool(_VERSION_RE.match(text))


def check_version(version: Any, setting: str, where: str | Path | None = None) -> str:
    """``version`` if it is a package version; else :class:`ConfigError` naming ``setting`` (and ``where``)."""
    if not is_version(version):
        raise ConfigError(f"{setting} {version!r} is not a package version ({VERSION_RULE})", where)
    return version


def _version_key(version: str) -> tuple:
    """Sort key: ``1.0.10`` > ``1.0.9``; a folder whose name is not a version (made before versions were
    checked) sorts below every version, so it is never the latest."""
    if is_version(version):
        return (1, *(int(p) for p in version.split(".")))
    return (0, str(version))


def version_holders(pkg_id: str, version: str, roots: list[Path]) -> list[Path]:
    """The folders ``<root>/<pkg_id>/<version>`` that exist under ``roots`` (a package, or what blocks one)."""
    return [Path(r) / pkg_id / version for r in roots if (Path(r) / pkg_id / version).exists()]


def check_new_version(pkg_id: str, version: Any, roots: list[Path], setting: str,
                      where: str | Path | None = None, own: Path | None = None) -> str:
    """``version`` if a new package ``pkg_id@version`` may be written to ``roots[0]``: it is a package version and
    no catalog in ``roots`` (:func:`catalogs_with`) holds that id and version, since a second package of the same
    id and version would overwrite or hide the first. When ``roots[0]`` is not a catalog searched by id
    (:func:`catalog_dirs`), only it must be free: the bundled packages are reproduced into such a folder under their
    own versions. The one check of every command that writes a package with a version the user chose (train,
    finetune, calibrate, models import).

    ``own``: a package this very run saved earlier, which running it again returns rather than saving anew.
    Raises :class:`ConfigError` naming ``setting`` and the catalog that holds the version (``where``: the file
    the setting is in).
    """
    check_version(version, setting, where)
    if Path(roots[0]).resolve() not in {d.resolve() for d in catalog_dirs()}:
        # a folder outside the catalogs (a scratch --package-dest to reproduce a bundled package): its packages are
        # opened by path and hide nothing, so only that folder must be free; `models import` checks again
        roots = roots[:1]
    taken = [p for p in version_holders(pkg_id, version, roots)
             if own is None or p.resolve() != Path(own).resolve()]
    if taken:
        holder = taken[0].parent.parent
        label = {resources.BUNDLED_MODELS_DIR.resolve(): "bundled catalog ",
                 user_models_dir().resolve(): "user catalog "}.get(holder.resolve(), "catalog ")
        free = suggested_version(pkg_id, version, roots)
        if holder.resolve() == resources.BUNDLED_MODELS_DIR.resolve():   # part of the install: never to be removed
            remedy = f"bump the version ({free}) or choose a new id; the bundled package stays as installed"
        else:
            remedy = f"bump the version ({free}) or remove {taken[0]} first"
        raise ConfigError(f"{setting} {version}: {pkg_id}@{version} already exists in the {label}{holder}; packages "
                          f"are never overwritten or shadowed: {remedy}", where)
    return version


def next_free_patch(pkg_id: str, version: str, roots: list[Path]) -> str:
    """The first patch version after ``version`` that no catalog in ``roots`` holds for ``pkg_id`` (1.3.0 -> 1.3.1,
    or 1.3.2 when that is taken); for a ``version`` that is not one, the id's next free version
    (:func:`next_version`)."""
    if not is_version(version):
        return next_version(pkg_id, roots)
    major, minor, patch = (int(p) for p in version.split("."))
    while version_holders(pkg_id, f"{major}.{minor}.{patch + 1}", roots):
        patch += 1
    return f"{major}.{minor}.{patch + 1}"


def suggested_version(pkg_id: str, version: str, roots: list[Path]) -> str:
    """What a refusal of the taken ``pkg_id@version`` suggests instead, the same for every command that writes a
    package (train, finetune, calibrate, models import: all refuse in :func:`check_new_version`).

    The suggestion is the next free patch of the version asked for (0.1.0 taken -> "0.1.1 is free"), not the id's
    next version over the whole catalog (0.8.3): the researcher chose the major and minor version, and a patch bump
    of it is the least surprising change that frees it, keeps what the version says about the package's lineage,
    and is the rule derived packages follow (:func:`derived_version`). When newer versions of the id exist the text
    says so, since a command naming the model by id then still takes the newest one."""
    free = next_free_patch(pkg_id, version, roots)
    latest = max(held_versions(pkg_id, roots), key=_version_key, default=None)
    if latest is not None and _version_key(latest) > _version_key(free):
        return f"{free} is free; {pkg_id}@{latest} is newer and stays the one used by id"
    return f"{free} is free"


def check_same_kind(pkg_id: str, task: str, kind: str | None, roots: list[Path], setting: str,
                    where: str | Path | None = None) -> None:
    """Refuse a new package ``pkg_id`` of another task or input kind than the packages of that id a catalog
    searched by id holds, when it is written into one of them (``roots[0]``, :func:`catalogs_with`).

    Commands and the demo name a model by id and take its latest version: a fine-tuned ROI classifier saved as
    ``brain-tumour-mri`` 1.3.1 became the latest brain-tumour-mri, and ``classify`` and ``demo`` then refused it.
    Raises :class:`ConfigError` naming ``setting``, the package that holds the id and what it is."""
    searched = {d.resolve() for d in catalog_dirs()}
    if Path(roots[0]).resolve() not in searched:
        return   # a scratch folder: its packages are opened by path and hide nothing
    for root in roots:
        if Path(root).resolve() not in searched or not (Path(root) / pkg_id).is_dir():
            continue
        for folder in sorted(p for p in (Path(root) / pkg_id).iterdir() if (p / META_FILE).is_file()):
            try:
                meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue   # a broken package is listed as such by `models`; it decides nothing here
            theirs = (meta.get("task", "classification"), (meta.get("input") or {}).get("kind"))
            if theirs != (task, kind):
                raise ConfigError(f"{setting} {pkg_id}: {pkg_id}@{folder.name} in {root} is a {theirs[0]} model "
                                  f"(input kind {theirs[1]}); a {task} model (input kind {kind}) under the same id "
                                  "would become its latest version and break every command naming the id: choose "
                                  "another id", where)


# --------------------------------------------------------------------------------------------- hashing / meta
def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _num_classes(arch_kwargs: Mapping[str, Any]) -> int | None:
    for key in ("num_classes", "out_channels"):
        if key in arch_kwargs:
            return int(arch_kwargs[key])
    return None


def validate_meta(meta: Mapping[str, Any], where: str | Path | None = None) -> None:
    """Raise :class:`ModelPackageError` if ``meta`` (a model.json dict) is incomplete or inconsistent.

    Checks: required keys, id/version syntax, architecture ``name``/``kwargs``, class names (non-empty, unique,
    as many as the architecture's ``num_classes``/``out_channels`` for classification), input spec (``kind``,
    ``size`` with 2 values for ``slices2d`` and 3 for volumes, ``channels`` equal to ``in_channels``).
    """
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise ModelPackageError(f"model.json lacks required key(s) {missing}", where)
    if int(meta.get("format_version", FORMAT_VERSION)) > FORMAT_VERSION:
        raise ModelPackageError(f"package format_version {meta['format_version']} is newer than this software "
                                f"understands ({FORMAT_VERSION}); update meddeeprecog", where)
    for key in ("id", "version"):
        if not isinstance(meta[key], str) or not _ID_RE.match(meta[key]):
            raise ModelPackageError(f"model.json {key} {meta[key]!r} must be a plain name "
                                    "(letters, digits, '.', '_', '-')", where)
    arch = meta["architecture"]
    if not isinstance(arch, Mapping) or not isinstance(arch.get("name"), str):
        raise ModelPackageError("model.json architecture must be {\"name\": str, \"kwargs\": {...}}", where)
    kwargs = arch.get("kwargs", {}) or {}
    if not isinstance(kwargs, Mapping):
        raise ModelPackageError(f"model.json architecture.kwargs must be a mapping, got {kwargs!r}", where)
    for key in ("num_classes", "out_channels", "in_channels"):
        v = kwargs.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not 0 < v <= 65536):
            raise ModelPackageError(f"model.json architecture.kwargs.{key} must be a whole number from 1 to 65536, "
                                    f"got {v!r}", where)
    classes = meta["class_names"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ModelPackageError("model.json class_names must be a non-empty list of names", where)
    if len(set(classes)) != len(classes):
        raise ModelPackageError(f"model.json class_names has duplicates: {classes}", where)
    n = _num_classes(kwargs)
    if meta.get("task", "classification") == "classification" and n is not None and n != len(classes):
        raise ModelPackageError(f"model.json lists {len(classes)} class names {classes} but the architecture "
                                f"{arch['name']!r} has {n} outputs", where)
    spec = meta["input"]
    if not isinstance(spec, Mapping) or spec.get("kind") not in INPUT_KINDS:
        raise ModelPackageError(f"model.json input.kind must be one of {sorted(INPUT_KINDS)}, "
                                f"got {spec.get('kind') if isinstance(spec, Mapping) else spec!r}", where)
    size = spec.get("size")
    if size is not None:
        if (not isinstance(size, list) or len(size) != INPUT_KINDS[spec["kind"]]
                or not all(isinstance(s, int) and not isinstance(s, bool) and 0 < s <= 65536 for s in size)):
            raise ModelPackageError(f"model.json input.size {size!r} must be {INPUT_KINDS[spec['kind']]} positive "
                                    f"integers for kind {spec['kind']!r}", where)
    channels = spec.get("channels", 1)
    if not isinstance(channels, int) or isinstance(channels, bool) or not 1 <= channels <= 65536:
        raise ModelPackageError(f"model.json input.channels {channels!r} must be a positive integer", where)
    if "in_channels" in kwargs and int(kwargs["in_channels"]) != channels:
        raise ModelPackageError(f"model.json input.channels={channels} but the architecture expects "
                                f"in_channels={kwargs['in_channels']}", where)
    spacing = spec.get("spacing_mm")
    if spacing is not None and (not isinstance(spacing, list) or not spacing
                                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1e4
                                           for v in spacing)):
        raise ModelPackageError(f"model.json input.spacing_mm must be null or a list of positive sizes in mm, got "
                                f"{spacing!r}", where)
    explain = meta.get("explain") or {}
    if not isinstance(explain, Mapping):
        raise ModelPackageError(f"model.json explain must be a mapping, got {explain!r}", where)
    inset = explain.get("heat_inset_mm", 0.0)
    if not isinstance(inset, (int, float)) or isinstance(inset, bool) or not 0 <= inset <= 100:
        raise ModelPackageError(f"model.json explain.heat_inset_mm must be a distance from 0 to 100 mm, got "
                                f"{inset!r}", where)
    weights = meta["weights"]
    if not isinstance(weights, Mapping) or weights.get("file") not in WEIGHT_FILES or not weights.get("sha256"):
        raise ModelPackageError(f"model.json weights must be {{\"file\": one of {list(WEIGHT_FILES)}, "
                                "\"sha256\": hex}", where)


def _read_meta(folder: Path) -> dict:
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise ModelPackageError(f"not a model package (no {META_FILE})", folder)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelPackageError(f"model.json is not valid JSON ({exc})", meta_path) from None
    if not isinstance(meta, dict):
        raise ModelPackageError("model.json must hold a JSON object", meta_path)
    validate_meta(meta, meta_path)
    return meta


# --------------------------------------------------------------------------------------------- weights
def load_weights(path: Path) -> dict:
    """Tensors of a weights file; a pickle holding anything but plain tensors is refused."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelPackageError(f"weights file is corrupt ({exc})", path) from None
    try:
        with warnings.catch_warnings():
            # torch warns (with a source line, on stderr) about a pickle protocol it was not written with before
            # refusing or reading the file: the outcome is the one thing to report
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception:  # UnpicklingError, RuntimeError (zip), EOFError...: all mean "not plain weights"
        # torch's text is not passed on: it advises loading again with weights_only=False, which runs the pickle
        raise ModelPackageError("weights file is not plain tensors and was refused (a pickle that would run code "
                                "or is corrupt); only safetensors or plain tensor files are loaded", path) from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                 for k, v in state.items()):
        raise ModelPackageError("weights file must hold a dict of name -> tensor", path)
    return dict(state)


# --------------------------------------------------------------------------------------------- ModelPackage
@dataclass
class ModelPackage:
    """A checked model package. ``path`` is its folder (a temporary copy for a ``.zip``)."""

    path: Path
    meta: dict
    source: str = "path"
    _tmpdir: Any = field(default=None, repr=False)
    #: the out-of-domain check (:class:`..uncertainty.domain.DomainCheck`) when model.json has a ``domain`` block;
    #: its statistics file is checksummed when the package is opened
    domain: Any = field(default=None, repr=False)

    @property
    def id(self) -> str:
        return self.meta["id"]

    @property
    def version(self) -> str:
        return self.meta["version"]

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    @property
    def input_spec(self) -> dict:
        """``meta["input"]``: ``kind``, ``size``, ``spacing_mm``, ``channels``, ``pipeline``."""
        return dict(self.meta["input"])

    @property
    def weights_path(self) -> Path:
        return self.path / self.meta["weights"]["file"]

    @property
    def target_layer(self) -> str | None:
        """Grad-CAM layer: ``meta["explain"]["target_layer"]``, else the architecture's registry default for its
        kwargs."""
        layer = (self.meta.get("explain") or {}).get("target_layer")
        if layer:
            return layer
        from ..models import default_target_layer
        arch = self.meta["architecture"]
        try:
            return default_target_layer(arch["name"], **(arch.get("kwargs") or {}))
        except Exception:
            return None

    def data_params(self) -> tuple[Any, Any]:
        """``(intensity_range, size)`` a labelled ``.npz`` split is prepared with for this package, as ``train``
        recorded them: the range of a unit ``window`` step of ``input.pipeline`` (else the training config's
        ``data.intensity_range``, or ``None``) and ``input.size``; what ``training.data.load_eval_split`` takes."""
        intensity, size = None, self.input_spec.get("size")
        for step in (self.input_spec.get("pipeline") or {}).get("steps", []):
            if step.get("name", "") == "window" and step.get("output", "unit") == "unit" and "center" in step:
                intensity = (step["center"] - step["width"] / 2.0, step["center"] + step["width"] / 2.0)
        cfg_data = ((self.meta.get("provenance") or {}).get("config") or {}).get("data") or {}
        if intensity is None and cfg_data.get("intensity_range") is not None:
            intensity = cfg_data["intensity_range"]
        return intensity, size

    def build_model(self, device: str = "cpu"):
        """The network with its weights loaded, in eval mode, on ``device``.

        Raises :class:`ModelPackageError` if the architecture is unknown or the weights do not fit it.
        """
        from ..models import build_model

        from ..errors import ConfigError

        arch = self.meta["architecture"]
        spec = self.input_spec
        shape = [spec.get("channels", 1), *spec["size"]] if spec.get("size") else None
        try:
            model = build_model(arch["name"], input_shape=shape, **(arch.get("kwargs") or {}))
        except ConfigError as exc:  # kwargs' types or ranges, parameter or activation budget
            raise ModelPackageError(f"model.json {exc.problem}", self.path / META_FILE) from None
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelPackageError(f"cannot build architecture {arch['name']!r} with kwargs "
                                    f"{arch.get('kwargs')}: {exc}", self.path / META_FILE) from None
        state = load_weights(self.weights_path)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            raise ModelPackageError(f"weights do not fit architecture {arch['name']!r}: {' '.join(lines[1:3])[:300]}",
                                    self.weights_path) from None
        model = model.to(device).eval()
        if spec.get("kind") == "slices2d":
            import torch

            # oneDNN's faster 2D-convolution layout on the CPU: the forward pass of the bundled slice models runs
            # 1.3-1.5x faster (bench/disease.py), probabilities equal to 1e-7; inputs may keep the default layout
            model = model.to(memory_format=torch.channels_last)
        return model

    def verify(self, device: str = "cpu") -> None:
        """Dry run: build the model and feed zeros of the input spec's size; a classifier must give
        ``(1, len(class_names))`` logits and have the Grad-CAM layer classify explains (:func:`target_layer_of`).
        Raises :class:`ModelPackageError` otherwise (slow for big 3D nets)."""
        import torch

        model = self.build_model(device)
        if self.meta.get("task", "classification") == "classification":
            try:
                target_layer_of(self, model)  # classify's own check of the heatmap layer: it refuses the package
            except KeyError:  # no convolution at all and none named: nothing to check
                pass
        spec = self.input_spec
        if not spec.get("size"):
            return
        x = torch.zeros(1, spec.get("channels", 1), *spec["size"], device=device)
        try:
            with torch.no_grad():
                out = model(x)
        except RuntimeError as exc:
            raise ModelPackageError(f"the network does not accept its declared input {tuple(x.shape)}: "
                                    f"{str(exc).splitlines()[0][:200]}", self.path / META_FILE) from None
        if self.meta.get("task", "classification") == "classification":
            if tuple(out.shape) != (1, len(self.class_names)):
                raise ModelPackageError(f"the network gives outputs of shape {tuple(out.shape)} for "
                                        f"{len(self.class_names)} class names", self.path / META_FILE)

    def check_input(self, x, source=None) -> None:
        """Raise :class:`ModelPackageError` if batch ``x`` does not fit the input spec (dimensions, channels),
        naming ``source`` (the data file) when given.

        2D: (B, C, H, W); volumes and CNN-LSTM: (B, C, Z, Y, X).
        """
        spec = self.input_spec
        want_dims = INPUT_KINDS[spec["kind"]] + 2
        channels = spec.get("channels", 1)
        if x.ndim != want_dims:
            raise ModelPackageError(f"model {self.id}@{self.version} expects {want_dims}-D input "
                                    f"(B, C, {'H, W' if want_dims == 4 else 'Z, Y, X'}), got shape {tuple(x.shape)}",
                                    source)
        if x.shape[1] != channels:
            raise ModelPackageError(f"model {self.id}@{self.version} expects {channels} channel(s), got "
                                    f"{x.shape[1]} (input shape {tuple(x.shape)})", source)

    def close(self) -> None:
        """Delete the temporary folder a ``.zip`` package was extracted into (nothing for a folder)."""
        if self._tmpdir is not None:
            self._tmpdir.cleanup()

    def __str__(self) -> str:
        return f"{self.id}@{self.version} ({self.path})"


def target_layer_of(package: ModelPackage, model) -> str:
    """The Grad-CAM layer of ``package``'s built ``model``: the package's ``explain.target_layer``, else the registry
    default for the architecture *with its kwargs* (the number of conv blocks decides the last one), else the last
    convolution. ``classify`` takes its layer from here and ``models --verify`` (:meth:`ModelPackage.verify`) makes
    the same check, so a package classify refuses is never reported ok.

    Raises:
        ModelPackageError: the package names a layer the network does not have.
    """
    from ..explain.gradcam import has_layer, last_conv_layer

    named = (package.meta.get("explain") or {}).get("target_layer")
    if named:
        if not has_layer(model, named):
            raise ModelPackageError(f"model.json explain.target_layer {named!r} is not a layer of "
                                    f"{package.meta['architecture']['name']} (last convolution: "
                                    f"{last_conv_layer(model)})", package.path / META_FILE)
        return named
    try:
        from ..models import default_target_layer

        arch = package.meta["architecture"]
        layer = default_target_layer(arch["name"], **(arch.get("kwargs") or {}))
        if has_layer(model, layer):
            return layer
    except Exception:  # unknown to the registry: fall back to the network itself
        pass
    return last_conv_layer(model)


#: What a package may hold: its metadata and card, weights and the domain check (safetensors, or a plain state dict
#: read with weights_only), and the plots and records training and calibration write. A script, a library or any
#: other file is no part of a model.
PACKAGE_SUFFIXES = (".json", ".safetensors", ".pt", ".pth", ".md", ".png", ".txt", ".csv")


def _check_package_files(folder: Path) -> None:
    """Refuse a package folder holding a symbolic link (it would import whatever file it points at, past the size
    limit) or a file of a kind a package does not hold (:data:`PACKAGE_SUFFIXES`), naming it."""
    for root, dirs, files in os.walk(folder):  # os.walk does not follow links to folders
        for name in dirs + files:
            entry = Path(root) / name
            if entry.is_symlink():
                raise ModelPackageError("a model package holds no symbolic links; this one points elsewhere", entry)
        for name in files:
            if not name.lower().endswith(PACKAGE_SUFFIXES):
                raise ModelPackageError(f"not a file a model package holds (only {', '.join(PACKAGE_SUFFIXES)})",
                                        Path(root) / name)


def _open_folder(folder: Path, source: str = "path", tmpdir: Any = None) -> ModelPackage:
    if not (folder / META_FILE).is_file():
        raise ModelPackageError(f"not a model package (no {META_FILE} in this folder)", folder)
    _check_package_files(folder)
    meta = _read_meta(folder)
    wfile = folder / meta["weights"]["file"]
    if not wfile.is_file():
        raise ModelPackageError(f"weights file {meta['weights']['file']} named in model.json is missing", folder)
    digest = sha256_file(wfile)
    if digest != str(meta["weights"]["sha256"]).lower().removeprefix("sha256:"):
        raise ModelPackageError(f"checksum mismatch: weights sha256 is {digest[:16]}…, model.json says "
                                f"{str(meta['weights']['sha256'])[:16]}… (file corrupt or tampered with)", wfile)
    from ..uncertainty.domain import load_domain_check

    return ModelPackage(path=folder, meta=meta, source=source, _tmpdir=tmpdir,
                        domain=load_domain_check(folder, meta))


def _extract_bounded(zf: zipfile.ZipFile, root: Path, path: Path) -> None:
    """Extract ``zf`` into ``root`` within :func:`..limits.max_package_bytes`: the sizes the zip declares are
    checked first, then the bytes actually written (a member whose stream inflates past its declared size is cut
    off and refused). Hand-written because ``zipfile.extractall`` trusts the declared sizes and has no limit."""
    from ..limits import MAX_PACKAGE_ENV, MAX_PACKAGE_FILES, human_bytes, max_package_bytes

    limit = max_package_bytes()
    infos = zf.infolist()
    if len(infos) > MAX_PACKAGE_FILES:
        raise ModelPackageError(f"zip holds {len(infos)} entries, more than {MAX_PACKAGE_FILES}", path)
    declared = sum(i.file_size for i in infos)
    if declared > limit:
        raise ModelPackageError(f"zip declares {human_bytes(declared)} uncompressed, more than the limit of "
                                f"{human_bytes(limit)} for a model package ({MAX_PACKAGE_ENV})", path)
    written = 0
    for info in infos:
        target = root / info.filename
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        member = 0
        with zf.open(info) as src, open(target, "wb") as dst:
            while chunk := src.read(1 << 20):
                member += len(chunk)
                written += len(chunk)
                if member > info.file_size or written > limit:
                    raise ModelPackageError(f"zip entry {info.filename!r} inflates past its declared size of "
                                            f"{human_bytes(info.file_size)} (or the package past "
                                            f"{human_bytes(limit)}): refused", path)
                dst.write(chunk)


def _open_zip(path: Path) -> ModelPackage:
    """Extract the zip ``path`` into a temporary folder (deleted with the package) and open the one package in it.

    Every error about a file in that folder names ``path`` and the member (:func:`..errors.extracted_from`)."""
    tmp = tempfile.TemporaryDirectory(prefix="meddeeprecog_pkg_")
    root = Path(tmp.name)
    extracted_from(root, path)
    weakref.finalize(tmp, forget_extracted, root)
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                target = (root / info.filename).resolve()
                if not target.is_relative_to(root.resolve()):
                    raise ModelPackageError(f"zip entry {info.filename!r} points outside the package", path)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:  # a symbolic link stored as a Unix mode
                    raise ModelPackageError(f"zip entry {info.filename!r} is a symbolic link; a model package "
                                            "holds none", path)
            _extract_bounded(zf, root, path)
        metas = sorted(root.rglob(META_FILE))
        if not metas:
            raise ModelPackageError(f"zip holds no {META_FILE}", path)
        if len(metas) > 1:  # which one is opened would depend on the file system's order
            members = ", ".join(m.relative_to(root).as_posix() for m in metas)
            raise ModelPackageError(f"zip holds {len(metas)} model packages ({members}); a .zip holds one: zip "
                                    "each package on its own", path)
        extracted_from(root, path, package=metas[0].parent)
        return _open_folder(metas[0].parent, source="zip", tmpdir=tmp)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        tmp.cleanup()
        raise ModelPackageError(f"damaged zip file, cannot be read ({exc})", path) from None
    except BaseException:
        tmp.cleanup()
        raise


def _catalog_entries() -> list[tuple[str, str, Path, str]]:
    entries = []
    for root, source in zip(catalog_dirs(), ("bundled", "user")):
        if not root.is_dir():
            continue
        for id_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for ver_dir in sorted(p for p in id_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
                if (ver_dir / META_FILE).is_file():
                    entries.append((id_dir.name, ver_dir.name, ver_dir, source))
    return entries


def _resolve_id(ref: str) -> tuple[Path, str]:
    pkg_id, at, version = ref.partition("@")
    if not is_plain_name(pkg_id) or (at and not is_plain_name(version)):
        raise ModelPackageError(f"model {ref!r} is not ID or ID@VERSION (plain names: letters, digits, '.', '_', "
                                "'-'), a package folder or a .zip")
    found = [e for e in _catalog_entries() if e[0] == pkg_id]
    if not found and Path(ref).expanduser().is_dir():
        # a folder of that name is here (passed over as a catalog reference, _local_package_path) and no package
        # has the id: the folder was meant
        raise ModelPackageError(f"not a model package (no {META_FILE} in this folder), and no installed package "
                                f"is named {pkg_id!r}", Path(ref).expanduser())
    if not found:
        known = sorted({e[0] for e in _catalog_entries()})
        raise ModelPackageError(f"no model package {pkg_id!r} installed (installed: {', '.join(known) or 'none'}; "
                                f"catalogs: {', '.join(str(d) for d in catalog_dirs())})")
    if version:
        match = [e for e in found if e[1] == version]
        if not match:
            raise ModelPackageError(f"model package {pkg_id!r} has no version {version!r} "
                                    f"(installed: {', '.join(e[1] for e in found)})")
        return match[-1][2], match[-1][3]
    versions = [e for e in found if is_version(e[1])]
    if not versions:
        raise ModelPackageError(f"model package {pkg_id!r} has no MAJOR.MINOR.PATCH version to take as the "
                                f"latest (installed: {', '.join(e[1] for e in found)}); name one as "
                                f"{pkg_id}@VERSION")
    best = max(versions, key=lambda e: (_version_key(e[1]), e[3] == "user"))
    return best[2], best[3]


def id_versions(ref: str) -> list[tuple[str, dict]] | None:
    """For ``ref`` naming an id's latest version (``ID`` alone: not ``ID@VERSION``, not a package on disk), each
    version of that id in the catalogs with its model.json, oldest first, the one ``ID@VERSION`` opens when two
    catalogs hold it; ``None`` for any other ``ref``. A package whose model.json cannot be read is left out (it is
    never opened by id either), so is a folder whose name is not a version (never the latest).

    For a command that takes "the latest" with a rule of its own (``finetune --base ID``)."""
    if "@" in ref or _is_path_ref(ref) or not is_plain_name(ref) or _local_package_path(ref) is not None:
        return None
    found: dict[str, Path] = {}
    for pkg_id, version, folder, source in _catalog_entries():   # bundled first, so the user's wins a tie
        if pkg_id == ref and is_version(version):
            found[version] = folder
    out = []
    for version in sorted(found, key=_version_key):
        try:
            out.append((version, _read_meta(found[version])))
        except ModelPackageError:
            continue
    return out


def _is_path_ref(ref: str) -> bool:
    """Whether ``ref`` can only be a path (it has a folder separator or ends in ``.zip``), not ``ID[@VERSION]``."""
    return "/" in ref or "\\" in ref or ref.endswith(".zip")


def _local_package_path(ref: str) -> Path | None:
    """The file or folder ``ref`` names on disk, or ``None`` when it is a catalog reference.

    A bare name (``lung-ct-cancer``) that is also a folder in the working directory without a ``model.json`` (the
    output folder of an earlier ``classify --out lung-ct-cancer``, say) names the catalog's package, not that
    folder: refusing it as "not a model package" would make a command fail only because of where it is run."""
    path = Path(ref).expanduser()
    if not path.exists():
        return None
    if not _is_path_ref(ref) and path.is_dir() and not (path / META_FILE).is_file():
        return None
    return path


def load_package(id_or_path: str | Path) -> ModelPackage:
    """Open and check a package: a folder, a ``.zip``, ``"ID"`` (highest version) or ``"ID@VERSION"``."""
    if isinstance(id_or_path, ModelPackage):
        return id_or_path
    ref = str(id_or_path)
    path = _local_package_path(ref)
    if path is not None:
        if path.is_dir():
            return _open_folder(path)
        if zipfile.is_zipfile(path):
            return _open_zip(path)
        if path.name == META_FILE:
            return _open_folder(path.parent)
        if _looks_like_zip(path):
            raise ModelPackageError("damaged zip file, cannot be read (truncated, or its table of contents at the "
                                    "end of the file is missing or corrupt)", path)
        raise ModelPackageError("not a model package (expected a folder with model.json or a .zip of one)", path)
    if _is_path_ref(ref):
        raise ModelPackageError("model package not found", Path(ref).expanduser())
    folder, source = _resolve_id(ref)
    return _open_folder(folder, source=source)


def _looks_like_zip(path: Path) -> bool:
    """Whether the file ``path`` is meant as a zip (named ``.zip`` or starting as one) though
    :func:`zipfile.is_zipfile` cannot read it."""
    if path.suffix.lower() == ".zip":
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) in (b"PK\x03\x04", b"PK\x05\x06")
    except OSError:
        return False


def read_package_meta(id_or_path: str | Path) -> dict:
    """A package's ``model.json`` (folder, ``"ID"`` or ``"ID@VERSION"``) without reading its weights, for quick
    decisions such as which command a model needs; the weights are checked when the package is loaded.
    A ``.zip`` is opened (and checked) by :func:`load_package`."""
    ref = str(id_or_path)
    path = _local_package_path(ref)
    if path is not None and path.is_dir():
        return _read_meta(path)
    if path is not None and path.name == META_FILE and path.is_file():
        return _read_meta(path.parent)
    if path is not None or _is_path_ref(ref):
        pkg = load_package(ref)  # a zip, or the same clear error load_package gives
        pkg.close()
        return pkg.meta
    return _read_meta(_resolve_id(ref)[0])


# --------------------------------------------------------------------------------------------- listing / import
@dataclass
class PackageInfo:
    """One catalog entry as listed by ``meddeeprecog models``; ``error`` is set for a broken package."""

    id: str
    version: str
    path: str
    source: str
    task: str | None = None
    description: str | None = None
    class_names: list[str] | None = None
    input: dict | None = None
    metrics: dict | None = None
    error: str | None = None
    parent: str | None = None  # "id@version" a calibrated or fine-tuned package was derived from
    note: str | None = None  # e.g. a folder whose name is not a version (never taken as the latest)
    #: how the checkpoint was chosen (``training.monitor`` / ``best_epoch``): what ``validation_summary`` reads to
    #: say the figures are optimistic for a package that predates ``metrics.selected_by``
    training: dict | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def list_packages(check_weights: bool = False) -> list[PackageInfo]:
    """All packages in the catalogs (sorted by id, then version). Broken ones are listed with ``error``.

    ``check_weights`` also verifies each weights checksum and runs the network once (slower).
    """
    out = []
    for pkg_id, version, folder, source in _catalog_entries():
        try:
            if check_weights:
                pkg = _open_folder(folder)
                pkg.verify()
                meta = pkg.meta
            else:
                meta = _read_meta(folder)
            out.append(PackageInfo(pkg_id, version, str(folder), source, meta.get("task", "classification"),
                                   meta.get("description"), meta["class_names"], meta["input"], meta.get("metrics"),
                                   parent=parent_ref((meta.get("provenance") or {}).get("parent")),
                                   note=_version_note(pkg_id, version), training=_selection(meta)))
        except ModelPackageError as exc:
            out.append(PackageInfo(pkg_id, version, str(folder), source, error=str(exc)))
    return sorted(out, key=lambda p: (p.id, _version_key(p.version), p.source))


def _selection(meta: Mapping[str, Any]) -> dict | None:
    """The part of a package's ``training`` block that says how its checkpoint was chosen, or ``None``."""
    training = meta.get("training")
    if not isinstance(training, Mapping):
        return None
    chosen = {key: training[key] for key in ("monitor", "best_epoch") if key in training}
    return chosen or None


def _version_note(pkg_id: str, version: str) -> str | None:
    """Why a package whose folder name is not a version is listed apart (it was saved before versions were
    checked): it is never chosen for ``ID`` alone."""
    if is_version(version):
        return None
    return f"version {version!r} is not MAJOR.MINOR.PATCH: never taken as the latest (ask for {pkg_id}@{version})"


def tuned_on(meta: Mapping[str, Any], data: str | Path, split: str) -> str:
    """What calibration fitted on ``split`` of ``data`` into the package ``meta`` describes, as
    :func:`..inference.calibrate.fitted_parts` words it (empty when nothing): figures on those images that rest on
    it are tuned there, not held out. The package records the file by name (``calibration.data`` the path given,
    ``chosen_on.data`` the name), so a file of the same name counts as the same. Here, beside the package's other
    metadata readers, so ``evaluate`` (training) asks without reaching up to inference."""
    name, parts = Path(data).name, []
    cal = meta.get("calibration") or {}
    if cal.get("low_confidence_threshold") is not None and cal.get("fit_split", cal.get("split")) == split \
            and Path(str(cal.get("data", ""))).name == name:
        parts.append("the temperature and low-confidence threshold" if cal.get("temperature") is not None
                     else "the low-confidence threshold")
    for block, what in (("decision", "the decision rules' min_probability"), ("domain", "the out-of-domain threshold")):
        chosen = (meta.get(block) or {}).get("chosen_on") or {}
        if chosen.get("split") == split and Path(str(chosen.get("data", ""))).name == name:
            parts.append(what)
    return ", ".join(parts)


def parent_ref(parent: Any) -> str | None:
    """``"id@version"`` of a package's ``provenance.parent``: calibrate writes that string, finetune a mapping
    ``{"id", "version", "path"}`` (whose path, a folder on the machine that made it, is not shown)."""
    if isinstance(parent, Mapping):
        return f"{parent.get('id')}@{parent.get('version')}" if parent.get("id") else None
    return str(parent) if parent else None


def import_package(path: str | Path, dest: str | Path | None = None) -> Path:
    """Check the package at ``path`` (folder or zip) and copy it into the user catalog as ``<id>/<version>/``.

    Refuses a version that is not ``MAJOR.MINOR.PATCH`` or that any catalog holds for the id
    (:func:`check_new_version`). Returns the new folder.
    """
    given = Path(path).expanduser()
    if not given.exists():
        raise ModelPackageError("model package not found", path)
    # always a path: a folder here without model.json is not the catalog's package of that name
    pkg = _open_folder(given) if given.is_dir() else load_package(given)
    try:
        from ..limits import MAX_PACKAGE_ENV, human_bytes, max_package_bytes
        total = sum(f.stat().st_size for f in pkg.path.rglob("*") if f.is_file() and not f.is_symlink())
        if total > max_package_bytes():
            raise ModelPackageError(f"package holds {human_bytes(total)}, more than the limit of "
                                    f"{human_bytes(max_package_bytes())} ({MAX_PACKAGE_ENV})", path)
        roots = catalogs_with(dest)
        check_new_version(pkg.id, pkg.version, roots, "model.json version", path)
        check_same_kind(pkg.id, pkg.meta.get("task", "classification"), pkg.input_spec.get("kind"), roots,
                        "model.json id", path)
        pkg.verify()
        return _copy_atomically(pkg.path, roots[0] / pkg.id / pkg.version, where=path)
    finally:
        pkg.close()   # a zip's temporary folder


def _copy_atomically(src: Path, target: Path, where: Any) -> Path:
    if target.exists():
        raise ModelPackageError(f"{target} already exists; packages are never overwritten", where)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        _rename_new(tmp, target, where)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _rename_new(tmp: Path, target: Path, where: Any) -> None:
    if target.exists():  # rename() would replace an empty target folder silently
        raise ModelPackageError(f"{target} already exists; packages are never overwritten", where)
    # mkdtemp makes the folder private (0700); a catalog package is as readable as any file the user creates
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    for child in tmp.rglob("*"):
        child.chmod((0o777 if child.is_dir() else 0o666) & ~umask)
    try:
        os.rename(tmp, target)
    except OSError as exc:
        raise ModelPackageError(f"could not create {target} ({exc.strerror})", where) from None


# --------------------------------------------------------------------------------------------- saving
def held_versions(pkg_id: str, roots) -> list[str]:
    """The versions of ``pkg_id`` the catalogs ``roots`` hold: their folders whose name is a version (others are
    passed over: they are never the latest)."""
    versions = []
    for root in roots:
        d = Path(root) / pkg_id
        if d.is_dir():
            versions += [p.name for p in d.iterdir() if p.is_dir() and is_version(p.name)]
    return versions


def next_version(pkg_id: str, roots: list[Path] | None = None) -> str:
    """The next free patch version of ``pkg_id`` over ``roots`` (default: all catalogs); ``1.0.0`` if none.
    Folders whose name is not a version are passed over (they are never the latest)."""
    versions = held_versions(pkg_id, roots or catalog_dirs())
    if not versions:
        return "1.0.0"
    major, minor, patch = max(versions, key=_version_key).split(".")
    return f"{major}.{minor}.{int(patch) + 1}"


def derived_version(pkg_id: str, parent_version: str, version: str | None, roots: list[Path],
                    option: str = "--version") -> str:
    """The version a package derived from ``parent_version`` (a recalibration) is saved as.

    ``version`` when given: a package version that no catalog in ``roots`` holds for ``pkg_id``
    (:func:`check_new_version`). Without it, the parent's next free patch version (1.3.0 -> 1.3.1, or 1.3.2 when
    that is taken), so a package derived from an older version never becomes the default over newer ones; a parent
    whose version is not one (made before versions were checked) gets the id's next free version.
    Raises :class:`ConfigError` naming ``option``.
    """
    if version is not None:
        return check_new_version(pkg_id, version, roots, option)
    return next_free_patch(pkg_id, parent_version, roots)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_package(model, meta: Mapping[str, Any], dest: str | Path | None = None,
                 extra_files: Mapping[str, bytes | str | Path] | None = None) -> Path:
    """Write ``model``'s weights and ``meta`` as a new package ``dest/<id>/<version>/`` and return that folder.

    Args:
        model: a ``torch.nn.Module`` (its ``state_dict`` is saved as safetensors) or a state dict.
        meta: model.json content; ``weights`` and ``format_version`` are filled in, ``provenance.created`` and
            ``provenance.code_version`` too when absent. ``version=None`` takes :func:`next_version`.
        dest: catalog root (default: the user catalog). The package is built in a temporary folder next to the
            target and renamed into place, so it is complete or absent; an existing id/version is refused.
        extra_files: more files to put in the package (e.g. ``MODEL_CARD.md``, ``training_curve.png``):
            name -> bytes, text, or a path to copy.
    """
    import torch
    from safetensors.torch import save_file

    from .. import __version__

    root = Path(dest) if dest is not None else user_models_dir()
    meta = _jsonable(dict(meta))
    meta.setdefault("task", "classification")
    if not meta.get("version"):
        meta["version"] = next_version(str(meta.get("id")), catalogs_with(root))
    meta["format_version"] = FORMAT_VERSION
    prov = dict(meta.get("provenance") or {})
    prov.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    prov.setdefault("code_version", __version__)
    meta["provenance"] = prov
    meta["weights"] = {"file": "weights.safetensors", "sha256": "pending"}
    validate_meta(meta, "model.json (to be saved)")
    # the last guard: a package saved under a name that is not a version could never be the latest
    check_version(meta["version"], "model.json version", "model.json (to be saved)")
    target = root / meta["id"] / meta["version"]
    if target.exists():
        raise ModelPackageError(f"{target} already exists; packages are never overwritten (choose a new version)")

    state = model.state_dict() if hasattr(model, "state_dict") else dict(model)
    # clone: safetensors refuses shared/non-contiguous storage
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{meta['version']}.partial-", dir=target.parent))
    try:
        wpath = tmp / "weights.safetensors"
        # one metadata key: safetensors writes a multi-key header in random order, so the same weights would hash
        # differently from run to run
        save_file(tensors, str(wpath), metadata={"package": f"{meta['id']}@{meta['version']}"})
        meta["weights"]["sha256"] = sha256_file(wpath)
        for name, content in (extra_files or {}).items():
            out = tmp / name
            if isinstance(content, Path):
                shutil.copyfile(content, out)
            elif isinstance(content, bytes):
                out.write_bytes(content)
            else:
                out.write_text(str(content), encoding="utf-8")
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        _rename_new(tmp, target, None)
    except BaseException:
        with contextlib.suppress(Exception):
            shutil.rmtree(tmp)
        raise
    return target
