"""``meddeeprecog models [--json]``: list installed model packages; ``meddeeprecog models import PATH``: install one.

Also ``meddeeprecog models architectures [--json]``: the registered network names.
"""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="list installed model packages, or import one (offline)")
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.add_argument("--verify", action="store_true",
                   help="check every package (weights and domain checksums, the network builds and accepts its "
                        "declared input) and print ok or the problem for each; exit 2 if any fails")
    sub = p.add_subparsers(dest="models_action", metavar="ACTION")
    imp = sub.add_parser("import", help="check a package folder or .zip and copy it into the user catalog")
    imp.add_argument("path", help="package folder (with model.json) or .zip")
    imp.add_argument("--json", action="store_true", help="print the result as JSON")
    arch = sub.add_parser("architectures", help="list the registered network architectures")
    arch.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..packages import import_package, list_packages, load_package, user_models_dir

    action = getattr(args, "models_action", None)
    if action == "import":
        target = import_package(args.path)
        pkg = load_package(target)
        result = {"id": pkg.id, "version": pkg.version, "path": str(target)}
        print(json.dumps(result) if args.json else f"imported {pkg.id}@{pkg.version} -> {target}")
        return 0
    if action == "architectures":
        from ..models import available_models
        archs = available_models()
        if args.json:
            print(json.dumps(archs, indent=2))
        else:
            for name, info in archs.items():
                print(f"{name:<16} {info['input_kind']:<9} {info['description']}")
        return 0
    infos = list_packages(check_weights=args.verify)
    failed = args.verify and any(i.error for i in infos)
    if args.json:
        rows = [i.to_dict() for i in infos]
        if args.verify:
            rows = [{**r, "verify": "ok" if not r["error"] else r["error"]} for r in rows]
        print(json.dumps(rows, indent=2))
        return 2 if failed else 0
    if args.verify:
        for i in infos:
            what = ("ok (checksums match; the network accepts its declared input)"
                    if not i.error else f"FAILED: {i.error}")
            note = f" NOTE: {i.note}" if i.note else ""   # e.g. a version never chosen as latest
            print(f"{i.id:<22} {i.version:<8} {i.source:<7} {what}{note}")
        if not infos:
            print(f"no model packages installed (user catalog: {user_models_dir()})")
        print(f"{sum(not i.error for i in infos)} of {len(infos)} packages ok")
        return 2 if failed else 0
    if not infos:
        print(f"no model packages installed (user catalog: {user_models_dir()})")
        return 0
    for i in infos:
        if i.error:
            print(f"{i.id:<22} {i.version:<8} {i.source:<7} BROKEN: {i.error}")
            continue
        m = i.metrics or {}
        shown = ("auc", "balanced_accuracy", "accuracy", "dice")
        score = " ".join(f"{k}={m[k]:.3f}" for k in shown if isinstance(m.get(k), float))
        score = f"{m.get('split', '')}: {score}" if score else m.get("note", "")  # e.g. "no validation data: ..."
        kind = (i.input or {}).get("kind", "?")
        derived = f" (from {i.parent})" if i.parent else ""
        note = f" NOTE: {i.note}" if i.note else ""
        print(f"{i.id:<22} {i.version:<8} {i.source:<7} {kind:<9} classes={','.join(i.class_names or [])} "
              f"{score}{derived}{note}")
    return 0
