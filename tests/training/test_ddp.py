"""TRP and the trainer under DistributedDataParallel: two processes, gloo, CPU."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from trp_kernels import training

from trp_kernels.compression import layer_scheme
from trp_kernels.schemes import geometry
from trp_kernels.schemes.matrix_views import weight_as_conv
from trp_kernels.models import resnet20
from trp_kernels.rank_training.trp import TRPRegularizer

WORLD = 2
# "+pointwise": the classifier (a linear layer) too, in scheme pointwise
SCHEMES = ("channel", "tucker2", "decoupled", "decoupled+pointwise")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _regularizer_steps(rank, scheme, broadcast):
    """Five TRP+Nu steps (projection every 2) on data that differs between the processes."""
    torch.manual_seed(rank)        # different initial weights: DDP must make them rank 0's
    model = resnet20(in_channels=1, stage_strides=(1, 1, 2))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    scheme, pointwise = scheme.split("+")[0], scheme.endswith("+pointwise")
    trp = TRPRegularizer(ddp, scheme, energy=0.6, nuclear_weight=1e-2, period=2,
                         broadcast=broadcast, pointwise=pointwise,
                         skip=("conv1",) if pointwise else None)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    data = torch.Generator().manual_seed(100 + rank)
    for _ in range(5):
        x, y = torch.randn(8, 1, 8, 8, generator=data), torch.randint(0, 10, (8,), generator=data)
        trp.before_forward()
        loss = F.cross_entropy(ddp(x), y)
        optimizer.zero_grad()
        loss.backward()
        trp.after_backward()
        optimizer.step()
    trp.project()
    return {"weights": {name: conv.weight.detach().clone() for name, conv in trp.layers},
            "ranks": trp.ranks(),
            "full_ranks": {name: geometry.scheme(layer_scheme(layer, scheme)).full_rank(
                               weight_as_conv(layer.weight).shape)
                           for name, layer in trp.layers}}


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    for scheme in SCHEMES:
        for broadcast in (False, True):
            torch.save(_regularizer_steps(rank, scheme, broadcast),
                       os.path.join(out_dir, f"trp-{scheme}-{broadcast}-{rank}.pt"))
    # The trainer as torchrun runs it: each process trains half of every batch.
    config = training.TrainConfig(epochs=1, batch_size=256, period=2)
    run = training.Run(training.prepare(config, os.path.join(out_dir, "run")), False,
                       lambda line: None)
    run.fit()
    torch.save({n: p.detach() for n, p in run.model.named_parameters()},
               os.path.join(out_dir, f"trained-{rank}.pt"))
    if rank == 0:
        run.finish()
    dist.destroy_process_group()


def test_every_process_projects_identically(tmp_path):
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD,
                       start_method="spawn")
    for scheme in SCHEMES:
        for broadcast in (False, True):
            a, b = (torch.load(tmp_path / f"trp-{scheme}-{broadcast}-{r}.pt")
                    for r in range(WORLD))
            assert a["ranks"] == b["ranks"]
            if scheme == "channel":
                assert all(a["ranks"][n] < a["full_ranks"][n] for n in a["ranks"])
            else:   # tucker2 pairs, decoupled's shared ranks: some layer is truncated
                assert any(a["ranks"][n] != a["full_ranks"][n] for n in a["ranks"])
            assert ("fc" in a["ranks"]) == scheme.endswith("+pointwise")
            for name, weight in a["weights"].items():
                assert torch.equal(weight, b["weights"][name]), (scheme, broadcast, name)
    trained = [torch.load(tmp_path / f"trained-{r}.pt") for r in range(WORLD)]
    assert trained[0].keys() == trained[1].keys()
    for name in trained[0]:
        assert torch.equal(trained[0][name], trained[1][name]), name
    assert (tmp_path / "run" / "report.json").exists()
