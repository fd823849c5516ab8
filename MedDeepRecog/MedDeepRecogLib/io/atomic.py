"""Atomic file writes: an output file is either complete or absent, never half written.

Writers produce the file under a temporary name in the destination folder (same file system, same
extension so format-sniffing writers such as SimpleITK pick the right format) and rename it into place.

Faults of the destination (read-only, full disk, a path under a regular file, a folder where a file is wanted) are
raised as :class:`~..errors.OutputError` naming the path; folders this module created for a write that failed are
removed again, and temporaries a killed earlier write left behind for the same file are deleted on the next write.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ..errors import OutputError, os_error_reason

def output_error(exc: BaseException, path: Path) -> OutputError:
    """An :class:`OutputError` for a failed write of ``path``: OSErrors by errno; writer errors (SimpleITK raises
    RuntimeError for every I/O fault) by the free space left, else their first line."""
    if isinstance(exc, OSError):
        where = Path(exc.filename) if exc.filename and exc.errno in (errno.ENOTDIR, errno.EISDIR) else path
        return OutputError(f"cannot write: {os_error_reason(exc)}", where)
    if disk_nearly_full(path.parent):
        return OutputError("cannot write: no space left on the device", path)
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return OutputError(f"cannot write ({(lines[-1] if lines else type(exc).__name__)[:200]})", path)


def disk_nearly_full(folder: Path) -> bool:
    """Less than 1 MiB left on ``folder``'s device (a write there has most likely failed)."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < (1 << 20)


def check_output_dir(folder: str | Path, what: str = "output folder") -> Path:
    """Refuse an output folder that is a regular file, lies under a regular file, or cannot be written.

    The folder itself is not created: the first write makes it (and removes it again if that write fails). The
    nearest existing folder gets a real probe, an empty hidden file created and deleted at once: permission bits
    and mount flags do not tell everything (root passes ``os.access`` on ``/sys``, where no file can be created),
    and a command that writes two outputs must learn before any work that the second cannot be written.
    """
    if not str(folder).strip():  # Path("") is the current folder: an empty setting would write there unasked
        raise OutputError(f"{what} is empty: name a folder")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{what} is an existing regular file, not a folder", folder)
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"{what} cannot be made: {probe} is a regular file, not a folder", folder)
    try:
        read_only = bool(os.statvfs(probe).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        read_only = False
    if read_only:
        raise OutputError(f"{what} is on a read-only file system ({probe})", folder)
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"{what} cannot be written: permission denied on {probe}", folder)
    try:
        fd, name = tempfile.mkstemp(prefix=".meddeeprecog-probe.", suffix=".partial", dir=probe)
    except OSError as exc:
        raise OutputError(f"{what} cannot be written: {os_error_reason(exc)} on {probe}", folder) from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)
    return folder


def free_version(folder: str | Path, stem: str, names: Callable[[str], Iterable[str]]) -> str:
    """``stem``, else ``stem-2``, ``stem-3``...: the first version for which none of ``names(version)`` exists in
    ``folder``. A rerun into the same folder then writes beside the earlier outputs (a user's notes, an earlier
    result) instead of replacing them; the files a call writes share one version."""
    folder = Path(folder)
    version, k = stem, 1
    while any((folder / name).exists() for name in names(version)):
        k += 1
        version = f"{stem}-{k}"
    return version


def _make_parents(folder: Path) -> list[Path]:
    """``mkdir -p folder``; returns the folders it created (deepest last) so a failed write can remove them."""
    missing = []
    probe = folder
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputError("cannot write: a part of the path is a regular file, not a folder", probe)
    created = []
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            if not d.is_dir():
                raise OutputError("cannot write: a part of the path is a regular file, not a folder", d) from None
            continue
        except OSError as exc:
            _remove_empty(created)
            raise output_error(exc, d) from None
        created.append(d)
    return created


def _remove_empty(folders: list[Path]) -> None:
    for d in reversed(folders):
        with contextlib.suppress(OSError):
            d.rmdir()  # only succeeds when empty


