"""Training-time methods on real Fashion-MNIST: Network Slimming, ISTA on gamma, Han's magnitude pruning,
and the speed of ``fit``; Torch-Pruning 1.6.1's BNScalePruner side by side on the same sparse model.

    python benchmarks/training.py --quick     # 6,000 training images, short budgets (about 20 min)
    python benchmarks/training.py             # all 60,000, the budgets below (hours on 2 CPU cores)
    python benchmarks/training.py --only vgg8 # one model's rows (vgg8: Slimming, ISTA, Han; resnet56: Slimming);
                                              # the other model's rows in the JSON are kept
    python benchmarks/training.py --baselines # only the baselines (committed under baselines/), compiled

Every row starts from the same baseline checkpoint and gets the same fine-tune budget; accuracy is on
the full 10,000-image test split. Stage checkpoints go to benchmarks/.cache/ so a rerun resumes.
"""
from __future__ import annotations

import _passive  # noqa: F401  (first: it sets OMP_WAIT_POLICY before torch starts OpenMP)
import _common

import argparse
import copy
import sys
import time
from pathlib import Path

import safetensors.torch
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

import secateur
from secateur.data import fashion_mnist
from secateur.io import save_sparse, sparse_bytes
from secateur.io import serialized_size
from secateur.methods import ISTA, Magnitude, Slimming, ista, magnitude, slimming
from secateur.methods import record
from secateur.methods.slimming import prune_by
from secateur.plan import Target
from secateur.train import Optim, evaluate, fit

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
BASELINES = HERE / "baselines"
X = torch.zeros(1, 1, 28, 28)
# Slimming runs with the paper's lambdas as they are. Its sparsity training is 160 epochs on CIFAR;
# ours is far shorter, so the gammas barely move (the histograms say so). The L1 subgradient shrinks a
# gamma by lambda * lr per step (over 1 - momentum, alike in both): the paper's VGG schedule (batch 64 on 50k images: 782 steps per epoch;
# lr 0.1 for 80 epochs, 0.01 for 40, 0.001 for 40) sums lr to 6,600, ours to about 1/50 of that. One
# more VGG row scales 1e-4 by that ratio, so that its total shrink matches the paper's.
PAPER_SUM_LR = 782 * (80 * 0.1 + 40 * 0.01 + 40 * 0.001)
ISTA_SHRINK = 1.0   # ISTA: rho is set so that sum(lr) * rho, the most a gamma can shrink, is this
# The paper's global |gamma| threshold leaves single-channel layers here (VGG-8 at 70%: three convs of 1),
# so each Slimming row also runs capped: the same sparse model, at most this much of any one layer
# removed (max_amount; Torch-Pruning's max_pruning_ratio), as in the shipped recipes.
CAP = {"vgg8": 0.9, "resnet56": 0.7}
MODELS = tuple(CAP)
SGD = Optim(lr=0.01, weight_decay=1e-4)          # every fine-tune
SPARSE_SGD = Optim(lr=0.05, weight_decay=1e-4)   # every sparsity stage
BUDGETS = {  # epochs
    "quick": dict(subset=6000, base=3, sparsity=2, finetune=1, han=(1.0, 1.5, 2.0, 2.2), han_epochs=1,
                  compile=False),
    "full": dict(subset=None, base=15, sparsity=10, finetune=5, han=(1.0, 1.5, 2.0, 2.2, 2.4), han_epochs=2,
                 compile=True),   # compile: 1.2-1.4x on CPU after ~40 s; every training stage of the full run
}


def loaders(subset: int | None, seed: int = 0):
    train = fashion_mnist("train")
    if subset:
        train = Subset(train, torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:subset].tolist())
    return (DataLoader(train, batch_size=128, shuffle=True, drop_last=True),
            DataLoader(fashion_mnist("test"), batch_size=500))


def baseline(name: str, mode: str, train, test, epochs: int) -> torch.nn.Module:
    """Train once and keep the weights: committed under baselines/ for the full run."""
    path = (BASELINES if mode == "full" else CACHE) / f"{name}-fashion-mnist-{mode}.safetensors"
    torch.manual_seed(0)
    model = secateur.models.create_model(name, in_channels=1)
    if path.exists():
        model.load_state_dict(secateur.io.load_state_dict_file(path))
        return model
    fit(model, train, epochs=epochs, optim=Optim(lr=0.1, weight_decay=5e-4), eval_loader=test,
        checkpoint=CACHE / mode / f"{name}-base", resume=True, compile=BUDGETS[mode]["compile"])
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model


