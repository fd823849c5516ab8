"""Command lines of the worker: ``PythonSlicer -m MedDeepRecogLib <command> ... --progress json``.

The Slicer module never imports torch into Slicer's process; it runs the core's command line (contract in
``docs/worker-protocol.md``) as a separate process with ``PYTHONPATH`` set to the module folder, which holds the
``MedDeepRecogLib`` package. Builders here only assemble argument lists; :mod:`.process_runner` runs them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import ConfigError

#: Python packages the worker imports from the module folder.
PACKAGE = "MedDeepRecogLib"


def module_root() -> Path:
    """The folder that holds the ``MedDeepRecogLib`` package (the Slicer module folder, ``MedDeepRecog/``)."""
    return Path(__file__).resolve().parents[2]


def worker_environment(base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The worker's environment: ``base`` (default: this process's) with the module folder first on PYTHONPATH.

    Output is unbuffered UTF-8 so progress lines arrive as they are printed, whatever the locale.
    """
    env = dict(os.environ if base is None else base)
    root = str(module_root())
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    env["PYTHONPATH"] = os.pathsep.join([root, *paths])
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    env.update(extra)
    return env


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class WorkerCommand:
    """A worker invocation: ``args`` is the full argument list, ``command`` the sub-command's name.

    Build one with the class methods (``WorkerCommand.classify(...)``); ``python`` is the interpreter
    (``process_runner.python_executable()`` inside Slicer).
    """

    command: str
    args: list[str] = field(default_factory=list)

    @classmethod
    def build(cls, command: str, *positional: Any, python: str, progress: str | None = "json",
              **options: Any) -> "WorkerCommand":
        """Generic builder: ``options`` become ``--kebab-case VALUE``; ``None``/``False`` are left out,
        ``True`` is a bare flag and a list or tuple gives one value per item after the option."""
        args = [str(python), "-m", PACKAGE, command, *[str(p) for p in positional]]
        for key, value in options.items():
            if value is None or value is False:
                continue
            if value is True:
                args.append(_option(key))
            elif isinstance(value, (list, tuple)):
                if value:
                    args += [_option(key), *[str(v) for v in value]]
            else:
                args += [_option(key), str(value)]
        if progress:
            args += ["--progress", progress]
        return cls(command, args)

    # -- the commands the Slicer module drives --------------------------------------------------------------
    @classmethod
    def classify(cls, inputs: Sequence[str | Path], model: str, out_dir: str | Path, *, python: str,
                 explain: str = "gradcam", device: str = "auto",
                 second_input: str | Path | None = None, segments: str | Path | None = None) -> "WorkerCommand":
        """``classify INPUT... --model M --out DIR --explain E --device D``: writes ``DIR/<name>.json`` and
        ``DIR/<name>_heatmap.nrrd`` per input (see :mod:`.outputs`). ``second_input`` (a second modality for
        multi-modal packages) is passed as ``--second-input``; :meth:`validate` says if the worker lacks it.
        ``segments`` (a segmentation, for an ROI classifier) is passed as ``--segments``: the worker then writes
        ``DIR/<name>_segments.json`` instead (:func:`.outputs.read_segment_labels`)."""
        if segments is not None:
            return cls.build("classify", *inputs, python=python, model=model, out=out_dir, device=device,
                             segments=segments)
        return cls.build("classify", *inputs, python=python, model=model, out=out_dir, explain=explain,
                         device=device, second_input=second_input)

    @classmethod
    def segment(cls, input: str | Path, model: str, out: str | Path, *, python: str,
                device: str = "auto") -> "WorkerCommand":
        """``segment INPUT --model M --out OUT.seg.nrrd --device D``: one segment per class of the segmentation
        package ``M``, on the input's grid; the final progress line's ``result`` holds each segment's voxels and ml
        (:func:`.outputs.read_segment_volumes`). ``OUT`` must not exist: the worker never replaces a file."""
        return cls.build("segment", input, python=python, model=model, out=out, device=device)

    @classmethod
    def preprocess(cls, input: str | Path, output: str | Path, pipeline: str | Path, *, python: str,
                   mask: str | Path | None = None) -> "WorkerCommand":
        """``preprocess INPUT OUTPUT --pipeline NAME|FILE [--mask OUT.seg.nrrd]``."""
        return cls.build("preprocess", input, output, python=python, pipeline=pipeline, mask=mask)

    @classmethod
    def list_models(cls, *, python: str) -> "WorkerCommand":
        """``models --json``: the installed model packages."""
        return cls.build("models", python=python, progress=None, json=True)

    @classmethod
    def import_model(cls, path: str | Path, *, python: str) -> "WorkerCommand":
        """``models import PATH``: copy a package (folder or .zip) into the user catalog."""
        return cls.build("models", "import", path, python=python, progress=None, json=True)

    @classmethod
    def device_info(cls, *, python: str) -> "WorkerCommand":
        """``device --json``: torch version, CUDA availability, device names and memory."""
        return cls.build("device", python=python, progress=None, json=True)

    @classmethod
    def finetune(cls, base: str, manifest: str | Path, *, python: str, task: str = "classify",
                 epochs: int | None = None, device: str | None = None) -> "WorkerCommand":
        """``finetune --base M --data MANIFEST --task classify|segment [--epochs N]``: a new package version."""
        return cls.build("finetune", python=python, base=base, data=manifest, task=task, epochs=epochs,
                         device=device)

    @classmethod
    def robustness(cls, model: str, input: str | Path, out_dir: str | Path, *, python: str,
                   attack: str | None = None, eps: Sequence[float] | None = None) -> "WorkerCommand":
        """``robustness --model M --input SCAN --out DIR [--attack fgsm|pgd] [--eps ...]``; without ``attack`` the
        command line's default (PGD), so the panel's check is the CLI's."""
        return cls.build("robustness", python=python, model=model, input=input, out=out_dir, attack=attack,
                         eps=list(eps) if eps else None)

    def validate(self) -> None:
        """Check the arguments with the core's own parser, without starting a process.

        A version mismatch between panel and worker (an option the worker lacks) is then reported at once as a
        :class:`ConfigError` instead of an argparse usage dump from the worker. Only this command's sub-parser is
        built, and building it imports no heavy package (``cli.build_parser``): this runs in Slicer's process, also
        before the module's dependencies (torch, pydantic...) are installed. Should a parser still need one, the
        check is left to the worker, which reports the same error line.
        """
        import contextlib
        import io
        import logging

        try:
            from ..cli import build_parser

            parser = build_parser([self.command])
        except ImportError as exc:
            logging.getLogger(__name__).warning("not checking the %s command here (%s): the worker will",
                                                self.command, exc)
            return
        messages = io.StringIO()
        try:
            with contextlib.redirect_stderr(messages), contextlib.redirect_stdout(io.StringIO()):
                parser.parse_args(self.cli_args())
        except SystemExit as exc:
            if exc.code in (0, None):
                return
            lines = [ln.split(": error: ", 1)[-1] for ln in messages.getvalue().splitlines() if ln.strip()]
            raise ConfigError(f"the installed worker does not accept this {self.command} command: "
                              f"{lines[-1] if lines else 'invalid arguments'}") from None

    def cli_args(self) -> list[str]:
        """The arguments after ``python -m MedDeepRecogLib`` (what ``cli.main(argv)`` takes)."""
        return self.args[3:]


