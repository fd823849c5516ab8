"""GPU utilisation while a block of work runs, the AMP optimiser step and the wait for queued GPU work, for the
benches' CUDA rows.

    with GpuUtilisation("cuda") as util:
        train()
    print(util.summary())   # "GPU busy 87 % (mean of 143 samples), peak memory 3.2 GiB"

``torch.cuda.utilization`` reads NVML's "percent of time over the last sample period during which a kernel was
executing" (nvidia-ml-py); a thread samples it every ``period_s`` seconds. On a CPU device, or where NVML cannot be
read, the summary says so instead of printing a number.
"""

from __future__ import annotations

import threading


class GpuUtilisation:
    """Context manager: mean NVML GPU utilisation (%) and peak allocated memory of the block, on ``device``."""

    def __init__(self, device: str, period_s: float = 0.02) -> None:
        self.device = str(device)
        self.period_s = period_s
        self.samples: list[int] = []
        self.peak_bytes: int | None = None
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def on_cuda(self) -> bool:
        return self.device.startswith("cuda")

    def _sample(self) -> None:
        import torch

        while not self._stop.is_set():
            try:
                self.samples.append(int(torch.cuda.utilization(self.device)))
            except Exception as exc:  # noqa: BLE001 - NVML missing or refused: report it, do not fail the bench
                self.error = f"{type(exc).__name__}: {exc}"
                return
            self._stop.wait(self.period_s)

    def __enter__(self) -> "GpuUtilisation":
        if self.on_cuda:
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        if self._thread is not None:
            import torch

            torch.cuda.synchronize(self.device)
            self._stop.set()
            self._thread.join()
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None

    def summary(self) -> str:
        if not self.on_cuda:
            return "GPU utilisation: not on a GPU"
        busy = (f"GPU busy {self.mean:.0f} % (mean of {len(self.samples)} NVML samples)" if self.mean is not None
                else f"GPU utilisation not readable ({self.error or 'no samples'})")
        peak = f", peak memory {self.peak_bytes / 2**30:.2f} GiB" if self.peak_bytes is not None else ""
        return busy + peak


def backward_and_step(loss, optimizer, scaler) -> None:
    """Backward pass and optimiser step as MONAI's AMP tutorial does them: through the ``GradScaler`` when there is
    one (fp16 on CUDA), plainly otherwise."""
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


def synchronise(device: str) -> None:
    """Wait for the work queued on a CUDA ``device`` (a timer read before it would miss it); nothing on the CPU."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)