def latency_ratio(base, small, batch: int = 64) -> float:
    """Batch-``batch`` PyTorch latency of ``small`` over ``base``, both dense (``_common.dense``)."""
    t = _common.pair_latency(base, small, torch.randn(batch, *X.shape[1:]))
    return t["s"][0] / t["b"][0]


def method_row(model_name, tool, method, base, acc_base, pruned_rec, final_rec, final_model, ft, **extra):
    b = record("baseline", base, X)
    return _common.row(model=model_name, tool=tool, method=method, macs_ratio=final_rec["macs"] / b["macs"],
                       params_ratio=final_rec["params"] / b["params"], latency_ratio=latency_ratio(base, final_model),
                       batch=64, acc_base=acc_base, acc_pruned=pruned_rec.get("acc"),
                       acc_finetuned=final_rec.get("acc"), finetune_epochs=ft, **extra)


def speed(train, n_batches: int = 20) -> list[dict]:
    """images/s of fit vs a plain loop (same model, layout, optimiser, batches), interleaved."""
    batches = [b for _, b in zip(range(n_batches), train)]
    def plain(model):
        model.train().to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        start = time.perf_counter()
        for x, y in batches:
            loss = F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return len(batches) * 128 / (time.perf_counter() - start)
    def ours(model):
        return fit(model, batches, epochs=1, optim=Optim(lr=0.01), progress=False)[0]["images_per_s"]
    torch.manual_seed(0)
    net = secateur.models.create_model("vgg8", in_channels=1)
    runs = {"plain": [], "fit": []}
    for _ in range(3):
        for name, f in (("plain", plain), ("fit", ours)):
            runs[name].append(f(copy.deepcopy(net)))
    p, q = max(runs["plain"]), max(runs["fit"])
    return [_common.row(model="vgg8", tool="secateur", method="fit-speed", images_per_s_plain=p,
                        images_per_s_fit=q, overhead=1 - q / p)]


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--baselines", action="store_true", help="only train (or load) the baselines and stop")
    ap.add_argument("--only", choices=MODELS, help="run one model's rows (default: both)")
    args = ap.parse_args(argv[1:])
    _common.setup()
    mode = "quick" if args.quick else "full"
    B = BUDGETS[mode]
    ck = CACHE / mode
    train, test = loaders(B["subset"])
    if args.baselines:
        for name in MODELS:
            print(f"baseline {name}: test acc {evaluate(baseline(name, mode, train, test, B['base']), test)['acc']:.4f}")
        return
    stem = "training_quick" if args.quick else "training"
    rows = speed(train)
    rows_of = {"vgg8": vgg_rows, "resnet56": slimming_resnet}   # one entry per model in MODELS
    for model in [args.only] if args.only else MODELS:
        hist = {}
        rows += rows_of[model](train, test, mode, B, ck, hist)
        plot_gammas(hist, _common.RESULTS / f"{stem}_gammas_{model}.png")
    out = _common.write_results(stem, rows, argv, keep_others=args.only is not None)
    _common.print_table(rows, [("method", "method"), ("tool", "tool"), ("MACs", "macs_ratio"),
                               ("params", "params_ratio"), ("latency", "latency_ratio"), ("base", "acc_base"),
                               ("pruned", "acc_pruned"), ("tuned", "acc_finetuned"),
                               ("zero γ", "zero_gammas"), ("compr.", "compression"), ("overhead", "overhead")],
                        title=f"training ({mode}); written to {out}")