def _package_meta(model: str) -> dict | None:
    """The package's ``model.json`` alone (no torch, no weights: this runs on Slicer's GUI thread); ``None`` when
    the package cannot be read (the worker will say why)."""
    from ..errors import MedDeepRecogError
    from ..packages import read_package_meta

    try:
        return read_package_meta(model)
    except (MedDeepRecogError, OSError, ValueError):
        return None


def model_input_spec(model: str) -> dict:
    """The package's ``input`` (``kind``, ``size``, ``spacing_mm``, ``content``: ``"binary_mask"`` for a model that
    classifies the mask of one structure, e.g. the adrenal models), read from its ``model.json``; ``{}`` when the
    package cannot be read."""
    meta = _package_meta(model)
    return dict(meta["input"]) if meta and isinstance(meta.get("input"), dict) else {}


def model_input_kind(model: str) -> str | None:
    """The package's ``input.kind`` (``roi3d`` for an ROI classifier that labels segments), read from its
    ``model.json``; ``None`` when the package cannot be read."""
    return model_input_spec(model).get("kind")


def model_task(model: str) -> str | None:
    """The package's ``task`` (``"segmentation"`` for a package that ``segment`` runs, ``"classification"``
    otherwise, as ``models --json`` lists it), read from its ``model.json``; ``None`` when it cannot be read."""
    meta = _package_meta(model)
    return meta.get("task", "classification") if meta else None


def listed_model_key(models: Sequence[Mapping[str, Any]], wanted: str) -> str:
    """The ``id@version`` of the ``models --json`` entry that ``wanted`` names: a plain package id (what a script or
    the module's self-test sets, and ``classify --model ID`` reads) names its newest version, as the catalog takes
    it (a folder whose name is no version is never that); ``wanted`` itself otherwise (``id@version``, a path,
    ``auto``, or an id listed nowhere)."""
    from ..packages.package import _version_key, is_version

    if not wanted or "@" in wanted:
        return wanted
    versions = [str(m["version"]) for m in models
                if m.get("id") == wanted and not m.get("error") and is_version(m.get("version"))]
    return f"{wanted}@{max(versions, key=_version_key)}" if versions else wanted
