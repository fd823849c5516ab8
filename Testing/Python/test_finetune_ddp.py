"""Distributed data parallel with 2 CPU processes on the gloo backend (what ``torchrun --nproc_per_node=2`` does).

1. The loop gives the same weights in 2 processes as in 1 when each optimiser step sees the same samples
   (global batch = whole data set, split over the ranks).
2. A full ``finetune`` run under 2 ranks writes exactly one package (rank 0), recording ``world_size`` 2.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from finetune_helpers import TINY_UNET, synthetic_dataset


def _toy_problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 5, generator=g)
    y = (x @ torch.arange(1.0, 6.0) > 0).long()
    return torch.utils.data.TensorDataset(x, y)


def _toy_training(ctx, checkpoint_dir=None):
    from MedDeepRecogLib.training.distributed import make_sampler, per_rank_batch
    from MedDeepRecogLib.training.loop import FitConfig, StepOutput, fit
    from MedDeepRecogLib.training.sections import LoopConfig, OptimizerConfig

    torch.manual_seed(0)
    model = torch.nn.Linear(5, 2)
    data = _toy_problem()
    sampler = make_sampler(data, ctx, shuffle=True, seed=0)
    loader = torch.utils.data.DataLoader(data, batch_size=per_rank_batch(8, ctx), sampler=sampler,
                                         shuffle=sampler is None)

    def step(m, batch):
        xb, yb = batch
        return StepOutput(torch.nn.functional.cross_entropy(m(xb), yb), len(xb))

    cfg = FitConfig(optimizer=OptimizerConfig(name="sgd", lr=0.1, weight_decay=0.0), loop=LoopConfig(epochs=3),
                    monitor="loss", checkpoint_dir=checkpoint_dir)
    fit(model, loader, step, None, cfg, ctx=ctx)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _worker(rank: int, world: int, port: int, out: str, data_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), MEDDEEPRECOG_HOME=str(Path(out) / "home"))
    torch.set_num_threads(1)
    from MedDeepRecogLib.finetune.config import FinetuneConfig
    from MedDeepRecogLib.finetune.finetune import finetune
    from MedDeepRecogLib.training.distributed import init_distributed, shutdown

    ctx = init_distributed("cpu")
    state = _toy_training(ctx, checkpoint_dir=str(Path(out) / "toy_ckpt"))
    if rank == 0:
        torch.save(state, str(Path(out) / "ddp_state.pt"))
    result = finetune(FinetuneConfig.from_dict(dict(
        task="segment", data=data_dir, base=None, id="ddp-seg", val_cases=["case2"], patch_size=[16, 16, 16],
        patches_per_epoch=4, spacing_mm=[3.0, 3.0, 3.0], arch_kwargs=TINY_UNET,
        training={"epochs": 2, "batch_size": 2, "early_stopping_patience": 0, "device": "cpu"},
        dest=str(Path(out) / "cat"), work_dir=str(Path(out) / "work"))))
    (Path(out) / f"result_rank{rank}.json").write_text(json.dumps({"package": result["package"],
                                                                    "metrics": result["metrics"]}))
    shutdown(ctx)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(300)
def test_two_process_gloo_matches_single_process_and_rank0_writes(tmp_path):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    data_dir = synthetic_dataset(tmp_path / "data", n=3)
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), str(data_dir)), nprocs=2, join=True)

    from MedDeepRecogLib.training.distributed import DistContext

    single = _toy_training(DistContext())
    ddp = torch.load(str(tmp_path / "ddp_state.pt"), weights_only=True)
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], rtol=1e-5, atol=1e-6)
    assert (tmp_path / "toy_ckpt" / "last.pt").exists()

    r0 = json.loads((tmp_path / "result_rank0.json").read_text(encoding="utf-8"))
    r1 = json.loads((tmp_path / "result_rank1.json").read_text(encoding="utf-8"))
    assert r1["package"] is None and r0["package"]  # only rank 0 writes
    versions = [p.name for p in (tmp_path / "cat" / "ddp-seg").iterdir()]
    assert versions == ["1.0.0"]
    meta = json.loads((Path(r0["package"]) / "model.json").read_text(encoding="utf-8"))
    assert meta["provenance"]["world_size"] == 2
    assert r0["metrics"]["dice"] == r1["metrics"]["dice"]  # validation gathered from both ranks
