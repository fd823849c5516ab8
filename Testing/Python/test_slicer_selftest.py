"""The module's own self-test (``MedDeepRecogTest``) runs under pytest on Slicer's real core, unchanged."""

import pytest


@pytest.mark.parametrize("method", ["test_ClassifyLoadsTableHeatmapAndSegments",
                                    "test_PreviewLoadsFilteredVolumeAndMask", "test_FinetuneThenClassifySegments",
                                    "test_SegmentLoadsOrgansOnTheScanGrid"])
def test_module_self_test(slicer_core, method):
    test = slicer_core.module.MedDeepRecogTest(method)
    test.setUp()
    getattr(test, method)()
