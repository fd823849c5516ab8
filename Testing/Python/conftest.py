"""Shared pytest fixtures: the real data beside the checkout and small synthetic volumes with odd geometry."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("MEDDEEPRECOG_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _restore_locale():
    """GDCM's DICOM writer (SimpleITK) sets the C locale to "C" and leaves it so; Python's text files then default
    to ASCII and later tests that read UTF-8 text fail depending on test order. Each test starts as the last ended."""
    import locale

    saved = locale.setlocale(locale.LC_ALL)
    yield
    if locale.setlocale(locale.LC_ALL) != saved:
        locale.setlocale(locale.LC_ALL, saved)


@pytest.fixture(autouse=True)
def _isolated_model_home(tmp_path_factory, monkeypatch):
    """Each test gets its own user model catalog, so tests never touch ~/.meddeeprecog."""
    monkeypatch.setenv("MEDDEEPRECOG_HOME", str(tmp_path_factory.mktemp("meddeeprecog_home")))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real, licensed data); tests that need it are skipped where it is absent."""
    if not SHARED_DATA.exists():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


def refusal_line(capsys, *needles: str) -> str:
    """The one stderr line of a refused command (no traceback), holding every needle."""
    return _the_one_line(capsys.readouterr().err, needles)


def error_line(code: int, err: str, *needles: str) -> str:
    """The one stderr line ``err`` of a command that exited with ``code`` 2 (no traceback), holding every needle."""
    assert code == 2, err
    return _the_one_line(err, needles)


def _the_one_line(err: str, needles) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def make_volume(size=(40, 32, 24), spacing=(0.8, 1.1, 2.5), origin=(-12.5, 30.0, 101.0),
                direction=None, dtype=np.int16, seed: int = 0) -> sitk.Image:
    """A synthetic CT-like volume ((x, y, z) ``size``) with an oblique direction by default."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in reversed(size)], indexing="ij")
    body = (x ** 2 + y ** 2 < 0.7).astype(np.float32)
    arr = -1000 + body * (1040 + 30 * rng.standard_normal(body.shape)) + 400 * ((x - 0.2) ** 2 + y ** 2 + z ** 2 < 0.05)
    image = sitk.GetImageFromArray(arr.astype(dtype))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is None:
        angle = np.deg2rad(17.0)
        c, s = np.cos(angle), np.sin(angle)
        direction = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)
    image.SetDirection(direction)
    return image


@pytest.fixture
def oblique_volume() -> sitk.Image:
    """Anisotropic (0.8, 1.1, 2.5 mm), rotated 17° about z, int16 HU-like volume."""
    return make_volume()


@pytest.fixture
def run_cli_all(capsys):
    """``meddeeprecog ARGS`` in-process with every command registered; returns (exit code, stdout, stderr).

    The environment variables the CLI's limit options set are restored afterwards (the CLI restores them itself;
    this keeps a test that fails half-way from leaking them)."""
    from MedDeepRecogLib import cli

    keys = ("MEDDEEPRECOG_MAX_IMAGE_BYTES", "MEDDEEPRECOG_ALLOW_SLICE_GAPS", "MEDDEEPRECOG_MAX_PACKAGE_BYTES",
            "MEDDEEPRECOG_MAX_PARAMS", "MEDDEEPRECOG_MAX_ACTIVATION_BYTES", "MEDDEEPRECOG_MAX_DATASET_BYTES",
            "MEDDEEPRECOG_MAX_BATCH_BYTES")
    saved = {k: os.environ.get(k) for k in keys}

    def run(*argv):
        try:
            code = cli.main([str(a) for a in argv])
        except SystemExit as exc:  # argparse usage errors
            code = exc.code
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    yield run
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def run_cli_area(monkeypatch, run_cli_all):
    """``run_cli_all`` with only ``info`` and ``preprocess`` registered, so a half-written command elsewhere cannot
    break the reader and preprocessing tests."""
    from MedDeepRecogLib import cli

    monkeypatch.setattr(cli, "COMMANDS", ["info", "preprocess"])
    return run_cli_all


@pytest.fixture(scope="module")
def tiny_package(tmp_path_factory) -> Path:
    """An untrained 2-class 3D CNN package written by the same helper the Slicer self-test uses, in a worker
    process as the module runs it (one per test module)."""
    import sys

    from MedDeepRecogLib.slicer_bridge import run_worker, worker_environment

    catalog = tmp_path_factory.mktemp("catalog")
    assert run_worker([sys.executable, "-m", "MedDeepRecogLib.slicer_bridge.tiny_model", str(catalog)],
                      worker_environment(), timeout=300) == {}  # a plain script: no progress result
    return next((catalog / "tiny-test-cnn3d").iterdir())


@pytest.fixture
def slicer_core(monkeypatch, tmp_path):
    """The Slicer module on Slicer's real core (``slicer-core``): see ``slicer_core_fixture.py``."""
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install -e '.[test]')")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("the 'slicer' module here is not Slicer's core")
    from slicer_core_fixture import SlicerCore

    env = SlicerCore(monkeypatch, tmp_path)
    yield env
    env.core.close()


def write_dicom_series(folder: Path, zs, pixels, *, modality: str = "MR", spacing=(1.0, 1.0),
                       uid: str = "1.2.826.0.1.3680043.2.1125.1.4242", desc: str | None = None, x_of=None) -> Path:
    """A DICOM series in ``folder``: one axial int16 slice per position ``zs`` (mm), ``pixels(k)`` its ``(Y, X)``
    array, ``spacing`` (row, column) mm, slice ``k`` at x = ``x_of(k)`` (default 0); UIDs derived from ``uid``."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k, z in enumerate(zs):
        sl = sitk.GetImageFromArray(np.asarray(pixels(k)).astype(np.int16))
        sl.SetSpacing((float(spacing[1]), float(spacing[0])))
        tags = {"0008|0060": modality, "0020|000e": uid, "0020|000d": uid + ".1", "0020|0013": str(k + 1),
                "0020|0032": f"{0 if x_of is None else x_of(k)}\\0\\{z}", "0020|0037": "1\\0\\0\\0\\1\\0",
                "0008|0018": f"{uid}.5.{k}", "0028|0030": f"{spacing[0]:g}\\{spacing[1]:g}"}
        if desc is not None:
            tags["0008|103e"] = desc
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"IM{k:03d}.dcm"))
        writer.Execute(sl)
    return folder
