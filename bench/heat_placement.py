"""Does a disease model's heatmap sit at the image border? Measured through ``classify`` on its val split.

The issue's baseline (a plain CNN's Grad-CAM) put its peaks at the image border; BUSI ultrasound carries text and
calipers near the edges, and a CT slice has table and air there. Each val image (never used in training or
selection) goes through ``classify_scan`` as a user's PNG would, and the measure is the library's
(:mod:`MedDeepRecogLib.inference.placement`: heatmap peaks and heat mass in the outer band, next to the band's share
of the area, overall and per top class; for a CT slice model also on the CT table), which ``meddeeprecog train``
also runs when a config holds a ``placement:`` block; ``--card`` prints the model-card section it writes.

    python bench/heat_placement.py [--model brain-tumour-mri breast-us-lesion lung-ct-cancer] [--band 0.1 0.2]
        [--max 0] [--threads 2] [--card]

The images come from the data file recorded in the package (``provenance.data``, resolved beside the repository).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MedDeepRecog"))


def measure(package, bands: list[float], limit: int) -> dict:
    """:func:`MedDeepRecogLib.inference.placement.measure_placement` of a package on its data file's val split."""
    from MedDeepRecogLib.inference.placement import measure_placement

    data_path = (REPO / package.meta["provenance"]["data"]).resolve()
    with np.load(data_path) as data:
        images = data["val_images"][:limit or None]
    figures = measure_placement(package, images, bands=bands)
    return {"model": f"{package.id}@{package.version}", "data": data_path.name, **figures}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", nargs="+", default=["brain-tumour-mri", "breast-us-lesion", "lung-ct-cancer"])
    ap.add_argument("--band", type=float, nargs="+", default=[0.1, 0.2],
                    help="border band widths, fractions of the side")
    ap.add_argument("--max", type=int, default=0, help="at most this many val images per model (0: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--card", action="store_true", help="also print the model-card section")
    args = ap.parse_args(argv)
    import torch

    from MedDeepRecogLib.inference.placement import placement_card_lines
    from MedDeepRecogLib.packages import load_package
    from MedDeepRecogLib.training.train import explain_method

    torch.set_num_threads(args.threads)
    for model_id in args.model:
        package = load_package(model_id)
        s = measure(package, args.band, args.max)
        print(f"{s['model']} on {s['data']} val ({s['images']} images, {s['with_heat']} with a heatmap, "
              f"{s['refused']} refused; {s['seconds']} s)")
        for band, f in s["bands"].items():
            print(f"  outer {float(band):.0%} band ({f['band_area']:.1%} of the image): heatmap peak there "
                  f"{f['peak_in_band']}, heat mass there {f['heat_in_band']}")
            for name, c in f["per_predicted_class"].items():
                print(f"     top class {name} ({c['images']}): peak in band {c['peak_in_band']}, heat in band "
                      f"{c['heat_in_band']}")
        if s.get("table"):  # CT slice models: on the table under the patient
            t = s["table"]
            print(f"  CT table found on {t['images_with_table']} images ({t['table_area']} of the image): heatmap "
                  f"peak on it {t['peak_on_table']}, heat on it {t['heat_on_table']}")
            for name, c in t["per_predicted_class"].items():
                print(f"     top class {name} ({c['images']}): peak on the table {c['peak_on_table']}, heat on it "
                      f"{c['heat_on_table']}")
        if args.card:
            print(placement_card_lines(s, explain_method(package.meta)))
        print(json.dumps(s))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
