"""User-facing errors.

Every problem a user can cause (a bad file, a wrong parameter, a model that does not fit) is raised as a
:class:`MedDeepRecogError` that names the offending file or setting and the problem. The command line prints
only its message (exit code 2), so users never see a traceback from deep inside torch or ITK.
"""

from __future__ import annotations

import errno
from pathlib import Path


class MedDeepRecogError(Exception):
    """An error caused by the input, worded for the user.

    Args:
        problem: what is wrong, in plain words.
        path: the file or folder concerned, if any; it is put in front of the message.

    A path inside a temporary folder a ``.zip`` was extracted into (:func:`extracted_from`) is shown as the zip
    the user gave, then the member (``pk/model.zip: pkg/weights.safetensors: ...``): ``path`` becomes the zip and
    ``member`` the entry's name in it (``None`` for the package folder itself), since the folder is deleted when
    the package is closed.
    """

    def __init__(self, problem: str, path: str | Path | None = None):
        self.problem = problem
        self.path = None if path is None else Path(path)
        self.member = None
        if self.path is not None:
            self.path, self.member = _zip_location(self.path)
        where = self.path if self.member is None else f"{self.path}: {self.member}"
        super().__init__(f"{where}: {problem}" if self.path is not None else problem)


#: Temporary folders a ``.zip`` package was extracted into -> [the zip as the user named it, the package folder in
#: it]; an error naming a file in one names the zip and the member instead (:class:`MedDeepRecogError`).
_EXTRACTED: dict[Path, list[Path]] = {}


def extracted_from(folder: Path, archive: Path, package: Path | None = None) -> None:
    """Record that ``folder`` (a temporary folder) holds the extracted ``archive``, its package in ``package``
    (default: ``folder`` itself); errors about files in it then name ``archive`` and the member."""
    _EXTRACTED[Path(folder)] = [Path(archive), Path(package) if package is not None else Path(folder)]


def forget_extracted(folder: Path) -> None:
    """Drop the record of :func:`extracted_from` (the folder was deleted)."""
    _EXTRACTED.pop(Path(folder), None)


def _zip_location(path: Path) -> tuple[Path, str | None]:
    """``(path, None)``, or ``(zip, member)`` for a path inside a folder a zip was extracted into (member ``None``
    for that folder or the package folder in it)."""
    for folder, (archive, package) in list(_EXTRACTED.items()):
        if path.is_relative_to(folder):
            if path in (folder, package):
                return archive, None
            return archive, path.relative_to(folder).as_posix()
    return path, None


#: Why a path that is not UTF-8 text is refused (a file name in another encoding, which Python holds as surrogates).
NOT_TEXT_PATH = ("its name is not valid UTF-8 text, and SimpleITK, which reads and writes the images, aborts the "
                 "process on such a path: rename it")


def is_text_path(path: str | Path) -> bool:
    """Whether ``path`` can be handed to SimpleITK: its text encodes as UTF-8 (no undecodable bytes)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable_path(path: str | Path) -> str:
    """``path`` as text that can be printed, its undecodable bytes shown as ``\\xff``."""
    import os

    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


class InputImageError(MedDeepRecogError):
    """A scan that cannot be read or is unusable (missing, corrupt, wrong dimension, NaN voxels...)."""


class ConfigError(MedDeepRecogError):
    """A pipeline, training config or command option that is malformed or names an unknown thing."""


class ModelPackageError(MedDeepRecogError):
    """A model package that is missing, tampered with (checksum), or does not fit the input."""


class OutputError(MedDeepRecogError):
    """An output that cannot be written: read-only or full destination, a path under a regular file, a folder
    where a file is wanted, an existing output not to be replaced."""


#: What a file-system fault means, by errno, in the words every error line uses (writes and the command line).
OS_ERROR_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a part of the path is a regular file, not a folder",
    errno.EISDIR: "is a folder, not a file",
    errno.EEXIST: "already exists",
    errno.ENOENT: "no such file or folder",
    errno.ENAMETOOLONG: "file name too long",
}


def os_error_reason(exc: OSError) -> str:
    """The reason of an ``OSError`` in plain words (its own text for an errno without an entry)."""
    return OS_ERROR_REASONS.get(exc.errno, exc.strerror or type(exc).__name__)
