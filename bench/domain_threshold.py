"""Where to put a disease model's out-of-domain threshold: in-domain images kept against other data sets flagged.

    python bench/domain_threshold.py --model breast-us-lesion --config configs/breast-us-lesion-evidence.yaml
                                     [--quantiles 0.95 0.97 0.98 0.99] [--scan SCAN ...] [--threads 2]

Prints, for each candidate quantile of the validation split's scores (squared Mahalanobis distance of the
penultimate features to the nearest class mean, the package's own check statistics):

- the threshold, and the share of validation images kept in the domain;
- validation accuracy as ``classify`` reports it: a flagged image gets no class, so it counts as not correct (next to
  the network's top-class accuracy, which the threshold does not change);
- the share of each ``domain/negatives`` data set of the config flagged out of domain, and its lowest score as a
  multiple of the threshold (the margin);
- for each ``--scan`` (a volume; the MNI152 T1 template nilearn ships is added when nilearn is installed), how many
  of its slices the threshold lets in.

The threshold is set with ``meddeeprecog calibrate --domain-quantile Q --domain-negatives CONFIG``; the rule used
for the bundled models, and this table's figures, are in the README ("Where the out-of-domain threshold sits").
With 97 or 139 val images (breast, lung) each percentile above the 95th rests on two to four images: read the
table as where the val images end, not as a precise rate.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MedDeepRecog"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--config", required=True, type=Path, help="the model's train config (data, domain/negatives)")
    ap.add_argument("--quantiles", type=float, nargs="+", default=[0.95, 0.97, 0.98, 0.99])
    ap.add_argument("--scan", type=Path, nargs="*", default=[], help="volumes that must stay out of the domain")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from MedDeepRecogLib.inference.calibrate import _npz_split
    from MedDeepRecogLib.inference.classify import classify_scan
    from MedDeepRecogLib.packages import load_package
    from MedDeepRecogLib.schema import load_mapping, resolve_relative
    from MedDeepRecogLib.training.domain import features_of, negative_image_sets

    pkg = load_package(args.model)
    cfg = load_mapping(args.config, "train config")
    data = resolve_relative(str(cfg["data"]["path"]), args.config)
    val = _npz_split(pkg, data, "val")
    model = pkg.build_model("cpu")
    cpu = torch.device("cpu")
    feats, probs = features_of(model, val.images, cpu)
    scores = pkg.domain.scores(feats)
    correct = probs.argmax(1) == val.labels
    negatives = {name: pkg.domain.scores(features_of(model, x, cpu)[0])
                 for name, x in negative_image_sets(cfg.get("domain", {}).get("negatives") or [],
                                                    pkg.input_spec.get("slices") or {}, list(val.images.shape[2:]),
                                                    args.config).items()}
    scans = {p.name: p for p in args.scan}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            import nibabel as nib
            from nilearn import datasets

            mni = Path(tmp) / "mni152_t1.nii.gz"
            nib.save(datasets.load_mni152_template(resolution=1), str(mni))
            scans["MNI152 T1 (nilearn)"] = mni
        except ImportError:
            pass
        slice_scores = {}
        for name, path in scans.items():
            res = classify_scan(path, pkg, explain="none", uncertainty="none", faithfulness=False)
            slice_scores[name] = np.array([s["domain_distance"] for s in res.per_slice])

    print(f"{pkg.id}@{pkg.version}: its threshold {pkg.meta['domain']['threshold']:.1f} "
          f"(the {100 * pkg.meta['domain']['quantile']:g}% quantile); validation split of {data.name}: "
          f"{len(scores)} images, top-class accuracy {correct.mean():.3f}")
    for q in args.quantiles:
        thr = float(np.quantile(scores, q))
        kept = scores <= thr
        bal = np.mean([np.mean((correct & kept)[val.labels == c]) for c in np.unique(val.labels)])
        print(f"q {q:.3f}: threshold {thr:8.1f}; val kept {kept.mean():.1%}, accuracy as classify reports it "
              f"{(correct & kept).mean():.3f} (balanced {bal:.3f})")
        for name, s in negatives.items():
            print(f"    {name:32s} n {len(s):4d}  flagged {np.mean(s > thr):6.1%}  lowest score {s.min() / thr:5.2f}x "
                  f"the threshold")
        for name, s in slice_scores.items():
            print(f"    {name:32s} slices let in {int(np.sum(s <= thr))} of {len(s)}  lowest score "
                  f"{s.min() / thr:5.2f}x the threshold")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
