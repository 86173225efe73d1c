"""``fit``: SGD training with evaluation, callbacks, progress, checkpoints and exact resume."""
from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..forward import eval_mode
from . import _dist
from ._callbacks import Callback
from ._checkpoint import load_checkpoint, save_checkpoint

SCHEDULES = ("cosine", "step", "constant")


@dataclass(frozen=True)
class Optim:
    """SGD with momentum and a learning-rate schedule.

    schedule: "cosine" (from lr to 0, falling step by step, so that a one-epoch fine-tune anneals as a
    long run does), "step" (times ``gamma`` at each of ``milestones``, given as fractions of the
    epochs, e.g. the papers' 0.5 and 0.75; at epoch boundaries) or "constant".
    """

    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    schedule: str = "cosine"
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1

    def __post_init__(self):
        for name in ("lr", "momentum", "weight_decay", "gamma"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0) or (name == "lr" and v == 0):
                raise ValueError(f"Optim {name}={v!r} must be a finite number {'> 0' if name == 'lr' else '>= 0'}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"Optim schedule={self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if any(not 0 < m < 1 for m in self.milestones):
            raise ValueError(f"Optim milestones={self.milestones!r} must be fractions of the epochs in (0, 1)")

    def lr_at(self, epoch: float, epochs: int) -> float:
        """The rate at ``epoch``, a fraction within it counted (``2.5``: half-way through the third)."""
        if self.schedule == "cosine":
            return self.lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
        if self.schedule == "step":
            return self.lr * self.gamma ** sum(math.floor(epoch) >= round(m * epochs) for m in self.milestones)
        return self.lr

    def build(self, params: Iterable[nn.Parameter]) -> torch.optim.SGD:
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                               nesterov=self.nesterov and self.momentum > 0)


def default_device() -> torch.device:
    """The GPU when there is one, else the CPU (under torchrun, this process's GPU)."""
    if torch.cuda.is_available():
        return torch.device("cuda", _dist.local_rank())
    return torch.device("cpu")


def _is_convnet(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def _strided_pointwise_hazard(model: nn.Module) -> bool:
    """torch 2.14's CPU backward of a channels_last 1x1 conv with stride 2 corrupts memory ("double
    free") when its input width is not a multiple of 8 (e.g. 7 -> 21 at 28x28, seen after pruning a
    ResNet's downsampling shortcut). Such models train in the default layout."""
    return any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1)
               and m.in_channels % 8 for m in model.modules())


def auto_channels_last(model: nn.Module) -> bool:
    """channels_last for conv nets (faster on CPU: ResNet-20 epoch 234 s vs 290 s), unless the model
    has a layer that torch's channels_last backward mishandles."""
    return _is_convnet(model) and not _strided_pointwise_hazard(model)


