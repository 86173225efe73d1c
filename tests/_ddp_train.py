"""Run by tests/test_train.py under torchrun: two CPU processes (gloo) fine-tune one model with fit."""
import sys
from pathlib import Path

import safetensors.torch
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, TensorDataset

from secateur.train import Optim, fit
from train_fixtures import separable, tiny_net

out = Path(sys.argv[1])
torch.manual_seed(0)
model = tiny_net()
data = separable(256)
history = fit(model, DataLoader(data, batch_size=32, shuffle=True), epochs=6, optim=Optim(lr=0.1),
              eval_loader=DataLoader(data, batch_size=64), checkpoint=out / "ckpt", progress=False)
rank = dist.get_rank()
safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                            str(out / f"rank{rank}.safetensors"))
(out / f"rank{rank}.acc").write_text(f"{history[-1]['eval_acc']} {dist.get_world_size()}")
dist.destroy_process_group()