def vgg_rows(train, test, mode, B, ck, hist: dict[str, list[float]]) -> list[dict]:
    """Slimming at four lambdas (uncapped and capped), the Torch-Pruning anchor, ISTA vs Slimming at equal
    MACs and Han on VGG-8; the |gamma| after each Slimming sparsity stage go into ``hist``."""
    name, rows = "vgg8", []
    base = baseline(name, mode, train, test, B["base"])
    acc_base = evaluate(base, test)["acc"]
    print(f"baseline {name}: test acc {acc_base:.4f}")
    sum_lr = sum(SPARSE_SGD.lr_at(e, B["sparsity"]) for e in range(B["sparsity"])) * len(train)
    for lam in (0.0, 1e-5, 1e-4, float(f"{1e-4 * PAPER_SUM_LR / sum_lr:.2g}")):
        cfg = Slimming(sparsity=lam, amount=0.7, sparsity_epochs=B["sparsity"],
                       finetune_epochs=B["finetune"], optim=SPARSE_SGD, finetune_optim=SGD)
        res = slimming(base, train, X, cfg, eval_loader=test, checkpoint=ck / f"slim-{lam:g}", resume=True,
                       compile=B["compile"])
        hist[f"VGG-8, λ = {lam:g}"] = res.last("sparse")["gammas"]
        rows.append(method_row(name, "secateur", f"slimming λ={lam:g}", base, acc_base, res.last("pruned"),
                               res.last("finetuned"), res.model, B["finetune"], target={"amount": 0.7},
                               acc_sparse=res.last("sparse")["acc"], sparsity_epochs=B["sparsity"]))
        rows.append(capped(name, ck / f"slim-{lam:g}", f"slimming λ={lam:g}", 0.7, base, acc_base, train, test, B))
    sparse = sparse_model(name, ck / "slim-0.0001")
    rows += [anchor(name, base, sparse, 1e-4, 0.7, acc_base, train, test, B, ck, cap) for cap in (1.0, CAP[name])]
    rows += ista_vs_slimming(name, base, sparse, acc_base, train, test, ISTA_SHRINK / sum_lr, B, ck)
    rows.append(han(name, base, acc_base, train, test, B, ck))
    return rows


def slimming_resnet(train, test, mode, B, ck, hist: dict[str, list[float]]) -> list[dict]:
    """The paper's ResNet setting: lambda 1e-5, 40% of the channels (residual stages coupled); the rows
    (uncapped and capped); the |gamma| after sparsity training go into ``hist``."""
    base = baseline("resnet56", mode, train, test, B["base"])
    acc_base = evaluate(base, test)["acc"]
    lam = 1e-5
    cfg = Slimming(sparsity=lam, amount=0.4, sparsity_epochs=B["sparsity"], finetune_epochs=B["finetune"],
                   optim=SPARSE_SGD, finetune_optim=SGD)
    res = slimming(base, train, X, cfg, eval_loader=test, checkpoint=ck / "slim-resnet56", resume=True,
                   compile=B["compile"])
    hist[f"ResNet-56, λ = {lam:g}"] = res.last("sparse")["gammas"]
    row = method_row("resnet56", "secateur", f"slimming λ={lam:g}", base, acc_base, res.last("pruned"),
                     res.last("finetuned"), res.model, B["finetune"], target={"amount": 0.4},
                     acc_sparse=res.last("sparse")["acc"], sparsity_epochs=B["sparsity"])
    return [row, capped("resnet56", ck / "slim-resnet56", f"slimming λ={lam:g}", 0.4, base, acc_base, train, test, B),
            anchor("resnet56", base, sparse_model("resnet56", ck / "slim-resnet56"), lam, 0.4, acc_base, train, test,
                   B, ck)]


def sparse_model(name: str, run: Path) -> torch.nn.Module:
    """The model after a Slimming run's sparsity stage (its checkpoint)."""
    model = secateur.models.create_model(name, in_channels=1)
    model.load_state_dict(secateur.io.load_state_dict_file(run / "pass0-sparsity" / "model.safetensors"))
    return model


def finetuned_row(name, method, sparse, by: Target, base, acc_base, train, test, B, run: Path, **extra) -> dict:
    """Prune ``sparse`` by |gamma| for ``by``, fine-tune on the shared budget (checkpointed in ``run``)."""
    small = prune_by(sparse, X, by)
    pruned = {"acc": evaluate(small, test)["acc"]}
    fit(small, train, epochs=B["finetune"], optim=SGD, eval_loader=test, checkpoint=run, resume=True,
        compile=B["compile"])
    return method_row(name, "secateur", method, base, acc_base, pruned, record("finetuned", small, X, test), small,
                      B["finetune"], **extra)


def capped(name, run: Path, method, amount, base, acc_base, train, test, B) -> dict:
    """The Slimming row again from the same sparse model, with at most CAP[name] of any one layer removed."""
    target = Slimming(amount=amount, max_amount=CAP[name]).target()
    return finetuned_row(name, f"{method}, max_amount={CAP[name]:g}", sparse_model(name, run), target, base,
                         acc_base, train, test, B, run / f"finetune-cap{CAP[name]:g}",
                         target={"amount": amount, "max_amount": CAP[name]})


