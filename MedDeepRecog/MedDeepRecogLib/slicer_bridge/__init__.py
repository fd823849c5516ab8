"""The Slicer-free half of the MedDeepRecog Slicer module.

Everything the module's logic does that does not need Slicer lives here, so it is tested with the real worker
outside Slicer: building the worker command lines (:mod:`.worker_command`), reading the worker's JSON progress
lines (:mod:`.progress_reader`), running the worker as a separate process whose whole tree can be cancelled
(:mod:`.process_runner`), and locating and summarising what the worker wrote (:mod:`.outputs`).
Nothing here imports torch, SimpleITK or Slicer, so ``MedDeepRecog.py`` can import it at Slicer start-up.
"""

from ..resources import sample_path  # the module's self-test scans; a plain path lookup, no heavy import
from .outputs import (ClassifyResult, SegmentLabels, SegmentVolumes, read_classify_result, read_segment_labels,
                      read_segment_volumes)
from .process_runner import WorkerError, WorkerProcess, descendant_pids, kill_process_tree, run_worker
from .progress_reader import ProgressEvent, ProgressReader, parse_progress_line
from .worker_command import (WorkerCommand, listed_model_key, model_input_kind, model_input_spec, model_task,
                             module_root, worker_environment)

__all__ = [
    "ClassifyResult",
    "SegmentLabels",
    "SegmentVolumes",
    "listed_model_key",
    "read_classify_result",
    "read_segment_labels",
    "read_segment_volumes",
    "sample_path",
    "WorkerError",
    "WorkerProcess",
    "descendant_pids",
    "kill_process_tree",
    "run_worker",
    "ProgressEvent",
    "ProgressReader",
    "parse_progress_line",
    "WorkerCommand",
    "model_input_kind",
    "model_input_spec",
    "model_task",
    "module_root",
    "worker_environment",
]
