"""Training: ``fit`` (SGD, schedules, evaluation, checkpoints, exact resume, DDP under torchrun) and the
callbacks that methods add to a step (sparsity, proximal steps, masks, distillation), and
``recalibrate_bn`` (BatchNorm statistics re-estimated after a cut).

    history = fit(model, train_loader, epochs=10, optim=Optim(lr=0.1), eval_loader=test_loader,
                  checkpoint="runs/base", resume=True)
    print(history[-1]["eval_acc"])
"""
from ._callbacks import Callback
from ._dist import all_sum, summed
from ._dist import init as processes
from ._distill import Distill
from ._fit import Diverged, Optim, default_device, evaluate, fit
from ._recalibrate import recalibrate_bn

__all__ = ["all_sum", "processes", "summed", "Callback", "Distill", "Diverged", "Optim", "default_device", "evaluate", "fit", "recalibrate_bn"]