def _to(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


@torch.no_grad()
def evaluate(model: nn.Module, loader, *, device: torch.device | str | None = None,
             channels_last: bool | None = None) -> dict[str, float]:
    """Mean cross-entropy ``loss`` and top-1 ``acc`` (a fraction) of ``model`` over ``loader``, in eval mode."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    channels_last = _is_convnet(model) if channels_last is None else channels_last
    total, loss, correct = 0, torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long)
    with eval_mode(model):
        for x, y in loader:
            x, y = _to(x, device, channels_last), y.to(device, non_blocking=True)
            logits = model(x)
            loss += F.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
            total += y.numel()
    if total == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    return {"loss": loss.item() / total, "acc": correct.item() / total}


def _seed_epoch(seed: int, epoch: int, loader) -> None:
    """Make the epoch's shuffling, augmentation and dropout a function of (seed, epoch) alone, so a
    resumed run repeats exactly what an uninterrupted one would have done."""
    torch.manual_seed(seed * 100_003 + epoch)
    generator = getattr(loader, "generator", None)
    if generator is not None:
        generator.manual_seed(seed * 100_003 + epoch)
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


class Diverged(ValueError):
    """Training produced an infinite or NaN loss (the learning rate is too high for the model)."""


def fit(model: nn.Module, train_loader, *, epochs: int, optim: Optim = Optim(), eval_loader=None,
        callbacks: Sequence[Callback] = (), checkpoint: str | Path | None = None, resume: bool = False,
        device: torch.device | str | None = None, channels_last: bool | None = None,
        compile: bool = False, progress: bool = True, seed: int = 0) -> list[dict]:
    """Train ``model`` IN PLACE with SGD and cross-entropy for ``epochs`` epochs; return the history.

    Each history entry holds the epoch's ``lr``, ``loss``, ``acc`` (on the training batches),
    ``images_per_s``, and ``eval_loss``/``eval_acc`` when ``eval_loader`` is given.
    checkpoint: a directory written atomically after every epoch; ``resume=True`` continues from it
        (same result as an uninterrupted run). An existing directory without ``resume`` is an error.
    device: default the GPU when there is one. channels_last: default on for conv nets (faster on CPU),
        except those with a strided 1x1 conv over a width that is not a multiple of 8 (a torch bug).
    compile: train through ``torch.compile`` (about 40 s to compile, then 1.2-1.4x on CPU).
    Under ``torchrun`` (WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel and the
    loader sharded with a DistributedSampler; only rank 0 writes checkpoints and shows progress.
    """
    if not (isinstance(epochs, int) and epochs >= 0):
        raise ValueError(f"epochs={epochs!r} must be an integer >= 0")
    callbacks = list(callbacks)
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.exists() and not resume:
        raise FileExistsError(f"{path} already exists; pass resume=True to continue that run, or choose "
                              "another checkpoint directory")
    rank, world = _dist.init()
    device = torch.device(device) if device is not None else default_device()
    channels_last = auto_channels_last(model) if channels_last is None else channels_last
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = optim.build(p for p in model.parameters() if p.requires_grad)
    done, history = 0, []
    if resume and path is not None and path.exists():
        resumed = load_checkpoint(path, model, opt, callbacks)
        done, history = resumed.epochs_done, resumed.history
    loader = _dist.shard(train_loader, rank, world, seed) if world > 1 else train_loader
    net = _dist.wrap(model, device) if world > 1 else model
    if compile and done < epochs:
        net = torch.compile(net)
    for cb in callbacks:
        cb.on_fit_begin(model)
    for epoch in range(done, epochs):
        _seed_epoch(seed, epoch, loader)
        steps = _steps(loader)
        lr = optim.lr_at(epoch, epochs)
        logs = {"epoch": epoch, "lr": lr,
                **_train_epoch(net, model, loader, opt, callbacks,
                               lambda i: optim.lr_at(epoch + i / steps if steps else epoch, epochs),
                               device, channels_last, progress and rank == 0, f"epoch {epoch + 1}/{epochs}")}
        if not math.isfinite(logs["loss"]) or not all(bool(p.isfinite().all()) for p in model.parameters()):
            raise Diverged(f"the training diverged in epoch {epoch + 1} at lr={lr:g} (loss {logs['loss']:.3g}, "
                           f"weights no longer finite): lower the learning rate")
        if eval_loader is not None:
            logs.update({f"eval_{k}": v for k, v in evaluate(model, eval_loader, device=device,
                                                              channels_last=channels_last).items()})
        for cb in callbacks:
            cb.on_epoch_end(model, epoch, logs)
        history.append(logs)
        if path is not None and rank == 0:
            save_checkpoint(path, model, opt, callbacks, epoch + 1, history)
        _dist.barrier(world)
    return history


def _steps(loader) -> int:
    """Batches in an epoch; 0 where the loader cannot tell (an iterable dataset without a length):
    the rate then changes once an epoch."""
    try:
        return len(loader)
    except TypeError:
        return 0


def _train_epoch(net, model, loader, opt, callbacks, lr_of, device, channels_last, show, desc) -> dict:
    """One epoch; ``lr_of(i)``: the learning rate of the epoch's step ``i``."""
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen, start = 0, time.perf_counter()
    bar = tqdm(loader, desc=desc, disable=not show, leave=False, dynamic_ncols=True)
    for i, (x, y) in enumerate(bar):
        lr = lr_of(i)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = _to(x, device, channels_last), y.to(device, non_blocking=True)
        logits = net(x)
        loss = F.cross_entropy(logits, y)
        with torch.no_grad():
            loss_sum += loss.detach() * y.numel()
            correct += (logits.argmax(1) == y).sum()
        for cb in callbacks:
            loss = cb.loss(model, x, y, logits, loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for cb in callbacks:
            cb.after_backward(model)
        opt.step()
        for cb in callbacks:
            cb.after_step(model, lr)
        seen += y.numel()
    bar.close()
    if seen == 0:
        raise ValueError("fit: the training loader yielded no batches")
    elapsed = time.perf_counter() - start
    return {"loss": loss_sum.item() / seen, "acc": correct.item() / seen, "images_per_s": seen / elapsed,
            "seconds": elapsed}
