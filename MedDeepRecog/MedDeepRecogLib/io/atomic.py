"""Atomic file writes: an output file is either complete or absent, never half written.

Writers produce the file under a temporary name in the destination folder (same file system, same
extension so format-sniffing writers such as SimpleITK pick the right format) and rename it into place.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


def _full_suffix(path: Path) -> str:
    """``.nii.gz`` for ``a.nii.gz``, ``.seg.nrrd`` for ``b.seg.nrrd``: writers sniff the whole suffix."""
    return "".join(path.suffixes[-2:]) if len(path.suffixes) >= 2 else path.suffix


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it to ``path``, on error delete it.

    Example::

        with atomic_output("out.nrrd") as tmp:
            sitk.WriteImage(image, str(tmp))
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial" + _full_suffix(path), dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates the file 0600; give the output the permissions of a normally created file
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically and return the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically and return the path."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_save_figure(fig: Any, path: str | Path, *, dpi: float | None = None) -> Path:
    """Save a matplotlib figure as PNG at ``path`` atomically, then close it (figures are not reused)."""
    import matplotlib.pyplot as plt

    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return Path(path)
