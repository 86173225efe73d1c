"""Run by tests/test_recalibrate.py under torchrun (two CPU processes, gloo), and imported by it for the
one-process reference: every data criterion's scores and BN recalibration on the same loader."""
import sys

import numpy as np
import safetensors.torch
import torch
from torch.utils.data import DataLoader

import secateur
from secateur.criteria import LASSO, APoZ, Taylor, Taylor2019, ThiNet
from secateur.prune import score
from train_fixtures import separable, tiny_net


def results() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = tiny_net().eval()
    graph = secateur.trace(model, torch.zeros(1, 1, 8, 8))
    data = DataLoader(separable(96), batch_size=16)          # 6 batches: 3 per process
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    out = {}
    for criterion in (APoZ(), Taylor(), Taylor2019(), ThiNet(), LASSO()):
        for g, s in score(model, graph, criterion, data).items():
            out[f"{type(criterion).__name__}.{g}"] = torch.as_tensor(np.asarray(s, dtype=np.float64))
    out["forwards"] = torch.tensor(len(calls))    # this process's batches, all criteria together
    for k, v in secateur.recalibrate_bn(model, data, batches=5).state_dict().items():   # 3 + 2 batches
        if "running" in k:
            out[f"bn.{k}"] = v
    return out


def one_batch() -> str:
    """What a data criterion on a loader of a single batch says under two processes (one sees none)."""
    model = tiny_net().eval()
    try:
        score(model, secateur.trace(model, torch.zeros(1, 1, 8, 8)), APoZ(), DataLoader(separable(16), batch_size=16))
    except ValueError as e:
        return str(e)
    return "no error"


if __name__ == "__main__":
    import torch.distributed as dist
    found = results()
    if dist.get_rank() == 0:
        safetensors.torch.save_file(found, sys.argv[1])
    with open(f"{sys.argv[1]}.{dist.get_rank()}.txt", "w") as f:   # every process says it, not only the idle one
        f.write(one_batch())
    dist.destroy_process_group()