def remove_stale_partials(path: Path) -> None:
    """Delete temporaries of this module's naming (``.<name>.*.partial*``, files and the folders of
    :func:`atomic_output_pair`) left for ``path`` by a killed write."""
    with contextlib.suppress(OSError):
        for stale in path.parent.glob(glob.escape(f".{path.name}.") + "*.partial*"):
            with contextlib.suppress(OSError):
                if stale.is_symlink():
                    continue
                if stale.is_file():
                    stale.unlink()
                elif stale.is_dir():
                    shutil.rmtree(stale)


def _full_suffix(path: Path) -> str:
    """``.nii.gz`` for ``a.nii.gz``, ``.seg.nrrd`` for ``b.seg.nrrd``: writers sniff the whole suffix."""
    return "".join(path.suffixes[-2:]) if len(path.suffixes) >= 2 else path.suffix


def _prepare_destination(path: Path) -> list[Path]:
    """Refuse a folder as the file ``path``, make its missing parent folders (returned, deepest last, for removal
    after a failed write) and delete temporaries a killed earlier write of it left behind."""
    if path.is_dir():
        raise OutputError("cannot write: is a folder, not a file", path)
    created = _make_parents(path.parent)
    remove_stale_partials(path)
    return created


@contextlib.contextmanager
def atomic_output_pair(path: str | Path) -> Iterator[Path]:
    """Yield ``path``'s name inside a private temporary folder next to it, for a writer that makes a header and a
    data file it names after the header (NRRD ``.nhdr`` + ``.raw.gz``, MetaImage ``.mhd`` + ``.zraw``); on
    success move the data files, then the header, into place, on error delete the folder.

    The header must name its data file by the final name, so neither can be written under a temporary name of its
    own (:func:`atomic_output` would leave the header pointing at a hidden temporary). A data file that already
    exists beside ``path`` without ``path`` itself (another header's) is never replaced: the write is refused,
    naming it, with nothing moved.
    """
    path = Path(path)
    created = _prepare_destination(path)
    try:
        folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    except OSError as exc:
        _remove_empty(created)
        raise output_error(exc, path) from None
    try:
        yield folder / path.name
        companions = sorted(p for p in folder.iterdir() if p.name != path.name)
        # replacing the header (a caller's --overwrite) replaces its own data file; a data file without that
        # header belongs to something else
        taken = [] if path.exists() else [path.parent / p.name for p in companions if (path.parent / p.name).exists()]
        if taken:
            raise OutputError(f"cannot write: its data file {taken[0].name} exists already beside it (from another "
                              "header?) and is never replaced; choose another name", path)
        umask = os.umask(0)
        os.umask(umask)
        for p in [*companions, folder / path.name]:   # the header last: it is complete only with its data
            os.chmod(p, 0o666 & ~umask)
            os.replace(p, path.parent / p.name)
    except BaseException as exc:
        if isinstance(exc, OSError) or (isinstance(exc, RuntimeError) and disk_nearly_full(path.parent)):
            raise output_error(exc, path) from None
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if not path.exists():
            _remove_empty(created)   # only folders this write made and left empty


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it to ``path``, on error delete it.

    Example::

        with atomic_output("out.nrrd") as tmp:
            sitk.WriteImage(image, str(tmp))
    """
    path = Path(path)
    created = _prepare_destination(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial" + _full_suffix(path),
                                        dir=path.parent)
    except OSError as exc:
        _remove_empty(created)
        raise output_error(exc, path) from None
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates the file 0600; give the output the permissions of a normally created file
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        # OSErrors by errno; a writer's own error (SimpleITK raises RuntimeError) when the disk is full. Judged
        # before the temporary goes: a full disk is still full then
        error = output_error(exc, path) if isinstance(exc, OSError) or (isinstance(exc, RuntimeError)
                                                                         and disk_nearly_full(path.parent)) else None
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        _remove_empty(created)
        if error is not None:
            raise error from None
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
