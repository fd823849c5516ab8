"""Sub-commands of the ``meddeeprecog`` command line, one module each (see ``cli.COMMANDS``)."""

from __future__ import annotations

#: The arguments of the running command (set by ``cli.main``): reports and provenance quote the exact command.
LAST_ARGV: list[str] = []


def command_line() -> str:
    """The running command as typed (``meddeeprecog classify ...``), shell-quoted."""
    import shlex

    return "meddeeprecog " + " ".join(shlex.quote(a) for a in LAST_ARGV)


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
                                                            command=command_line()))}
