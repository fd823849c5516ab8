"""MedDeepRecog core: plain-Python deep-learning recognition for CT/MRI (no Slicer import).

Sub-packages are named for what they do: ``io`` (geometry-preserving reading/writing), ``preprocessing``,
``models``, ``training``, ``explain``, ``robustness``, ``packages`` (model packages), ``commands`` (command line).
"""

__version__ = "0.1.0"
