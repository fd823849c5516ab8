"""Training's progress lines and messages: ``monitor: last`` shows no epoch number as a metric; a cancelled run
points at checkpoints only when there are some; a bundled package is never to be removed."""

from __future__ import annotations

import json

import yaml

from MedDeepRecogLib.cli import main
from MedDeepRecogLib.slicer_bridge.progress_reader import parse_progress_line

from test_training import _config, npz  # noqa: F401  (npz: fixture)


def test_monitor_last_progress_lines_carry_no_epoch_as_val_metric(tmp_path, npz, capsys):  # noqa: F811
    cfg = _config(npz)
    cfg["training"].update({"epochs": 2, "monitor": "last"})
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert main(["train", str(cfg_path), "--out", str(tmp_path / "run"), "--package-dest", str(tmp_path / "cat"),
                 "--progress", "json"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("{")]
    validate = [json.loads(ln) for ln in lines if json.loads(ln)["stage"] == "validate"]
    assert [v["epoch"] for v in validate] == [1, 2]
    for v in validate:
        assert v.get("val_metric") is None and v["monitor"] == "last"
        assert 0.0 <= v["val_auc"] <= 1.0 and 0.0 <= v["val_accuracy"] <= 1.0   # the real validation figures
    panel = parse_progress_line(next(ln for ln in lines if '"validate"' in ln)).describe()
    assert "val_metric" not in panel and ("val_auc" in panel or "val_loss" in panel)
    history = json.loads((tmp_path / "run" / "metrics.json").read_text(encoding="utf-8"))
    assert all(e.get("val_metric") in (None,) for e in history.get("history", [])
               if isinstance(e, dict) and "val_metric" in e)


def _cfg_file(tmp_path, npz, epochs: int = 2):  # noqa: F811
    cfg = _config(npz)
    cfg["training"]["epochs"] = epochs
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def test_cancelled_while_the_data_load_points_at_no_checkpoints(tmp_path, npz, capsys, monkeypatch):  # noqa: F811
    from MedDeepRecogLib.training import train

    def cancel(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "load_train_val", cancel)
    out = tmp_path / "run"
    assert main(["train", str(_cfg_file(tmp_path, npz)), "--out", str(out), "--package-dest", str(tmp_path / "cat"),
                 "--progress", "none"]) == 130
    err = capsys.readouterr().err
    assert "no checkpoint was kept" in err and "--resume" not in err and str(out) not in err
    assert not out.exists()


def test_cancelled_after_an_epoch_points_at_its_checkpoint(tmp_path, npz, capsys, monkeypatch):  # noqa: F811
    from MedDeepRecogLib.training import loop

    real, calls = loop.save_checkpoint, []

    def save_then_cancel(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(loop, "save_checkpoint", save_then_cancel)
    out = tmp_path / "run"
    assert main(["train", str(_cfg_file(tmp_path, npz, epochs=3)), "--out", str(out), "--package-dest",
                 str(tmp_path / "cat"), "--progress", "none"]) == 130
    err = capsys.readouterr().err
    assert f"the epochs completed are kept in {out} (1 epoch(s))" in err and "--resume" in err


def test_a_bundled_version_is_never_to_be_removed(tmp_path):
    import pytest

    from MedDeepRecogLib import resources
    from MedDeepRecogLib.errors import ConfigError
    from MedDeepRecogLib.packages.package import catalogs_with, check_new_version

    bundled = sorted(p for p in resources.BUNDLED_MODELS_DIR.glob("*/*") if (p / "model.json").is_file())[0]
    pkg_id, version = bundled.parent.name, bundled.name
    with pytest.raises(ConfigError) as exc:   # a copied bundled config: same id and version
        check_new_version(pkg_id, version, catalogs_with(None), "version", tmp_path / "copy.yaml")
    line = str(exc.value)
    assert "bundled catalog" in line and "remove" not in line and "bump the version" in line and "new id" in line
    user = tmp_path / "home" / "models"
    (user / "mine" / "1.0.0").mkdir(parents=True)
    with pytest.raises(ConfigError, match="remove"):   # the user's own package may be removed, as before
        check_new_version("mine", "1.0.0", [user], "version")
