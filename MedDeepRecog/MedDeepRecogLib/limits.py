"""Resource bounds checked before anything is allocated, decompressed or built.

A scan's header, a zip's directory and a network's keyword arguments each declare how much memory the next
step will take; these bounds refuse the declaration, naming the file and the size, instead of letting the
allocator (or the kernel's OOM killer) answer. Each bound has a default fit for CT/MR work and an environment
variable to raise it (the command line's ``--max-image-size`` sets the first one).

This module imports nothing heavy (the CLI imports it at start-up).
"""

from __future__ import annotations

import os
import re

#: Voxel bytes a scan's header may declare (all components, after decompression).
MAX_IMAGE_ENV = "MEDDEEPRECOG_MAX_IMAGE_BYTES"
#: Environment variable that lets a DICOM series with missing slices or uneven spacing be read anyway (the CLI's
#: ``--allow-slice-gaps``); the image then carries a note saying so, which ends up in the output JSON.
ALLOW_GAPS_ENV = "MEDDEEPRECOG_ALLOW_SLICE_GAPS"
DEFAULT_MAX_IMAGE_BYTES = 4 << 30
#: Bytes a model package zip may hold once extracted (declared and actually written).
MAX_PACKAGE_ENV = "MEDDEEPRECOG_MAX_PACKAGE_BYTES"
DEFAULT_MAX_PACKAGE_BYTES = 2 << 30
#: Entries a model package zip may hold.
MAX_PACKAGE_FILES = 10_000
#: Parameters a network may have, and activation bytes of one forward pass at batch 1 (float32).
MAX_PARAMS_ENV = "MEDDEEPRECOG_MAX_PARAMS"
DEFAULT_MAX_PARAMS = 500_000_000
MAX_ACTIVATION_ENV = "MEDDEEPRECOG_MAX_ACTIVATION_BYTES"
DEFAULT_MAX_ACTIVATION_BYTES = 16 << 30
#: Bytes a training run may keep its data in: ``train``'s float32 images at ``data/size`` (train and val), a
#: segmentation fine-tune's cached volumes, an ROI fine-tune's crops. The bundled recipes keep 148-161 MiB
#: (brain-tumour-mri: 2,375 x 128^2 x 4 B; adrenal-mass-3d: 1,286 x 32^3 x 4 B), a segmentation fine-tune on the
#: TotalSegmentator example CT at 3 mm 41 MB (1.4 M voxels x 30 B); 16 GiB is 100x the recipes. AdrenalMNIST3D at
#: ``data/size`` 512^3 would be 643 GiB (the allocator, asked for the train split's 594 GiB, failed).
MAX_DATASET_ENV = "MEDDEEPRECOG_MAX_DATASET_BYTES"
DEFAULT_MAX_DATASET_BYTES = 16 << 30
#: Bytes one training step may take for its batch: batch size x (a sample + its activations, as
#: :func:`.models.registry.check_budget` estimates them). The bundled recipes take 0.2-0.4 GiB (resnet2d on 128^2,
#: batch 32: 32 x 6.9 MiB; simple_cnn3d on 32^3, batch 32: 32 x 8.4 MiB), a MONAI UNet on 128^3 patches at batch 8
#: 4.2 GiB (8 x 539 MiB); as much as one sample may take (:data:`DEFAULT_MAX_ACTIVATION_BYTES`), so a batch of one
#: is never refused when its sample is not.
MAX_BATCH_ENV = "MEDDEEPRECOG_MAX_BATCH_BYTES"
DEFAULT_MAX_BATCH_BYTES = 16 << 30
#: Memory a ``segment`` run may be estimated to need (``inference.segment.segment_memory_bytes``: the scan, the
#: network's work grid and the label map's steps), checked before the network is built. 8 GiB: a 512x512x400 CT at
#: 0.8 mm is estimated at ~2.0 GiB, the same voxels at the model's 3 mm (a 512^2 x 400 work grid) at ~3.5 GiB.
MAX_SEGMENT_ENV = "MEDDEEPRECOG_MAX_SEGMENT_BYTES"
DEFAULT_MAX_SEGMENT_BYTES = 8 << 30

