"""Slicer-side helpers of the MedDeepRecog module: MRML scene I/O (:mod:`.scene_io`) and non-blocking worker
runs (:mod:`.jobs`). Everything that does not need Slicer lives in ``MedDeepRecogLib.slicer_bridge`` instead."""
