"""Run under torchrun with 2 processes: each rank trains the same student on its own slice
of each batch with a GAM balancer; rank 0 writes every rank's GAM history to argv[1]."""

import json
import sys

import torch
import torch.distributed as dist
from torch import nn

from distillery import Distiller, Term
from distillery.engine import distributed as D
from distillery.weighting.gam import GradientGuidedModulation
from distillery.objectives import CrossEntropy, FeatureMSE

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
student = nn.Sequential()
student.add_module("stem", nn.Linear(8, 16))
student.add_module("act", nn.ReLU())
student.add_module("inject", nn.Linear(16, 16))
student.add_module("head", nn.Linear(16, 4))
gam = GradientGuidedModulation(task="ce", term="feat", params="inject", rho=0.3, delta=0.01, every=2)
terms = [Term("ce", CrossEntropy()), Term("feat", FeatureMSE(), inputs={"student": "student.inject", "teacher": "batch.target"})]
distiller = Distiller(student, None, terms, balancer=gam)
wrapper = nn.parallel.DistributedDataParallel(student)
distiller.set_student_wrapper(wrapper)
g = torch.Generator().manual_seed(1 + rank)  # every rank sees different data
opt = torch.optim.SGD(distiller.trainable_parameters(), lr=0.05)
for step in range(9):
    batch = {"x": torch.randn(16, 8, generator=g), "y": torch.randint(0, 4, (16,), generator=g),
             "target": 3.0 * (1 + rank) * torch.randn(16, 16, generator=g)}
    losses = distiller.step(batch)
    losses["loss"].backward()
    opt.step()
    opt.zero_grad()
    distiller.update()
histories = D.all_gather_objects([list(h) for h in gam.history])
if rank == 0:
    with open(sys.argv[1], "w") as f:
        json.dump(histories, f)
# the DDP wrapper holds the process group: drop it before leaving the group, or gloo can abort
# the process during interpreter exit (D.shutdown explains)
del wrapper, distiller, gam, opt
D.shutdown()
