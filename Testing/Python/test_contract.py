"""The contract the command line, the core and the Slicer module share (``MedDeepRecogLib.contract``): the writer
(``classify``) and the reader (``slicer_bridge``) name a scan's outputs alike for every readable format, and the
choice lists are spelled once."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MedDeepRecogLib import cli, contract
from MedDeepRecogLib.contract import output_file, output_stem, suffix_of
from MedDeepRecogLib.slicer_bridge import read_classify_result
from tiny_test_package import make_tiny_package

MODULE_FILE = Path(__file__).resolve().parents[2] / "MedDeepRecog" / "MedDeepRecog.py"


def test_output_stem_examples(tmp_path):
    assert output_stem("/a/b/scan.nii.gz") == "scan"
    assert output_stem("ct.Seg.NRRD") == "ct"
    assert output_stem("x.y.nrrd") == "x.y"
    assert output_stem("brain.nrrd") == "brain"
    assert output_stem("/data/dicom_folder") == "dicom_folder"
    for suffix in (".ima", ".img", ".hdr", ".png", ".jpg", ".jpeg", ".dcm", ".mha", ".nhdr"):
        assert output_stem(f"/in/case 1{suffix.upper()}") == "case 1", suffix
    folder = tmp_path / "series.1"
    folder.mkdir()
    assert output_stem(folder) == "series.1"  # a DICOM folder keeps its whole name
    # a DICOM file named by its UID keeps its whole name: two slices of a series must not share a stem
    uid = "CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016583"
    assert output_stem(f"/in/{uid}") == uid and output_stem("/in/IM.0001") == "IM.0001"
    assert output_stem("/in/notes.txt") == "notes"
    assert suffix_of("A.SEG.NRRD") == ".seg.nrrd" and suffix_of("b.nii.gz") == ".nii.gz" and suffix_of("c") == ""
    assert output_file("scan", "heatmap") == "scan_heatmap.nrrd"


def _write(path: Path) -> Path:
    """A small grey image in the format ``path``'s extension names (DICOM through GDCM for ``.ima``)."""
    arr = (np.indices((40, 40)).sum(0) * 3).astype(np.int16)
    image = sitk.GetImageFromArray(arr)
    suffix = suffix_of(path)
    if suffix in contract.PICTURE_SUFFIXES:
        sitk.WriteImage(sitk.Cast(sitk.RescaleIntensity(image), sitk.sitkUInt8), str(path))
    elif suffix in (".ima", ".dcm"):
        writer = sitk.ImageFileWriter()
        writer.SetImageIO("GDCMImageIO")
        writer.SetFileName(str(path))
        writer.Execute(image)
    elif suffix == ".img":  # an Analyze / NIfTI pair: write the header, name the voxel file
        sitk.WriteImage(sitk.JoinSeries([image] * 4), str(path.with_suffix(".hdr")))
    else:
        sitk.WriteImage(sitk.JoinSeries([image] * 4), str(path))
    return path


@pytest.mark.parametrize("suffix", [".ima", ".img", ".hdr", ".png", ".jpg", ".dcm", ".nii.gz", ".nrrd"])
def test_reader_finds_what_classify_wrote(tmp_path, run_cli_all, suffix):
    """The outputs ``classify`` writes for a scan are the ones the Slicer side looks for (before the contract, the
    reader looked for ``scan.png.json`` where classify wrote ``scan.json``, and so for .ima, .img and .hdr)."""
    pkg = make_tiny_package(tmp_path / "cat")
    folder = tmp_path / "in"
    folder.mkdir()
    scan = _write(folder / f"case{suffix}")
    out = tmp_path / "out"
    code, _, err = run_cli_all("classify", scan, "--model", pkg, "--out", out, "--progress", "none",
                               "--uncertainty", "none", "--no-faithfulness")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["case.json", "case_heatmap.nrrd", "case_heatmap.png"]
    result = read_classify_result(out, scan)
    assert result.heatmap == out / "case_heatmap.nrrd" and result.png == out / "case_heatmap.png"
    assert {name for name, _ in result.probabilities} == {"alpha", "beta", "gamma"}
    shutil.rmtree(out)


def test_choice_lists_are_spelled_once():
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    options = {a.dest: a for a in commands["classify"]._actions}
    assert tuple(options["explain"].choices) == contract.EXPLAIN_METHODS
    assert tuple(options["uncertainty"].choices) == contract.UNCERTAINTY_MODES
    demo = {a.dest: a for a in commands["demo"]._actions}
    assert set(demo["explain"].choices) <= set(contract.EXPLAIN_METHODS)
    # the Slicer module's explain selector names the contract's list instead of spelling its own
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    literals = [node for node in ast.walk(tree) if isinstance(node, ast.List)
                and {getattr(e, "value", None) for e in node.elts} >= {"gradcam", "gradcampp"}]
    assert not literals, "MedDeepRecog.py spells the explain choices itself"
    assert "EXPLAIN_METHODS" in {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
