"""Model packages: a trained network plus everything needed to use it safely (format in docs/worker-protocol.md).

A package is a folder (or a ``.zip`` of one) holding ``model.json`` and ``weights.safetensors`` (or ``weights.pt``,
loaded with ``torch.load(weights_only=True)``). Catalogs hold packages as ``<root>/<id>/<version>/``:
the bundled one (``resources.BUNDLED_MODELS_DIR``) and the user's (``$MEDDEEPRECOG_HOME/models``, default
``~/.meddeeprecog/models``).

API (everything else here is internal):

- ``load_package(id_or_path) -> ModelPackage``: a folder, a ``.zip``, ``"ID"`` (highest version in all catalogs)
  or ``"ID@VERSION"``. Checks ``model.json`` (required keys, class names vs. ``num_classes``, input spec vs.
  ``in_channels``) and the weights' sha256; any problem raises :class:`ModelPackageError` naming the file.
- ``read_package_meta(id_or_path) -> dict``: the same resolution, only ``model.json`` read (no weights checked).
- ``ModelPackage``: ``.meta`` (dict of model.json), ``.id``, ``.version``, ``.class_names``, ``.input_spec``
  (``meta["input"]``), ``.path`` (folder), ``.target_layer``, ``.build_model(device="cpu")`` (weights loaded,
  eval mode), ``.check_input(x)`` (channel / dimension check of a batch before inference), ``.data_params()``
  (how a labelled ``.npz`` split is prepared for it), ``.close()`` (deletes a ``.zip``'s temporary extraction
  folder; errors about a file in it name the zip and the member, ``pk.zip: pkg/weights.safetensors: ...``).
- A ``.zip`` holds exactly one package (one ``model.json``); a damaged zip is refused as such.
- ``load_weights(path) -> dict``: the tensors of a weights file (refusing anything but plain tensors).
- ``save_package(model, meta, dest=None, extra_files=None) -> Path``: writes ``dest/<id>/<version>/`` atomically
  (temp dir + rename); ``meta["version"]`` may be ``None`` to take the next free patch version. Never overwrites.
- ``ModelPackage.verify()``: a dry run on zeros of the declared input size (done by ``import_package``).
- ``list_packages() -> list[PackageInfo]``; ``import_package(path) -> Path`` (validated copy into the user catalog).
- ``id_versions(ref)``: every version of the id ``ref`` names without a version, with its model.json.
- ``user_models_dir()``, ``catalog_dirs()``, ``catalogs_with(dest)``, ``next_version(id)``, ``derived_version(...)``.
- Versions are ``MAJOR.MINOR.PATCH`` (``is_version``, ``check_version``); ``check_new_version(id, version, roots,
  setting)`` is the one check before a package is written with a chosen version: a version no catalog holds for
  that id (a second package of the same id and version would overwrite or hide the first).

Weights are never unpickled with arbitrary classes: a ``.pt`` file with anything but tensors is refused.
"""

from .package import (
    FORMAT_VERSION,
    ModelPackage,
    PackageInfo,
    catalog_dirs,
    catalogs_with,
    check_new_version,
    check_same_kind,
    check_version,
    import_package,
    is_version,
    list_packages,
    load_package,
    load_weights,
    derived_version,
    id_versions,
    next_version,
    read_package_meta,
    save_package,
    sha256_file,
    user_models_dir,
    validate_meta,
)

__all__ = [
    "FORMAT_VERSION",
    "ModelPackage",
    "PackageInfo",
    "catalog_dirs",
    "catalogs_with",
    "check_new_version",
    "check_same_kind",
    "check_version",
    "import_package",
    "is_version",
    "list_packages",
    "load_package",
    "load_weights",
    "derived_version",
    "id_versions",
    "next_version",
    "read_package_meta",
    "save_package",
    "sha256_file",
    "user_models_dir",
    "validate_meta",
]
