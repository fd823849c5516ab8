"""Model packages: round trip, versions, catalog, import, and refusal of tampered / unsafe / inconsistent packages."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from MedDeepRecogLib.errors import ConfigError, ModelPackageError
from MedDeepRecogLib.models import build_model
from MedDeepRecogLib.packages.package import load_weights
from MedDeepRecogLib.packages import (import_package, list_packages, load_package, next_version, read_package_meta,
                                      save_package, sha256_file, user_models_dir)

KW = {"in_channels": 1, "num_classes": 2, "channels": [4, 8], "hidden": 8}


def _meta(pkg_id="toy", version="1.0.0", **over):
    meta = {"id": pkg_id, "version": version, "description": "test model",
            "architecture": {"name": "simple_cnn2d", "kwargs": dict(KW)},
            "class_names": ["neg", "pos"], "modality": "any",
            "input": {"kind": "slices2d", "size": [16, 16], "spacing_mm": None, "channels": 1,
                      "pipeline": {"steps": []}},
            "provenance": {"data": "synthetic", "command": "pytest", "seed": 0}}
    meta.update(over)
    return meta


def _model(seed=0):
    torch.manual_seed(seed)
    return build_model("simple_cnn2d", **KW).eval()


def _edit_meta(folder: Path, fn) -> None:
    meta = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    fn(meta)
    (folder / "model.json").write_text(json.dumps(meta), encoding="utf-8")


def test_round_trip_gives_identical_predictions(tmp_path):
    model = _model()
    path = save_package(model, _meta(), tmp_path)
    assert path == tmp_path / "toy" / "1.0.0"
    assert {"model.json", "weights.safetensors"} <= {p.name for p in path.iterdir()}
    pkg = load_package(path)
    assert (pkg.id, pkg.version, pkg.class_names) == ("toy", "1.0.0", ["neg", "pos"])
    assert pkg.input_spec["size"] == [16, 16]
    assert pkg.meta["weights"]["sha256"] == sha256_file(path / "weights.safetensors")
    assert pkg.meta["provenance"]["code_version"] and pkg.meta["provenance"]["created"]
    assert pkg.target_layer == "features.conv2"
    rebuilt = pkg.build_model("cpu")
    assert not rebuilt.training
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), model(x), atol=1e-6)


def test_a_slice_model_is_built_in_the_channels_last_layout_and_saves_back_unchanged(tmp_path):
    """Slice (2D) packages run in oneDNN's channels-last layout (a faster forward pass on the CPU); predictions and
    a package saved again from the built model are the same as in the default layout."""
    model = _model()
    pkg = load_package(save_package(model, _meta(), tmp_path))
    rebuilt = pkg.build_model("cpu")
    conv = next(m for m in rebuilt.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), model(x), atol=1e-5)
    again = load_package(save_package(rebuilt, _meta(version="1.0.1"), tmp_path))
    first, second = load_weights(pkg.weights_path), load_weights(again.weights_path)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_same_weights_give_the_same_weights_file(tmp_path):
    """Retraining that reproduces the weights bit for bit must also reproduce the file's sha256 (the safetensors
    header once held two metadata keys in random order)."""
    digests = {save_package(_model(), _meta(), tmp_path / f"c{i}").joinpath("weights.safetensors").read_bytes()
               for i in range(6)}
    assert len(digests) == 1


def test_read_package_meta_reads_model_json_only(tmp_path):
    """What the Slicer panel asks before a run (the model's input kind) must not read the weights; loading still
    checks them."""
    from MedDeepRecogLib.packages import read_package_meta

    path = save_package(_model(), _meta(), tmp_path)
    assert read_package_meta(path)["input"]["kind"] == "slices2d"
    assert read_package_meta(path / "model.json")["id"] == "toy"
    (path / "weights.safetensors").write_bytes(b"tampered")
    assert read_package_meta(path)["version"] == "1.0.0"
    with pytest.raises(ModelPackageError, match="checksum mismatch"):
        load_package(path)
    with pytest.raises(ModelPackageError, match="no model package 'no-such-model'"):
        read_package_meta("no-such-model")
    with pytest.raises(ModelPackageError, match="not found"):
        read_package_meta(tmp_path / "missing" / "pkg")


def test_new_versions_never_overwrite(tmp_path):
    save_package(_model(), _meta(), tmp_path)
    with pytest.raises(ModelPackageError, match="already exists"):
        save_package(_model(1), _meta(), tmp_path)
    auto = save_package(_model(1), _meta(version=None), tmp_path)
    assert auto.name == "1.0.1" and next_version("toy", [tmp_path]) == "1.0.2"
    # the first version is untouched by the failed save
    assert load_package(tmp_path / "toy" / "1.0.0").meta["weights"]["sha256"] != load_package(auto).meta["weights"]["sha256"]
    assert not [p for p in (tmp_path / "toy").iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_catalog_resolution_by_id_and_version():
    save_package(_model(), _meta(version="1.0.0"))
    save_package(_model(1), _meta(version="1.0.10"))
    save_package(_model(2), _meta(version="1.0.9"))
    assert load_package("toy").version == "1.0.10"  # numeric, not text, ordering
    assert load_package("toy@1.0.9").version == "1.0.9"
    listed = [(p.id, p.version) for p in list_packages() if p.id == "toy"]
    assert listed == [("toy", "1.0.0"), ("toy", "1.0.9"), ("toy", "1.0.10")]
    with pytest.raises(ModelPackageError, match="no version '2.0'"):
        load_package("toy@2.0")
    with pytest.raises(ModelPackageError, match="no model package 'missing'"):
        load_package("missing")


def test_a_folder_named_like_a_model_in_the_working_directory_does_not_hide_the_catalog(tmp_path, monkeypatch):
    """``classify --out toy`` leaves a folder ``toy`` of results; a second ``--model toy`` run from there still
    loads the catalog's package. A folder that is a package, or a path with a separator, is still taken as given."""
    save_package(_model(), _meta(version="1.0.0"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "scan.json").write_text("{}")
    assert load_package("toy").version == "1.0.0"
    assert read_package_meta("toy")["version"] == "1.0.0"
    with pytest.raises(ModelPackageError, match="not a model package"):
        load_package("./toy")


def _with_bad_version(pkg_dir: Path, version: str) -> Path:
    """``pkg_dir`` renamed to ``version`` in folder and model.json: a package a user catalog may hold from before
    versions were checked (its weights' checksum is unchanged)."""
    bad = pkg_dir.parent / version
    pkg_dir.rename(bad)
    _edit_meta(bad, lambda m: m.update(version=version))
    return bad


def test_a_package_whose_version_is_not_one_is_never_the_latest(tmp_path, capsys):
    """A user catalog made before versions were checked may hold ``toy/notsemver`` (or ``x.y``): it is listed with
    a note and loaded when asked for by name, but ``toy`` alone is the highest MAJOR.MINOR.PATCH, the next version
    ignores it, and an id with no proper version at all is refused with the versions it has."""
    from MedDeepRecogLib.cli import main
    from MedDeepRecogLib.packages import derived_version

    save_package(_model(), _meta(version="1.0.0"))
    for name, seed in (("notsemver", 1), ("x.y", 2), ("9.9", 3)):
        _with_bad_version(save_package(_model(seed), _meta(version="2.0.0")), name)
    assert load_package("toy").version == "1.0.0"
    assert load_package("toy@x.y").version == "x.y"
    assert next_version("toy") == "1.0.1"
    assert derived_version("toy", "x.y", None, [user_models_dir()]) == "1.0.1"
    listed = {p.version: p for p in list_packages() if p.id == "toy"}
    assert set(listed) == {"1.0.0", "notsemver", "x.y", "9.9"} and not any(p.error for p in listed.values())
    assert listed["1.0.0"].note is None and "never taken as the latest" in listed["9.9"].note
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "toy@notsemver" in out and out.count("NOTE:") == 3
    main(["models", "--verify"])
    assert capsys.readouterr().out.count("NOTE:") == 3  # verify says it too

    _with_bad_version(save_package(_model(), _meta(pkg_id="only-bad", version="1.0.0")), "v1")
    with pytest.raises(ModelPackageError, match=r"no MAJOR.MINOR.PATCH version .*installed: v1.*only-bad@VERSION"):
        load_package("only-bad")
    assert load_package("only-bad@v1").version == "v1"


def test_save_and_import_refuse_a_version_that_is_not_one(tmp_path):
    """The version rule is the last guard of save_package, and import checks the package's model.json."""
    for bad in ("1.0", "notsemver", "1.01.0", "1.0.0-rc1", "v1.0.0"):
        with pytest.raises(ConfigError, match=f"model.json version '{bad}' is not a package version"):
            save_package(_model(), _meta(version=bad), tmp_path)
    assert not (tmp_path / "toy").exists()
    src = _with_bad_version(save_package(_model(), _meta(pkg_id="oldbad"), tmp_path), "2.0")
    with pytest.raises(ConfigError, match=r"model.json version '2.0' is not a package version \(MAJOR.MINOR.PATCH"):
        import_package(src)
    assert not (user_models_dir() / "oldbad").exists()


def test_import_refuses_a_version_the_bundled_catalog_holds(tmp_path):
    """Importing a package with a bundled id and version would hide the bundled one: refused, naming it."""
    src = save_package(_model(), _meta(pkg_id="body-region", version="1.0.0"), tmp_path)
    with pytest.raises(ConfigError, match="model.json version 1.0.0: body-region@1.0.0 already exists in the "
                                          "bundled catalog .*never overwritten or shadowed: bump the version"):
        import_package(src)
    assert not (user_models_dir() / "body-region").exists()


def test_import_suggests_the_next_free_patch_of_the_taken_version(tmp_path, capsys):
    """``models import`` of a package at a taken 0.4.1 suggests 0.4.2, and at a taken 0.1.0 suggests 0.1.1 (as
    ``train`` does: one rule, :func:`suggested_version`), saying that a newer version stays the one used by id."""
    from MedDeepRecogLib.cli import main

    for v in ("0.1.0", "0.4.1", "0.8.2"):
        (user_models_dir() / "clash" / v).mkdir(parents=True)
    src = save_package(_model(), _meta(pkg_id="clash", version="0.4.1"), tmp_path / "a")
    assert main(["models", "import", str(src)]) == 2
    err = capsys.readouterr().err
    assert "bump the version (0.4.2 is free; clash@0.8.2 is newer and stays the one used by id)" in err
    src = save_package(_model(), _meta(pkg_id="clash", version="0.1.0"), tmp_path / "b")
    assert main(["models", "import", str(src)]) == 2
    err = capsys.readouterr().err
    assert "model.json version 0.1.0: clash@0.1.0 already exists in the user catalog" in err
    assert "bump the version (0.1.1 is free; clash@0.8.2 is newer and stays the one used by id)" in err
    assert "0.8.3" not in err


def test_import_refuses_an_id_the_bundled_catalog_holds_for_another_kind_of_model(tmp_path):
    """A segment classifier imported as body-region 9.0.0 (a free version) would become body-region's latest:
    refused."""
    src = save_package(_model(), _meta(pkg_id="body-region", version="9.0.0"), tmp_path)
    _edit_meta(src, lambda m: m["input"].update(kind="roi3d", size=[16, 16, 16]))   # what the import reads
    with pytest.raises(ConfigError, match="model.json id body-region: body-region@1.0.0 .* is a classification model "
                                          r"\(input kind slices2d\); a classification model \(input kind roi3d\)"):
        import_package(src)
    assert not (user_models_dir() / "body-region").exists()


def test_tampered_weights_fail_checksum(tmp_path):
    path = save_package(_model(), _meta(), tmp_path)
    w = path / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[-5] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ModelPackageError, match="checksum mismatch") as err:
        load_package(path)
    assert "weights.safetensors" in str(err.value)


class _NotWeights:
    def __init__(self):
        self.payload = "custom object"


class _Exploit:
    """Unpickling this would create a marker file (a stand-in for arbitrary code)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pt_package(tmp_path, obj, name="evil", pickle_raw=False) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    wpath = folder / "weights.pt"
    if pickle_raw:
        wpath.write_bytes(pickle.dumps(obj))
    else:
        torch.save(obj, wpath)
    meta = _meta(weights={"file": "weights.pt", "sha256": sha256_file(wpath)})
    (folder / "model.json").write_text(json.dumps(meta), encoding="utf-8")
    return folder


def test_pickle_with_custom_object_is_refused(tmp_path):
    folder = _pt_package(tmp_path, {"state": _NotWeights()})
    pkg = load_package(folder)  # checksum is fine ...
    with pytest.raises(ModelPackageError, match="not plain tensors"):
        pkg.build_model()  # ... but the weights are not plain tensors


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_is_not_executed(tmp_path):
    marker = tmp_path / "pwned.txt"
    folder = _pt_package(tmp_path, _Exploit(str(marker)), pickle_raw=True)
    with pytest.raises(ModelPackageError, match="refused"):
        load_package(folder).build_model()
    assert not marker.exists()


def test_plain_pt_state_dict_is_accepted(tmp_path):
    model = _model()
    folder = _pt_package(tmp_path, model.state_dict(), name="plain")
    rebuilt = load_package(folder).build_model()
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), model(x))


def test_class_names_must_match_outputs(tmp_path):
    path = save_package(_model(), _meta(), tmp_path)
    _edit_meta(path, lambda m: m.update(class_names=["a", "b", "c"]))
    with pytest.raises(ModelPackageError, match="3 class names .* 2 outputs"):
        load_package(path)


def test_input_spec_must_match_architecture(tmp_path):
    path = save_package(_model(), _meta(), tmp_path)
    _edit_meta(path, lambda m: m["input"].update(channels=3))
    with pytest.raises(ModelPackageError, match="channels=3 .* in_channels=1"):
        load_package(path)
    _edit_meta(path, lambda m: m["input"].update(channels=1, kind="volume3d"))
    with pytest.raises(ModelPackageError, match="input.size"):
        load_package(path)


def test_weights_that_do_not_fit_the_architecture(tmp_path):
    path = save_package(_model(), _meta(), tmp_path)
    def widen(m):
        m["architecture"]["kwargs"]["channels"] = [4, 16]
    _edit_meta(path, widen)
    with pytest.raises(ModelPackageError, match="do not fit architecture"):
        load_package(path).build_model()


def test_check_input_names_channel_problem(tmp_path):
    pkg = load_package(save_package(_model(), _meta(), tmp_path))
    pkg.check_input(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ModelPackageError, match="expects 1 channel"):
        pkg.check_input(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ModelPackageError, match="4-D input"):
        pkg.check_input(torch.zeros(1, 1, 8, 16, 16))


def test_missing_keys_and_bad_json(tmp_path):
    path = save_package(_model(), _meta(), tmp_path)
    _edit_meta(path, lambda m: m.pop("class_names"))
    with pytest.raises(ModelPackageError, match="class_names"):
        load_package(path)
    (path / "model.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelPackageError, match="not valid JSON"):
        load_package(path)


def test_zip_package_and_import(tmp_path):
    src = save_package(_model(), _meta(pkg_id="zipped"), tmp_path / "build")
    archive = tmp_path / "zipped.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in src.iterdir():
            zf.write(f, f"zipped/{f.name}")
    assert load_package(archive).id == "zipped"
    installed = import_package(archive)
    assert installed == user_models_dir() / "zipped" / "1.0.0"
    assert load_package("zipped").path == installed
    before = sha256_file(installed / "weights.safetensors")
    with pytest.raises(ConfigError, match="zipped@1.0.0 already exists in the user catalog"):
        import_package(src)
    assert sha256_file(installed / "weights.safetensors") == before


def test_import_refuses_tampered_package(tmp_path):
    src = save_package(_model(), _meta(pkg_id="bad"), tmp_path)
    (src / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelPackageError, match="checksum"):
        import_package(src)
    assert not (user_models_dir() / "bad").exists()


def test_models_cli_lists_and_imports(tmp_path):
    src = save_package(_model(), _meta(pkg_id="clitoy"), tmp_path)
    env = {**os.environ}
    run = lambda *a: subprocess.run([sys.executable, "-m", "MedDeepRecogLib", *a], capture_output=True, text=True,
                                    env=env, timeout=120)
    r = run("models", "import", str(src), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["id"] == "clitoy"
    r = run("models", "--json")
    assert r.returncode == 0
    assert ("clitoy", "1.0.0") in {(p["id"], p["version"]) for p in json.loads(r.stdout)}
    r = run("models", "import", str(src))
    assert r.returncode == 2 and "already exists" in r.stderr and "Traceback" not in r.stderr


def test_import_refuses_a_package_whose_input_size_does_not_fit(tmp_path):
    # conv-pool-conv-pool needs at least 4x4 pixels; the spec claims 2x2
    src = save_package(_model(), _meta(pkg_id="tiny", input={"kind": "slices2d", "size": [2, 2], "channels": 1,
                                                              "pipeline": {"steps": []}}), tmp_path)
    with pytest.raises(ModelPackageError, match="does not accept its declared input"):
        import_package(src)
    assert not (user_models_dir() / "tiny").exists()


def test_verify_makes_classifys_heatmap_layer_check(tmp_path):
    """A package naming a Grad-CAM layer its network lacks (an ensemble's ``members.*.`` layer on one network) is
    refused by classify at load; ``verify`` (``models --verify``, ``models import``) makes the same check, with the
    same function, so such a package is never reported ok."""
    from MedDeepRecogLib.inference import classify
    from MedDeepRecogLib.packages import package

    assert classify.target_layer_of is package.target_layer_of
    src = save_package(_model(), _meta(pkg_id="nolayer", explain={"methods": ["gradcam"],
                                                                  "target_layer": "members.*.features.conv2"}),
                       tmp_path)
    pkg = load_package(src)
    with pytest.raises(ModelPackageError, match=r"explain.target_layer 'members.\*.features.conv2' is not a layer"):
        pkg.verify()
    with pytest.raises(ModelPackageError, match="is not a layer of simple_cnn2d"):
        import_package(src)
    assert not (user_models_dir() / "nolayer").exists()
    good = load_package(save_package(_model(), _meta(pkg_id="layer", explain={"target_layer": "features.conv2"}),
                                     tmp_path))
    good.verify()


# ------------------------------------------------------------------ zips: errors name the zip, one package, damage
def _zipped(tmp_path, name="pkg.zip", edit=None, extra=None, kind="volume3d", package_id="zipcase") -> Path:
    """A tiny package zipped as ``pkg/...`` (``edit(folder)`` changes it first; ``extra``: member -> bytes)."""
    from tiny_test_package import make_tiny_package

    folder = make_tiny_package(tmp_path / f"src_{name}", kind=kind, package_id=package_id)
    if edit is not None:
        edit(folder)
    archive = tmp_path / name
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f"pkg/{f.name}")
        for member, data in (extra or {}).items():
            zf.writestr(member, data)
    return archive


def _flip_weights(folder):
    w = folder / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[-5] ^= 0xFF
    w.write_bytes(bytes(data))


def _absurd_size(folder):
    _edit_meta(folder, lambda m: m["input"].update(size=[60000, 60000, 60000]))


@pytest.mark.parametrize("case, member, needle", [
    ("flipped_byte", "pkg/weights.safetensors", "checksum mismatch"),
    ("script", "pkg/evil.py", "not a file a model package holds"),
    ("bad_id", "pkg/model.json", "id '../evil' must be a plain name"),
    ("absurd_input_size", "pkg/model.json", "activation limit"),
])
def test_an_error_about_a_zip_member_names_the_zip_and_the_member(run_cli_all, tmp_path, monkeypatch, case, member,
                                                                   needle):
    """A zip is opened in a temporary folder deleted with the package: the error names the zip the user gave and
    the member in it, never that folder."""
    from conftest import error_line

    edit = {"flipped_byte": _flip_weights, "bad_id": lambda f: _edit_meta(f, lambda m: m.update(id="../evil")),
            "absurd_input_size": _absurd_size}.get(case)
    _zipped(tmp_path, edit=edit, extra={"pkg/evil.py": b"import os\n"} if case == "script" else None)
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli_all("models", "import", "pkg.zip")
    line = error_line(code, err, needle)
    assert line.startswith(f"meddeeprecog models: error: pkg.zip: {member}: "), line
    assert "meddeeprecog_pkg_" not in err and not out
    assert not any((user_models_dir()).glob("*/*"))


def test_segment_with_a_classification_zip_names_the_zip(run_cli_all, tmp_path, monkeypatch):
    import SimpleITK as sitk
    from conftest import error_line, make_volume

    _zipped(tmp_path, name="good.zip")
    sitk.WriteImage(make_volume(size=(16, 16, 16)), str(tmp_path / "ct.nrrd"))
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli_all("segment", "ct.nrrd", "--model", "good.zip", "--out", "out.seg.nrrd")
    line = error_line(code, err, "is a classification model")
    assert line.startswith("meddeeprecog segment: error: good.zip: model zipcase@0.0.1 is a classification"), line
    assert not (tmp_path / "out.seg.nrrd").exists()


def test_a_malicious_pickle_in_a_zip_is_refused_in_one_line_without_torchs_advice(run_cli_all, tmp_path):
    """torch's refusal tells the user to load again with weights_only=False (which runs the pickle) and warns about
    the pickle protocol on stderr: neither reaches the user, only what was refused and what is loaded."""
    from conftest import error_line

    marker = tmp_path / "pwned.txt"

    def evil(folder):
        (folder / "weights.safetensors").unlink()
        (folder / "weights.pt").write_bytes(pickle.dumps(_Exploit(str(marker)), protocol=4))
        _edit_meta(folder, lambda m: m.update(weights={"file": "weights.pt",
                                                       "sha256": sha256_file(folder / "weights.pt")}))
    archive = _zipped(tmp_path, name="evil.zip", edit=evil)
    with warnings.catch_warnings(record=True) as caught:  # what a command line run prints on stderr
        warnings.simplefilter("always")
        code, _, err = run_cli_all("models", "import", archive)
    assert not caught, [str(w.message) for w in caught]
    line = error_line(code, err, f"{archive}: pkg/weights.pt: weights file is not plain tensors and was refused",
                      "only safetensors or plain tensor files are loaded")
    assert "weights_only" not in line and "Re-running" not in line and "Warning" not in err
    assert not marker.exists()
    assert not any((user_models_dir()).glob("*/*"))


def test_a_zip_holding_two_packages_is_refused_naming_both(run_cli_all, tmp_path):
    from conftest import error_line
    from tiny_test_package import make_tiny_package

    a = make_tiny_package(tmp_path / "a", kind="volume3d", package_id="first")
    b = make_tiny_package(tmp_path / "b", kind="volume3d", package_id="second")
    archive = tmp_path / "two.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for top, folder in (("b", b), ("a", a)):  # the second package first in the zip's order
            for f in folder.iterdir():
                zf.write(f, f"{top}/{f.name}")
    code, _, err = run_cli_all("models", "import", archive)
    error_line(code, err, str(archive), "2 model packages", "a/model.json", "b/model.json")
    assert not any((user_models_dir()).glob("*/*"))


def test_a_damaged_zip_and_a_folder_without_model_json_are_named_as_such(run_cli_all, tmp_path, monkeypatch):
    from conftest import error_line

    good = _zipped(tmp_path, name="good.zip")
    (tmp_path / "cut.zip").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    code, _, err = run_cli_all("models", "import", tmp_path / "cut.zip")
    error_line(code, err, "cut.zip: damaged zip file")
    # a zip whose table of contents is whole but whose compressed data is not
    data = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as zf:
        info = zf.getinfo("pkg/weights.safetensors")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 200
    data[start:start + 64] = bytes(64)
    (tmp_path / "garbled.zip").write_bytes(bytes(data))
    code, _, err = run_cli_all("models", "import", tmp_path / "garbled.zip")
    error_line(code, err, "garbled.zip: damaged zip file")

    monkeypatch.chdir(tmp_path)
    (tmp_path / "pkf").mkdir()
    (tmp_path / "pkf" / "notes.txt").write_text("no model here")
    code, _, err = run_cli_all("models", "import", "pkf")
    error_line(code, err, "pkf: not a model package (no model.json in this folder)")
    with pytest.raises(ModelPackageError, match=r"^pkf: not a model package \(no model.json in this folder\), and "
                                                 r"no installed package is named 'pkf'"):
        load_package("pkf")
    assert not any((user_models_dir()).glob("*/*"))


def test_the_reports_reproduce_line_pins_the_models_version(run_cli_all, tmp_path, monkeypatch):
    """``--model ID`` takes the latest version: the page's command names the version it was made with. A path (or
    an ID@VERSION) is quoted as typed."""
    import html

    import SimpleITK as sitk
    from conftest import make_volume
    from MedDeepRecogLib import commands
    from tiny_test_package import make_tiny_package

    pkg = make_tiny_package(user_models_dir(), kind="volume3d", package_id="pinme", version="1.3.0")
    sitk.WriteImage(make_volume(size=(16, 16, 16)), str(tmp_path / "ct.nrrd"))
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli_all("classify", "ct.nrrd", "--model", "pinme", "--out", "out", "--report",
                               "--no-faithfulness", "--uncertainty", "none")
    assert code == 0, err
    page = html.unescape((tmp_path / "out" / "ct_report.html").read_text(encoding="utf-8"))
    assert ("<pre>meddeeprecog classify ct.nrrd --model pinme@1.3.0 --out out --report --no-faithfulness "
            "--uncertainty none</pre>") in page
    package = load_package("pinme")
    for typed, shown in ((["--model", "pinme"], ["--model", "pinme@1.3.0"]),
                         (["--model=pinme"], ["--model=pinme@1.3.0"]),
                         (["--mod", "pinme"], ["--mod", "pinme@1.3.0"]),
                         (["--model", "pinme@1.3.0"], ["--model", "pinme@1.3.0"]),
                         (["--model", str(pkg)], ["--model", str(pkg)]),
                         (["--model", "auto"], ["--model", "auto"])):
        monkeypatch.setattr(commands, "LAST_ARGV", ["classify", "x.nrrd", *typed, "--out", "o"])
        assert commands.command_line(package).split()[3:-2] == shown
