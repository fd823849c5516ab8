"""A fine-tuned class keeps the colour the user gave it in the training .seg.nrrd (stomach drawn green came back
from segment in the palette's (0.44, 0.72, 0.82)): the package's ``class_colors`` carries it to segment's output."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from MedDeepRecogLib.io import SegmentSpec, write_segmentation


def _case(tmp_path):
    arr = np.full((8, 16, 16), 40, np.int16)
    arr[:, :2] = -1000
    scan = sitk.GetImageFromArray(arr)
    sitk.WriteImage(scan, str(tmp_path / "case1.nii.gz"))
    labels = np.zeros((8, 16, 16), np.uint8)
    labels[2:5, 4:8, 4:8] = 1
    labels[2:5, 10:14, 10:14] = 2
    write_segmentation(labels, scan, [SegmentSpec("liver", 1), SegmentSpec("stomach", 2, (0.0, 1.0, 0.0))],
                       tmp_path / "case1.seg.nrrd")
    return tmp_path / "case1.nii.gz", tmp_path / "case1.seg.nrrd"


def test_load_case_keeps_the_users_colours_and_class_colors_records_them(tmp_path):
    from MedDeepRecogLib.finetune.manifest import Case, parse_class_map
    from MedDeepRecogLib.finetune.segment_data import class_colors, load_case

    image, seg = _case(tmp_path)
    item = load_case(Case("case1", image, seg), parse_class_map("liver,stomach"))
    colors = {s.name: s.color for s in item.segments}
    assert colors["stomach"] == (0.0, 1.0, 0.0)
    table = class_colors([item], ["liver", "stomach", "spleen"], {"spleen": [0.1, 0.2, 0.3], "stomach": [1, 0, 0]})
    assert table["stomach"] == [0.0, 1.0, 0.0]          # the user's, over the base's
    assert table["spleen"] == [0.1, 0.2, 0.3]           # a class the cases leave uncoloured keeps the base's
    assert table["liver"] == [round(c, 6) for c in colors["liver"]]


def test_segment_writes_a_package_class_colour(tmp_path, monkeypatch):
    from MedDeepRecogLib.inference import segment

    image, _ = _case(tmp_path)

    class Package:
        id, version = "ft", "1.0.1"
        class_names = ["background", "liver", "stomach"]
        meta = {"class_colors": {"stomach": [0.0, 1.0, 0.0]}}

    def fake(img, pkg, **_):
        labels = np.zeros(tuple(reversed(img.GetSize())), np.uint8)
        labels[3, 5, 5], labels[3, 11, 11] = 1, 2
        return labels, {"model": "ft@1.0.1", "timing_s": {}}

    monkeypatch.setattr(segment, "load_segmentation_package", lambda _: Package())
    monkeypatch.setattr(segment, "segment_image", fake)
    monkeypatch.setattr(segment, "stated_limits", lambda _: {"caveat": ""})
    out = tmp_path / "out.seg.nrrd"
    segment.segment_file(image, "ft", out)
    colors = {s["name"]: s["color"] for s in slicerio.read_segmentation(str(out), skip_voxels=True)["segments"]}
    assert colors["stomach"] == pytest.approx([0.0, 1.0, 0.0])
    assert colors["liver"] == pytest.approx([221 / 255, 130 / 255, 101 / 255], abs=1e-5)   # Slicer's liver colour
