"""Does a disease model's heatmap sit at the image border? Measured through ``classify`` on its val split.

The issue's baseline (a plain CNN's Grad-CAM) put its peaks at the image border; BUSI ultrasound carries text and
calipers near the edges, and a CT slice has table and air there. No lesion outlines exist for these images, so this
measures the one placement that needs none: each val image (never used in training or selection) goes through
``classify_scan`` exactly as a user's PNG would (heatmap, clearing outside the body included), and on the heatmap
written on the image's own grid it counts

- **peak in border band**: images whose heatmap maximum lies within ``--band`` (a fraction of the side) of an edge,
  against the band's share of the image area (where uniformly placed peaks would fall);
- **heat in border band**: the share of heat mass inside that band, against the same area share;
- the same two for the images that carry the class the model predicted, per class.

    python bench/heat_placement.py [--model brain-tumour-mri breast-us-lesion lung-ct-cancer] [--band 0.1]
        [--max 0] [--threads 2]

The images come from the data file recorded in the package (``provenance.data``, resolved beside the repository).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def band_mask(shape: tuple[int, int], band: float) -> np.ndarray:
    """True within ``band`` × side of any edge of a ``(H, W)`` image."""
    h, w = shape
    bh, bw = max(1, round(band * h)), max(1, round(band * w))
    inner = np.zeros(shape, bool)
    inner[bh:h - bh, bw:w - bw] = True
    return ~inner


def placement(heat: np.ndarray, band: np.ndarray) -> tuple[bool, float] | None:
    """(peak inside the band, share of heat mass inside the band) of one ``(H, W)`` heatmap; ``None`` if it is
    empty (nothing to place)."""
    total = float(heat.sum())
    if not np.isfinite(total) or total <= 0:
        return None
    peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return bool(band[peak]), float(heat[band].sum() / total)


def measure(model_id: str, band_fraction: float, limit: int) -> dict:
    import SimpleITK as sitk
    from PIL import Image

    from MedDeepRecogLib.inference.classify import classify_scan
    from MedDeepRecogLib.packages import load_package

    package = load_package(model_id)
    data_path = (REPO / package.meta["provenance"]["data"]).resolve()
    data = np.load(data_path)
    images, labels = data["val_images"], data["val_labels"]
    names = [str(s) for s in data["class_names"]]
    if limit:
        images, labels = images[:limit], labels[:limit]
    band = band_mask(images.shape[1:], band_fraction)
    rows = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "image.png"
        for image, label in zip(images, labels):
            Image.fromarray(image).save(path)
            result = classify_scan(path, package, uncertainty="none")
            heat = sitk.GetArrayFromImage(result.heatmap)[0] if result.heatmap is not None else None
            placed = placement(heat, band) if heat is not None else None
            rows.append({"label": names[int(label)], "predicted": result.decision.get("top_class"),
                         "placed": placed})
    seconds = time.perf_counter() - start
    placed = [r for r in rows if r["placed"] is not None]
    summary = {"model": f"{package.id}@{package.version}", "data": str(data_path.name), "images": len(rows),
               "with_heat": len(placed), "band_area": round(float(band.mean()), 3),
               "peak_in_band": round(float(np.mean([r["placed"][0] for r in placed])), 3) if placed else None,
               "heat_in_band": round(float(np.mean([r["placed"][1] for r in placed])), 3) if placed else None,
               "per_predicted_class": {}, "seconds": round(seconds, 1)}
    for name in names:
        sub = [r for r in placed if r["predicted"] == name]
        if sub:
            summary["per_predicted_class"][name] = {
                "images": len(sub), "peak_in_band": round(float(np.mean([r["placed"][0] for r in sub])), 3),
                "heat_in_band": round(float(np.mean([r["placed"][1] for r in sub])), 3)}
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", nargs="+", default=["brain-tumour-mri", "breast-us-lesion", "lung-ct-cancer"])
    ap.add_argument("--band", type=float, default=0.1, help="border band width, a fraction of the side")
    ap.add_argument("--max", type=int, default=0, help="at most this many val images per model (0: all)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    for model_id in args.model:
        s = measure(model_id, args.band, args.max)
        print(f"{s['model']} on {s['data']} val ({s['images']} images, {s['with_heat']} with a heatmap; "
              f"{s['seconds']} s): heatmap peak in the outer {args.band:.0%} band {s['peak_in_band']}, heat mass "
              f"there {s['heat_in_band']}; the band is {s['band_area']} of the image (uniform placement)")
        for name, c in s["per_predicted_class"].items():
            print(f"   predicted {name} ({c['images']}): peak in band {c['peak_in_band']}, heat in band "
                  f"{c['heat_in_band']}")
        print(json.dumps(s))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
