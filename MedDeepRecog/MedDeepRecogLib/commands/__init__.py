"""Sub-commands of the ``meddeeprecog`` command line, one module each (see ``cli.COMMANDS``)."""

from __future__ import annotations

#: The arguments of the running command (set by ``cli.main``): reports and provenance quote the exact command.
LAST_ARGV: list[str] = []


def command_line(package=None) -> str:
    """The running command as typed (``meddeeprecog classify ...``), shell-quoted.

    With ``package`` (the model that was used), a ``--model ID`` naming it from the catalog is pinned to
    ``--model ID@VERSION``: ``ID`` alone takes the latest version, which may be another by the time the command is
    run again. A folder, a zip, ``ID@VERSION`` or ``auto`` is left as typed."""
    import shlex

    argv = list(LAST_ARGV)
    if package is not None:
        argv = _pin_model(argv, package)
    return "meddeeprecog " + " ".join(shlex.quote(a) for a in argv)


def _pin_model(argv: list[str], package) -> list[str]:
    """``argv`` with the value of ``--model`` (or an abbreviation argparse accepts, ``--model=ID`` too) replaced by
    ``ID@VERSION`` where it is ``package``'s id as a catalog reference (not a path here)."""
    from ..packages.package import _is_path_ref, _local_package_path

    def pinned(value: str) -> str:
        if value == package.id and not _is_path_ref(value) and _local_package_path(value) is None:
            return f"{package.id}@{package.version}"
        return value

    def is_model_option(token: str) -> bool:
        return len(token) > 3 and "--model".startswith(token)

    out = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            out += argv[i:]
            break
        name, eq, value = token.partition("=")
        if eq and is_model_option(name):
            out.append(f"{name}={pinned(value)}")
        elif is_model_option(token) and i + 1 < len(argv):
            out += [token, pinned(argv[i + 1])]
            i += 1
        else:
            out.append(token)
        i += 1
    return out


def register_training_blocks() -> None:
    """Import every part that registers a training-config block (``training.hooks``), so a config file read by
    any command (``train``, ``robustness --train-config``) knows all of them: ``adversarial`` (robustness),
    ``localisation`` and ``placement`` (inference)."""
    from .. import robustness  # noqa: F401
    from ..inference import localisation, placement  # noqa: F401


def case_report(result, package, out_dir):
    """``extra`` for ``inference.classify.write_outputs``: the case's HTML report (``--report``), written with the
    other outputs, before the JSON that lists it."""
    from ..report import write_case_report

    return lambda outputs: {"report": str(write_case_report(result, outputs, package, out_dir,
                                                            command=command_line(package)))}