def anchor(name, base, sparse, lam, amount, acc_base, train, test, B, ck, cap: float = 1.0) -> dict:
    """Torch-Pruning's BNScalePruner (same L1 regulariser as ours) on our sparse model (trained at ``lam``),
    ``amount`` of the channels by one global ranking; ``cap`` is its max_pruning_ratio (1 = none)."""
    import torch_pruning as tp
    model = copy.deepcopy(sparse)
    method = f"slimming λ={lam:g}" + ("" if cap == 1 else f", max_amount={cap:g}")
    run = ck / f"tp-{name}-cap{cap:g}"
    try:
        head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        pruner = tp.pruner.BNScalePruner(model, X, importance=tp.importance.BNScaleImportance(), reg=lam,
                                         global_pruning=True, pruning_ratio=amount, max_pruning_ratio=cap,
                                         ignored_layers=[head])
        pruner.step()
        pruned = {"acc": evaluate(model, test)["acc"]}
        fit(model, train, epochs=B["finetune"], optim=SGD, eval_loader=test, checkpoint=run, resume=True,
            compile=B["compile"])
        final = record("finetuned", model, X, test)
        return method_row(name, "torch-pruning", method, base, acc_base, pruned, final, model, B["finetune"],
                          target={"amount": amount, "max_amount": cap})
    except Exception as e:  # a failing anchor is a row, not a crash
        return _common.row(model=name, tool="torch-pruning", method=method, ok=False,
                           error=_common.error_line(e))


def ista_vs_slimming(name, base, sparse, acc_base, train, test, rho, B, ck) -> list[dict]:
    cfg = ISTA(rho=rho, sparsity_epochs=B["sparsity"], finetune_epochs=B["finetune"], optim=SPARSE_SGD,
               finetune_optim=SGD)
    res = ista(base, train, X, cfg, eval_loader=test, checkpoint=ck / "ista", resume=True, compile=B["compile"])
    s = res.last("sparse")
    rows = [method_row(name, "secateur", f"ista ρ={rho:.3g}", base, acc_base, res.last("pruned"), res.last("finetuned"),
                       res.model, B["finetune"], target={"threshold": 0.0}, zero_gammas=s["zero_gammas"],
                       total_gammas=s["total_gammas"], max_rel_diff=res.last("pruned")["max_rel_diff"], acc_sparse=s["acc"])]
    macs = res.last("pruned")["macs"] / res.last("baseline")["macs"]
    zeros = sum(int((m.weight == 0).sum()) for m in sparse.modules() if isinstance(m, torch.nn.BatchNorm2d))
    try:
        rows.append(finetuned_row(name, "slimming λ=1e-4 @ ISTA's MACs", sparse,
                                  Target(macs=max(macs, 0.01), global_ranking=True, normalize=False), base, acc_base,
                                  train, test, B, ck / "slim-at-ista-macs", target={"macs": macs},
                                  zero_gammas=zeros))
    except secateur.TargetError as e:
        rows.append(_common.row(model=name, tool="secateur", method="slimming @ ISTA's MACs", ok=False,
                                error=_common.error_line(e)))
    return rows


def han(name, base, acc_base, train, test, B, ck) -> dict:
    cfg = Magnitude(qualities=B["han"], epochs=B["han_epochs"], optim=Optim(lr=0.005, weight_decay=1e-4))
    res = magnitude(base, train, X, cfg, eval_loader=test, checkpoint=ck / "han", resume=True, compile=B["compile"])
    last = res.last("retrained")
    sizes = {"bytes_dense": serialized_size(res.model)}
    for values in ("fp16", "int8"):
        path = save_sparse(res.model, CACHE / f"han-{values}", values=values, overwrite=True)
        sizes[f"bytes_sparse_{values}"] = sparse_bytes(path)
    rounds = [{k: r[k] for k in ("round", "quality", "compression", "acc")} for r in res.records
              if r["stage"] == "retrained"]
    return method_row(name, "secateur", "han (unstructured)", base, acc_base, res.last("pruned"), last, res.model,
                      B["han_epochs"] * len(B["han"]), compression=last["compression"], rounds=rounds, **sizes,
                      note="dense kernels: no speed-up expected from unstructured sparsity")


def plot_gammas(hist: dict[str, list[float]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(hist), figsize=(max(4 * len(hist), 8), 3), squeeze=False)
    for ax, (title, g) in zip(axes[0], hist.items()):
        ax.hist(g, bins=50, color="tab:blue")
        ax.set_title(title)
        ax.set_xlabel("|γ| after sparsity training")
    axes[0][0].set_ylabel("BN channels")
    fig.suptitle("Network Slimming on Fashion-MNIST: BN scales after sparsity training (paper Fig. 4)",
                 fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main(sys.argv)
