"""bench/heat_placement.py's border measures: the band, the peak test and the heat share."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from heat_placement import band_mask, placement  # noqa: E402


def test_band_is_the_outer_tenth_of_each_side():
    band = band_mask((100, 50), 0.1)
    assert band[:10].all() and band[-10:].all() and band[:, :5].all() and band[:, -5:].all()
    assert not band[10:90, 5:45].any()
    assert band.mean() == 1 - (80 * 40) / (100 * 50)


def test_placement_of_a_border_peak_a_central_blob_uniform_and_empty_heat():
    band = band_mask((100, 100), 0.1)
    corner = np.zeros((100, 100), np.float32)
    corner[2, 3] = 1.0
    assert placement(corner, band) == (True, 1.0)
    centre = np.zeros((100, 100), np.float32)
    centre[40:60, 40:60] = 1.0
    centre[45, 50] = 2.0
    assert placement(centre, band) == (False, 0.0)
    peak_in_band, share = placement(np.ones((100, 100), np.float32), band)
    assert abs(share - band.mean()) < 1e-6
    assert placement(np.zeros((100, 100), np.float32), band) is None
