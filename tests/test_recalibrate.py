"""BatchNorm recalibration after a cut (EagleEye): the statistics it computes, what it leaves alone,
and the methods' "recalibrated" records and distillation wiring."""
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

import secateur
from secateur.criteria import L1
from secateur.data._fashion import DEFAULT_ROOT
from secateur.methods import OneShot, Slimming, compress
from secateur.train import Optim, evaluate
from train_fixtures import separable, tiny_net

pytestmark = pytest.mark.xdist_group("train")
BASELINE = Path(__file__).parents[1] / "benchmarks" / "baselines" / "vgg8-fashion-mnist-full.safetensors"


def _conv_bn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, bias=False), nn.BatchNorm2d(3, momentum=0.3), nn.Dropout(0.5),
                         nn.Flatten(), nn.LazyLinear(2))


def test_statistics_are_the_exact_average_of_the_batches():
    model = _conv_bn()
    model(torch.zeros(1, 1, 6, 6))
    batches = [torch.randn(8, 1, 6, 6) * (i + 1) + i for i in range(3)]
    out = secateur.recalibrate_bn(model, batches, batches=3)
    with torch.no_grad():
        feats = [model[0](b) for b in batches]
    mean = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    var = torch.stack([f.transpose(0, 1).reshape(3, -1).var(1, unbiased=True) for f in feats]).mean(0)
    torch.testing.assert_close(out[1].running_mean, mean)
    torch.testing.assert_close(out[1].running_var, var)
    assert out[1].momentum == 0.3


def test_the_callers_model_and_every_flag_are_left_alone():
    model = _conv_bn()
    model(torch.zeros(1, 1, 6, 6))
    model.train()
    model[2].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    out = secateur.recalibrate_bn(model, [(torch.randn(4, 1, 6, 6), torch.zeros(4))], batches=5)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert [m.training for m in model.modules()] == flags == [m.training for m in out.modules()]
    assert not torch.equal(out[1].running_mean, model[1].running_mean)
    assert torch.equal(out[0].weight, model[0].weight)


@pytest.mark.parametrize("batches, loader, match", [
    (0, [torch.zeros(1, 1, 6, 6)], "batches=0 must be an integer > 0"),
    (2, [], "the loader yielded no batches"),
])
def test_bad_input_is_one_line(batches, loader, match):
    with pytest.raises(ValueError, match=match):
        secateur.recalibrate_bn(_conv_bn(), loader, batches=batches)


def test_a_model_that_is_not_a_module_is_named():
    # e.g. an Allocation from secateur.methods.allocate, which holds per-layer amounts, not a model
    with pytest.raises(TypeError, match="recalibrate_bn: model must be a torch.nn.Module, got dict"):
        secateur.recalibrate_bn({"conv": 0.5}, [torch.zeros(1, 1, 6, 6)])


@pytest.mark.skipif(not (DEFAULT_ROOT / "train-images-idx3-ubyte.gz").exists() or not BASELINE.exists(),
                    reason="needs Fashion-MNIST (make setup) and the committed VGG-8 baseline")
def test_recalibration_restores_most_of_a_pruned_vgg8():
    from secateur.data import fashion_mnist
    model = secateur.models.create_model("vgg8", in_channels=1)
    model.load_state_dict(secateur.io.load_state_dict_file(BASELINE))
    x = torch.zeros(1, 1, 28, 28)
    small = secateur.prune(model, x, L1(), target_macs=0.5, progress=False)
    test = DataLoader(Subset(fashion_mnist("test"), range(1000)), batch_size=500)
    train = DataLoader(fashion_mnist("train"), batch_size=128, shuffle=True,
                       generator=torch.Generator().manual_seed(0))
    before = evaluate(small, test)["acc"]
    after = evaluate(secateur.recalibrate_bn(small, train, batches=5), test)["acc"]
    assert before < 0.5 and after > 0.8, (before, after)


def _data():
    data = separable(128)
    return DataLoader(data, batch_size=32, shuffle=True), DataLoader(data, batch_size=128)


@pytest.mark.parametrize("recalibrate", [20, 0])
def test_methods_record_accuracy_before_and_after_recalibrating(recalibrate):
    train, test = _data()
    result = compress(tiny_net(), OneShot(amount=0.5), example_inputs=torch.zeros(1, 1, 8, 8), train_loader=train,
                      eval_loader=test, progress=False, recalibrate=recalibrate)
    stages = [r.stage for r in result.records]
    assert stages == (["baseline", "pruned", "recalibrated"] if recalibrate else ["baseline", "pruned"])
    assert all(0 <= r.acc <= 1 for r in result.records)


def test_slimming_recalibrates_after_each_cut():
    train, test = _data()
    result = compress(tiny_net(), Slimming(sparsity=1e-4, amount=0.25, passes=2, sparsity_epochs=1,
                                           finetune_epochs=1, optim=Optim(lr=0.05)),
                      example_inputs=torch.zeros(1, 1, 8, 8), train_loader=train, eval_loader=test, progress=False,
                      recalibrate=2)
    assert [r.stage for r in result.records].count("recalibrated") == 2


def test_distill_fine_tunes_against_the_unpruned_teacher():
    train, test = _data()
    config = OneShot(amount=0.5, finetune_epochs=1)
    plain, taught = (compress(tiny_net(), config, example_inputs=torch.zeros(1, 1, 8, 8), train_loader=train,
                              progress=False, distill=d) for d in (False, True))
    assert not torch.equal(plain.model[-1].weight, taught.model[-1].weight)


def test_a_stage_option_out_of_range_is_one_line():
    with pytest.raises(ValueError, match="recalibrate=-1 must be an integer >= 0"):
        compress(tiny_net(), OneShot(amount=0.5), example_inputs=torch.zeros(1, 1, 8, 8),
                 train_loader=[(torch.zeros(1, 1, 8, 8), torch.zeros(1))], recalibrate=-1)


def test_a_model_without_batchnorm_comes_back_as_it_was():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    out = secateur.recalibrate_bn(model, TensorDataset(torch.zeros(2, 1, 4, 4)), batches=1)
    assert out is not model and torch.equal(out[0].weight, model[0].weight)


@pytest.mark.slow
def test_recording_under_torchrun_gives_what_one_process_gives(tmp_path):
    import os
    import subprocess
    import sys

    import safetensors.torch
    from _ddp_record import results
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(Path(__file__).parent / "_ddp_record.py"), str(tmp_path / "scores.safetensors")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    shared, alone = safetensors.torch.load_file(tmp_path / "scores.safetensors"), results()
    assert sorted(shared) == sorted(alone) and len(alone) >= 14
    assert 2 * shared.pop("forwards") == alone.pop("forwards") > 0    # each process ran half the batches
    for k, v in alone.items():
        torch.testing.assert_close(shared[k], v, rtol=1e-6, atol=1e-9, msg=k)
    for rank in (0, 1):
        said = Path(f"{tmp_path / 'scores.safetensors'}.{rank}.txt").read_text()
        assert "every process must see at least one batch (1 saw none)" in said, said