#: Voxels a filter window may hold (median, bilateral, CLAHE's ``sitk`` backend): what an output voxel reads. 21^3,
#: the median's largest ``radius`` (10 voxels); 27x the README's bilateral 7^3. A median of 21^3 takes ~23 s on
#: 0.37 Mvox (2 cores); SimpleITK's CLAHE 7-11 ns a voxel and window voxel (its default 32 mm on a 256 x 256 x 25
#: MR at 0.78 x 0.78 x 6.5 mm, a 41 x 41 x 5 window: 103 s).
MAX_FILTER_WINDOW_VOXELS = 21 ** 3
#: Voxels a mask step's closing ball may span (body, head, lung masks): 41^3, a 20-voxel radius, ~1 s on 0.37 Mvox;
#: the presets' 2-5 mm closings need 5^3 to 21^3 at 0.5 mm. A 0.001 mm grid asked for 6001^3 and failed to allocate.
MAX_MORPHOLOGY_WINDOW_VOXELS = 41 ** 3
#: Non-local means work per voxel, patch_size^3 x (2 search_radius + 1)^3: 100,000, 36x the README's 2^3 x 7^3
#: (2,744) and 100x the presets' 2^3 x 5^3; patch 9 / search 10 (6.75 M) ran for minutes on 0.37 Mvox.
MAX_NLM_WORK = 100_000
#: N4 fitting levels (entries of its ``iterations``): each level doubles the B-spline control-point lattice along
#: every axis, to (2^(levels - 1) + 3)^3 points. 8 levels, 131^3 = 2.2 M points (about the fitted voxels of a 512^3
#: scan after N4's shrink), took 6.5 s on a 256 x 256 x 25 MR with one iteration a level; 9 levels 42 s and 0.7 GB,
#: 10 levels 189 s and 4.3 GB, 12 levels failed to allocate after 221 s. The default and the presets fit 3.
MAX_N4_LEVELS = 8
#: N4 iterations over all its levels, each a pass over the fitted voxels: 1,000 is 12.5x the default 30 + 30 + 20
#: (9.5 s on that MR, fitted on its 64 x 64 x 25 shrunk copy; twice the iterations took 27 s) and 5x ITK's 4 x 50.
MAX_N4_ITERATIONS = 1_000
#: Contextual regions of CLAHE's tile-interpolated (scikit-image) backend, each a 256-bin histogram and its mapping:
#: about 5.6 KB and 35 us a region measured (3-voxel regions of a 256 x 256 x 50 volume: 125,732 regions, +948 MB,
#: 5.3 s), so 100,000 cost at most ~0.6 GB and a few seconds beyond the image's own copies. The default 32 mm
#: regions make 245 on that MR and 1,024 on a 512 x 512 x 1,000 CT at 0.5 mm; 1 mm regions (3 voxels) on a
#: 512 x 512 x 200 CT would make 1.96 M (11 GB), and ran out of memory.
MAX_CLAHE_REGIONS = 100_000

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20, "MIB": 1 << 20,
          "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30, "T": 1 << 40, "TB": 1 << 40, "TIB": 1 << 40}


def parse_size(text: str | int | float) -> int:
    """``"4G"``, ``"512 MiB"``, ``"1.5e9"`` or a number of bytes → bytes (binary units). Raises ValueError."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
        if not m or m.group(2).upper() not in _UNITS:
            raise ValueError(f"{text!r} is not a size (e.g. 4G, 512M, 1000000)")
        value, unit = float(m.group(1)), m.group(2).upper()
    size = int(value * _UNITS[unit])
    if size <= 0:
        raise ValueError(f"{text!r} must be a positive size")
    return size


def _from_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return parse_size(raw)
    except ValueError:
        from .errors import ConfigError
        raise ConfigError(f"environment variable {name}={raw!r} is not a size (e.g. 4G, 512M)") from None


def max_image_bytes() -> int:
    return _from_env(MAX_IMAGE_ENV, DEFAULT_MAX_IMAGE_BYTES)


def max_package_bytes() -> int:
    return _from_env(MAX_PACKAGE_ENV, DEFAULT_MAX_PACKAGE_BYTES)


def max_params() -> int:
    return _from_env(MAX_PARAMS_ENV, DEFAULT_MAX_PARAMS)


def max_activation_bytes() -> int:
    return _from_env(MAX_ACTIVATION_ENV, DEFAULT_MAX_ACTIVATION_BYTES)


def max_dataset_bytes() -> int:
    return _from_env(MAX_DATASET_ENV, DEFAULT_MAX_DATASET_BYTES)


def max_batch_bytes() -> int:
    return _from_env(MAX_BATCH_ENV, DEFAULT_MAX_BATCH_BYTES)


def max_segment_bytes() -> int:
    return _from_env(MAX_SEGMENT_ENV, DEFAULT_MAX_SEGMENT_BYTES)


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if abs(n) < 1024 or unit == "EiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} EiB"


def check_declared_image(size, bytes_per_voxel: int, path, what: str = "header") -> None:
    """Refuse an image whose declared voxel count × bytes per voxel exceeds :func:`max_image_bytes`.

    Also refuses non-positive or absurd sizes, which allocators report with messages that hide the cause.
    """
    from .errors import InputImageError

    dims = [int(s) for s in size]
    if any(d < 0 for d in dims):
        raise InputImageError(f"{what} declares a negative size {dims}", path)
    total = bytes_per_voxel
    for d in dims:
        total *= d
    limit = max_image_bytes()
    if total > limit:
        raise InputImageError(
            f"{what} declares {' x '.join(map(str, dims))} voxels ({human_bytes(total)}), more than the limit of "
            f"{human_bytes(limit)}; raise it with --max-image-size or {MAX_IMAGE_ENV} if the scan is real", path)


def check_dataset_bytes(total: int, what: str, setting: str, source=None, fix: str = "") -> None:
    """Refuse training data whose in-memory copy, ``total`` bytes, exceeds :func:`max_dataset_bytes`, before it is
    made: one line naming ``setting`` (what decides the size, e.g. ``"data/size [512, 512, 512]"``), ``what`` it
    would hold (``"1,286 images of 1 x 512 x 512 x 512 voxels as float32"``), the bytes and the limit; ``fix``:
    what to change instead (the limit's variable is always named).

    Raises:
        ConfigError: naming ``source`` (the config file) when given.
    """
    from .errors import ConfigError

    limit = max_dataset_bytes()
    if total > limit:
        fix = f"{fix}, or " if fix else ""
        raise ConfigError(f"{setting}: {what} would take {human_bytes(total)} of memory, more than the limit of "
                          f"{human_bytes(limit)}; {fix}raise {MAX_DATASET_ENV} if the machine has the memory", source)
