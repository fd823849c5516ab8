"""The extension's CMake files: Extension Wizard metadata, every module file listed, icons and screenshot present.

Slicer installs only the files a module's CMakeLists.txt lists, so a new ``.py`` in ``MedDeepRecogLib`` that is not
listed works in a source checkout and breaks in the installed extension. ``python Testing/Python/test_slicer_cmake.py``
rewrites the generated lists in ``MedDeepRecog/CMakeLists.txt``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "MedDeepRecog"
MODULE_CMAKE = MODULE / "CMakeLists.txt"
SKIP_PARTS = {"__pycache__", ".pytest_cache"}
FIXED_RESOURCES = {"Resources/Icons/MedDeepRecog.png", "Resources/UI/MedDeepRecog.ui", "Resources/requirements.txt"}


def _files() -> tuple[list[str], list[str]]:
    """(scripts, resources) relative to the module folder, sorted."""
    scripts, resources = [], []
    for path in sorted(MODULE.rglob("*")):
        rel = path.relative_to(MODULE)
        if not path.is_file() or SKIP_PARTS & set(rel.parts) or rel.parts[0].endswith(".egg-info"):
            continue
        if path.suffix in (".pyc", ".pyo") or path.name == "CMakeLists.txt" or path.name.startswith("."):
            continue
        text = rel.as_posix()
        if path.suffix == ".py":
            if text != "MedDeepRecog.py":
                scripts.append(text)
        elif text not in FIXED_RESOURCES:
            resources.append(text)
    return scripts, resources


def _section(text: str, name: str) -> list[str]:
    match = re.search(rf"# BEGIN generated {name}\n(.*?)\s*# END generated {name}", text, re.S)
    assert match, f"no generated {name} section in {MODULE_CMAKE}"
    return [ln.strip() for ln in match.group(1).splitlines() if ln.strip()]


def regenerate() -> None:
    text = MODULE_CMAKE.read_text(encoding="utf-8")
    scripts, resources = _files()
    for name, items in (("scripts", scripts), ("resources", resources)):
        body = "".join(f"  {item}\n" for item in items)
        text = re.sub(rf"(  # BEGIN generated {name}\n).*?(  # END generated {name})",
                      lambda m: m.group(1) + body + m.group(2), text, flags=re.S)
    MODULE_CMAKE.write_text(text, encoding="utf-8")


def test_every_module_file_is_listed():
    text = MODULE_CMAKE.read_text(encoding="utf-8")
    scripts, resources = _files()
    listed_scripts, listed_resources = _section(text, "scripts"), _section(text, "resources")
    assert "MedDeepRecogSlicerLib/scene_io.py" in scripts and "MedDeepRecogLib/cli.py" in scripts
    missing = sorted(set(scripts) - set(listed_scripts)) + sorted(set(resources) - set(listed_resources))
    stale = sorted((set(listed_scripts) | set(listed_resources)) - set(scripts) - set(resources))
    assert not missing and not stale, (f"update MedDeepRecog/CMakeLists.txt (python Testing/Python/"
                                       f"test_slicer_cmake.py): missing {missing}, no longer present {stale}")
    for fixed in FIXED_RESOURCES:
        assert (MODULE / fixed).is_file() and fixed.replace("MedDeepRecog", "${MODULE_NAME}") in text


def test_module_cmake_registers_the_self_test():
    text = MODULE_CMAKE.read_text(encoding="utf-8")
    assert "slicerMacroBuildScriptedModule(" in text
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    assert "set(MODULE_NAME MedDeepRecog)" in text


def test_extension_metadata_and_images():
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    meta = dict(re.findall(r'set\((EXTENSION_\w+) "([^"]*)"', text))
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL",
                "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS", "EXTENSION_CONTRIBUTORS"):
        assert meta.get(key), key
    assert "PyTorch" in meta["EXTENSION_DEPENDS"].split()
    assert "add_subdirectory(MedDeepRecog)" in text
    assert "include(${Slicer_EXTENSION_CPACK})" in text
    from PIL import Image
    for url in (meta["EXTENSION_ICONURL"], *meta["EXTENSION_SCREENSHOTURLS"].split()):
        local = REPO / url.split("/main/", 1)[1]  # the raw GitHub URL points into this repository
        assert local.is_file(), f"{url} -> {local} does not exist"
        with Image.open(local) as image:
            assert image.format == "PNG" and min(image.size) >= 128
    with Image.open(MODULE / "Resources" / "Icons" / "MedDeepRecog.png") as icon:
        assert icon.size == (128, 128)


if __name__ == "__main__":
    regenerate()
    print(f"rewrote the generated lists in {MODULE_CMAKE}")
    sys.exit(0)
