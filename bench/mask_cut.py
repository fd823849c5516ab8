"""Paired evidence for the mask models' input cut (``inference/model_input.image_for_model``).

Not a speed bench: it prints the accuracy figures behind the cut. Every AdrenalMNIST3D val mask (28^3, 0/255, about
2.29 mm) is classified three ways with each mask package:

- **cube**: the mask alone, as the models learnt it;
- **label map, cut**: the same gland with label 1 inside a 60 x 70 x 80 grid (as a label map segmented on a scan
  arrives), through ``classify_scan``, which sets the value and cuts the model's field of view about the gland;
- **label map, uncut**: that label map through the package's pipeline and input sampling alone, as classify read it
  before the cut (value 1, whole grid).

Usage::

    python bench/mask_cut.py --data ../shared/data/adrenalmnist3d/adrenalmnist3d_trainval.npz
"""

from __future__ import annotations

import argparse

import numpy as np
import SimpleITK as sitk
import torch

PACKAGES = ("adrenal-mass-3d@1.3.0", "adrenal-mass-lstm@1.1.0")
SPACING_MM = 64 / 28   # the 28^3 masks span the 64 mm cube MedMNIST cut
GRID = (60, 70, 80)
OFFSET = (17, 30, 41)


def as_label_map(cube: np.ndarray) -> sitk.Image:
    """``cube`` (28^3, 0/255) as label 1 at :data:`OFFSET` of a :data:`GRID` label map on the same voxel size."""
    voxels = np.zeros(GRID, np.uint8)
    k, j, i = OFFSET
    voxels[k:k + cube.shape[0], j:j + cube.shape[1], i:i + cube.shape[2]] = cube > 0
    image = sitk.GetImageFromArray(voxels)
    image.SetSpacing((SPACING_MM,) * 3)
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/adrenalmnist3d/adrenalmnist3d_trainval.npz")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from MedDeepRecogLib.inference.classify import classify_scan
    from MedDeepRecogLib.inference.model_input import volume_from_image
    from MedDeepRecogLib.packages import load_package
    from MedDeepRecogLib.preprocessing.pipeline import run_input_pipeline
    from MedDeepRecogLib.training.metrics import classification_metrics

    z = np.load(args.data)
    cubes, labels = z["val_images"], z["val_labels"].ravel()
    for ref in PACKAGES:
        pkg = load_package(ref)
        model = pkg.build_model("cpu").eval()
        mass = {"cube": [], "label map, cut": [], "label map, uncut": []}
        for cube in cubes:
            alone = sitk.GetImageFromArray(cube)
            alone.SetSpacing((SPACING_MM,) * 3)
            label_map = as_label_map(cube)
            for name, image in (("cube", alone), ("label map, cut", label_map)):
                result = classify_scan(image, pkg, explain="none", uncertainty="none", faithfulness=False)
                mass[name].append(float(result.probabilities[1]))
            uncut = volume_from_image(run_input_pipeline(label_map, pkg.input_spec.get("pipeline")), pkg.input_spec)
            with torch.no_grad():
                mass["label map, uncut"].append(float(torch.softmax(model(torch.from_numpy(uncut.x)), 1)[0, 1]))
        for name, p in mass.items():
            p = np.asarray(p)
            m = classification_metrics(labels, np.stack([1 - p, p], 1), pkg.class_names)
            print(f"{ref:26s} {name:17s} n={len(p)}  AUC {m['auc']:.4f}  balanced accuracy "
                  f"{m['balanced_accuracy']:.4f}  accuracy {m['accuracy']:.4f}")


if __name__ == "__main__":
    main()
