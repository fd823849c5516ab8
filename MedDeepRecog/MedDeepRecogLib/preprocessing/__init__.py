"""Preprocessing: named steps (SimpleITK / MONAI / fast torch filters) composed into pipelines declared as data.

Public API::

    from MedDeepRecogLib.preprocessing import Pipeline, load_pipeline
    pipeline = load_pipeline("lung-ct")                     # preset name, JSON/YAML path, or data
    result = pipeline.run(image)                            # sitk.Image in, PipelineResult out
    result.image, result.masks["lungs"]                     # float32 image, uint8 masks (same grid)
    Pipeline.from_data({"steps": [{"name": "window", "preset": "abdomen"}]}).to_data()

Steps and their parameters: :func:`describe_steps` (``meddeeprecog preprocess --list``).
"""

from .pipeline import Pipeline, PipelineResult, list_presets, load_pipeline
from .steps import REGISTRY, Step, describe_steps, make_step

__all__ = ["Pipeline", "PipelineResult", "list_presets", "load_pipeline", "REGISTRY", "Step", "describe_steps",
           "make_step"]
