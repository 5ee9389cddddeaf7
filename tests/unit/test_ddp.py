"""Multi-process training through torch.distributed DDP: two gloo processes on CPU agree on every parameter."""

from __future__ import annotations

import json
import os
import socket

import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    from sinklab.remove.train import TrainConfig, train

    result = train(TrainConfig(preset="tiny", steps=4, eval_every=4, quant_eval=False, device="cpu"))
    params = torch.cat([p.detach().flatten() for p in result.model.parameters()])
    record = {"sum": params.double().sum().item(), "norm": params.double().norm().item(), "final": result.final}
    if rank == 0:
        record["history"] = result.history
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(record, f)
    torch.distributed.destroy_process_group()


def test_two_gloo_ranks_train_the_same_model(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["sum"] == ranks[1]["sum"] and ranks[0]["norm"] == ranks[1]["norm"]  # bit-identical weights
    assert ranks[0]["final"]["train_loss"] == ranks[1]["final"]["train_loss"]  # all-reduced
    history = ranks[0]["history"]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    assert history[-1]["tokens"] == 4 * 8 * 2 * 63  # steps x batch x ranks x text tokens per sequence
