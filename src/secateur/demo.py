"""``make demo`` (``python -m secateur.demo``): what secateur does, offline, in a few minutes on 2 CPU cores.

For a torchvision ResNet-50 and the small VGG-8 of ``secateur.models`` (Fashion-MNIST's 1×28×28
input) it prunes to half the MACs and prints params, MACs, latency and file size before and after;
then it shows that the surgery is exact and what constant-channel folding buys. All weights are
random (nothing is downloaded): the numbers show cost and exactness, not accuracy.
"""
from __future__ import annotations

import copy
import dataclasses
import gzip
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn

import secateur
from secateur.graph import Role

THREADS = 2
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def _rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| relative to the scale of ``expected``."""
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def _file_size(model: nn.Module, path: Path) -> int:
    return (secateur.save(model, path) / "model.safetensors").stat().st_size


def costs(name, model, fresh, x, small, *, root: Path, repeats: int, warmup: int, big_batch: int | None) -> dict:
    """Before/after table (file size = the real model.safetensors written by secateur.save)."""
    rows = {}
    for label, m in (("before", model), ("after", small)):
        stats = secateur.measure(m, x, repeats=repeats, warmup=warmup, threads=THREADS)
        rows[label] = dataclasses.replace(stats, bytes=_file_size(m, root / f"{name}-{label}"))
    print(f"  input {tuple(x.shape)}; latency: median ± IQR of {repeats} runs, batch 1, {THREADS} threads; "
          f"size: model.safetensors as secateur.save wrote it")
    print("    " + secateur.table(rows).replace("\n", "\n    "))
    summary = rows["after"].ratio(rows["before"])
    again = secateur.load(root / f"{name}-after", model=fresh())   # pruned widths restored from JSON
    summary["reload_err"] = _rel_err(_out(again, x), _out(small, x))
    print(f"  saved to model.safetensors + pruning.json; secateur.load into a fresh {type(model).__name__}"
          f" gives the same outputs (max rel. diff {summary['reload_err']:.1e})")
    if big_batch:
        before_s = rows["before"].latency_ms / 1e3
        estimate = big_batch * before_s * (3 + 1) * 1.6   # 3 timed + 1 warm-up runs, both models
        if estimate > 60:
            print(f"  batch {big_batch}: skipped (would take ~{estimate:.0f} s on this machine right now)")
        else:
            big = {label: secateur.measure(m, x, repeats=3, warmup=1, threads=THREADS, batch=big_batch)
                   for label, m in (("before", model), ("after", small))}
            b, a = big["before"].latency_ms, big["after"].latency_ms
            summary[f"latency_ratio_b{big_batch}"] = a / b
            print(f"  latency at batch {big_batch}: {b:.0f} ms -> {a:.0f} ms ({a / b:.2f}x)")
    return summary


def exactness(model: nn.Module, graph: secateur.Graph, x: torch.Tensor, rng: np.random.Generator) -> float:
    """Silence a third of the largest group's channels in a copy, cut exactly those: outputs must not move."""
    group = max((g for g in graph.prunable if g.exact), key=lambda g: (len(g.members), g.size))
    units = np.sort(rng.choice(group.size, size=group.size // 3, replace=False))
    silenced = copy.deepcopy(model)
    secateur.silence(silenced, group, units)           # zero every weight that reads those channels
    plan = secateur.Plan({group.index: np.setdiff1d(np.arange(group.size), units)})
    cut = secateur.apply(copy.deepcopy(silenced), graph, plan)
    err = _rel_err(_out(cut, x), _out(silenced, x))
    layers = sorted(set(group.modules()))
    print(f"  exactness: group #{group.index} ({group.size} channels tied across {len(layers)} layers, "
          f"{layers[0]} ... {layers[-1]})")
    print(f"    silence {len(units)} of its channels, cut exactly those -> max |diff| / max |output| = {err:.1e}")
    return err


def _feeds_1x1_or_linear(model: nn.Module, group: secateur.ChannelGroup) -> bool:
    consumers = [model.get_submodule(n) for n in group.modules(Role.IN)]
    return bool(consumers) and all(
        isinstance(c, nn.Linear) or (isinstance(c, nn.Conv2d) and c.kernel_size == (1, 1) and c.groups == 1)
        for c in consumers)


def folding(model: nn.Module, graph: secateur.Graph, x: torch.Tensor, rng: np.random.Generator) -> tuple[float, float]:
    """Set BN gamma = 0 (beta > 0) on a third of a group's channels: they output the constant relu(beta).
    Cutting them with fold=True moves that constant into the consumer (exact for 1x1 conv / Linear)."""
    group = next(g for g in graph.prunable
                 if g.exact and len(g.modules(Role.NORM)) == 1 and _feeds_1x1_or_linear(model, g))
    units = np.sort(rng.choice(group.size, size=group.size // 3, replace=False))
    bn_member = next(m for m in group.members if m.site.role is Role.NORM)
    channels = torch.as_tensor(bn_member.positions[np.isin(bn_member.unit, units)])
    constant = copy.deepcopy(model)
    with torch.no_grad():
        bn = constant.get_submodule(bn_member.site.module)
        bn.weight[channels], bn.bias[channels] = 0.0, 0.5
    graph = secateur.trace(constant, x)   # same groups; now it sees which input channels are constant
    plan = secateur.Plan({group.index: np.setdiff1d(np.arange(group.size), units)})
    expected = _out(constant, x)
    errs = [_rel_err(_out(secateur.apply(copy.deepcopy(constant), graph, plan, fold=f), x), expected)
            for f in (True, False)]
    print(f"  folding: {bn_member.site.module} gamma = 0, beta = 0.5 on {len(units)} channels "
          f"(read by {', '.join(group.modules(Role.IN))}); cut them:")
    print(f"    fold=True  max |diff| / max |output| = {errs[0]:.1e}   (constant moved into the next bias)")
    print(f"    fold=False max |diff| / max |output| = {errs[1]:.1e}")
    return errs[0], errs[1]


def fashion_mnist(model: nn.Module, n: int = 4) -> tuple[int, ...] | None:
    """Read the first ``n`` test images straight from Debian's IDX file and run the pruned VGG-8 on them."""
    images, labels = FMNIST / "t10k-images-idx3-ubyte.gz", FMNIST / "t10k-labels-idx1-ubyte.gz"
    if not images.is_file():
        print(f"  {images} not found (make setup installs Debian's dataset-fashion-mnist); skipped")
        return None
    with gzip.open(images, "rb") as f:
        magic, count, rows, cols = np.frombuffer(f.read(16), ">u4").tolist()
        assert magic == 2051, f"{images}: not an IDX image file"
        pixels = np.frombuffer(f.read(n * rows * cols), np.uint8).reshape(n, 1, rows, cols)
    with gzip.open(labels, "rb") as f:
        first = np.frombuffer(f.read(8 + n), np.uint8)[8:].tolist()
    x = torch.from_numpy(pixels.copy()).float() / 255
    logits = _out(model, x)
    print(f"  {images}: {count} images of {rows}x{cols}; first {n} -> tensor {tuple(x.shape)}, "
          f"labels {first}; pruned VGG-8 -> logits {tuple(logits.shape)} (untrained)")
    return tuple(x.shape)


def main(quick: bool = False) -> dict:
    """Run the demo; ``quick`` uses a 32x32 ResNet-50 input, 2 timed runs and no batch-16 timing."""
    start = time.perf_counter()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    side = 32 if quick else 224
    demos = [
        ("resnet50", "torchvision ResNet-50 (weights=None: random init, nothing downloaded)",
         lambda: torchvision.models.resnet50(weights=None), (3, side, side), None if quick else 16),
        ("vgg8", "secateur.models VGG-8, 1 input channel (Fashion-MNIST's 1x28x28)",
         lambda: secateur.models.create_model("vgg8", num_classes=10, in_channels=1), (1, 28, 28), None),
    ]
    print(f"secateur demo: torch {torch.__version__}, latency on {THREADS} threads; random weights throughout")
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > cores - 0.5:
        print(f"note: load average {load:.1f} on {cores} cores: other programs share the CPU, latencies are noisy")
    summary = {}
    with tempfile.TemporaryDirectory(prefix="secateur-demo-") as tmp:
        for name, title, build, shape, big_batch in demos:
            print(f"\n== {title} ==")
            model = build().eval()
            x = torch.randn(1, *shape)
            t = time.perf_counter()
            small = secateur.prune(model, x, secateur.criteria.L1(), target_macs=0.5)
            print(f"  secateur.prune(model, x, L1(), target_macs=0.5): {time.perf_counter() - t:.1f} s "
                  f"(trace, score, plan, cut; your model is untouched)")
            s = costs(name, model, build, x, small, root=Path(tmp), repeats=2 if quick else 10,
                      warmup=0 if quick else 1, big_batch=big_batch)
            x2 = torch.randn(2, *shape)   # two samples: a constant channel is told from a coincidence
            graph = secateur.trace(model, x2)   # channel groups: what must be cut together
            s["exact_err"] = exactness(model, graph, x2, rng)
            s["fold_err"], s["nofold_err"] = folding(model, graph, x2, rng)
            summary[name] = s
            if name == "vgg8":
                print("\n== Fashion-MNIST ==")
                summary["fashion_mnist"] = fashion_mnist(small)
    summary["seconds"] = time.perf_counter() - start
    print(f"\nDone in {summary['seconds']:.0f} s. Pruning random weights shows cost and exactness, not "
          f"accuracy: prune a trained model (and fine-tune) for that.")
    return summary


if __name__ == "__main__":
    main()
