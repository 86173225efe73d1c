"""fit: learns, resumes to the same result, refuses bad input in one line, distils, runs under torchrun."""
import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from secateur.io import LoadError
from secateur.train import Callback, Distill, Optim, evaluate, fit
from train_fixtures import separable, tiny_net

pytestmark = pytest.mark.xdist_group("train")


def _loaders(n=256, seed=0):
    data = separable(n, seed=seed)
    return DataLoader(data, batch_size=32, shuffle=True), DataLoader(data, batch_size=128)


def _net(dropout=0.0):
    torch.manual_seed(0)
    return tiny_net(dropout)


def test_fit_learns_and_reports():
    train, test = _loaders()
    model = _net()
    before = evaluate(model, test)["acc"]
    history = fit(model, train, epochs=4, optim=Optim(lr=0.1), eval_loader=test, progress=False)
    assert len(history) == 4 and [h["epoch"] for h in history] == [0, 1, 2, 3]
    assert history[-1]["eval_acc"] > max(0.9, before + 0.3)
    assert history[-1]["loss"] < history[0]["loss"]
    assert all(h["images_per_s"] > 0 for h in history)
    assert evaluate(model, test)["acc"] == pytest.approx(history[-1]["eval_acc"])


def test_schedules():
    cos, step = Optim(lr=0.1), Optim(lr=0.1, schedule="step", milestones=(0.5, 0.75))
    assert [round(cos.lr_at(e, 4), 6) for e in range(4)] == [0.1, 0.085355, 0.05, 0.014645]
    assert [step.lr_at(e, 8) for e in range(8)] == pytest.approx([0.1] * 4 + [0.01] * 2 + [0.001] * 2)
    assert Optim(schedule="constant").lr_at(7, 8) == 0.1
    assert step.lr_at(3.9, 8) == pytest.approx(0.1) and cos.lr_at(0.5, 1) == pytest.approx(0.05)


class _Rates(Callback):
    def __init__(self):
        self.rates = []

    def after_step(self, model, lr):
        self.rates.append(lr)


def test_a_one_epoch_cosine_fine_tune_anneals_step_by_step():
    train, _ = _loaders()   # 8 steps an epoch
    rates = _Rates()
    history = fit(_net(), train, epochs=1, optim=Optim(lr=0.1), progress=False, callbacks=[rates])
    assert history[0]["lr"] == rates.rates[0] == 0.1 and len(rates.rates) == len(train) == 8
    assert rates.rates == sorted(rates.rates, reverse=True)
    assert rates.rates[-1] == pytest.approx(0.05 * (1 + math.cos(math.pi * 7 / 8)))   # 0.0038: annealed


class _Stream(torch.utils.data.IterableDataset):   # a stream: its loader has no length
    def __iter__(self):
        yield from separable(64)


def test_a_loader_without_a_length_trains_at_the_epochs_rate():
    rates = _Rates()
    fit(_net(), DataLoader(_Stream(), batch_size=32), epochs=2, optim=Optim(lr=0.1), progress=False, callbacks=[rates])
    assert rates.rates == [0.1, 0.1, 0.05, 0.05]


class _Interrupt(Callback):
    def __init__(self, at):
        self.at = at

    def on_epoch_end(self, model, epoch, logs):
        if epoch == self.at:
            raise KeyboardInterrupt


class _Counter(Callback):
    """A callback with state, to check that callback tensors survive a resume."""

    def __init__(self):
        self.steps = torch.zeros((), dtype=torch.long)

    def after_step(self, model, lr):
        self.steps += 1

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["steps"].clone()


def test_resume_continues_to_the_same_result(tmp_path):
    train, test = _loaders()
    straight, c1 = _net(dropout=0.3), _Counter()
    fit(straight, train, epochs=3, eval_loader=test, checkpoint=tmp_path / "a", progress=False, callbacks=[c1])

    interrupted = _net(dropout=0.3)
    with pytest.raises(KeyboardInterrupt):
        fit(interrupted, train, epochs=3, checkpoint=tmp_path / "b", progress=False,
            callbacks=[_Counter(), _Interrupt(at=1)])
    state = json.loads((tmp_path / "b" / "state.json").read_text())
    assert state["epochs_done"] == 1      # the interrupted epoch 2 was never written
    resumed, c2 = _net(dropout=0.3), _Counter()
    history = fit(resumed, train, epochs=3, eval_loader=test, checkpoint=tmp_path / "b", resume=True,
                  progress=False, callbacks=[c2])
    assert len(history) == 3 and int(c2.steps) == int(c1.steps) == 3 * len(train)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)


def test_checkpoint_refusals_leave_files_alone(tmp_path):
    train, _ = _loaders(64)
    fit(_net(), train, epochs=1, checkpoint=tmp_path / "run", progress=False)
    snapshot = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    with pytest.raises(FileExistsError, match="resume=True"):
        fit(_net(), train, epochs=1, checkpoint=tmp_path / "run", progress=False)
    other = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(4))
    other(torch.zeros(1, 1, 8, 8))
    with pytest.raises(LoadError, match=r"another model: '0.bias' is absent there and \(4,\) here"):
        fit(other, train, epochs=2, checkpoint=tmp_path / "run", resume=True, progress=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == snapshot

    (tmp_path / "run" / "state.json").write_text("{not json")
    with pytest.raises(LoadError, match=r"state.json: not valid JSON .*; delete .* to start over"):
        fit(_net(), train, epochs=2, checkpoint=tmp_path / "run", resume=True, progress=False)
    (tmp_path / "run" / "state.json").write_bytes(snapshot["state.json"])
    (tmp_path / "run" / "model.safetensors").write_bytes(snapshot["model.safetensors"][:100])
    with pytest.raises(LoadError, match="model.safetensors: corrupt or truncated"):
        fit(_net(), train, epochs=2, checkpoint=tmp_path / "run", resume=True, progress=False)


@pytest.mark.parametrize("kw, match", [
    ({"lr": 0}, "lr=0"), ({"lr": -1.0}, "lr=-1.0"), ({"weight_decay": float("nan")}, "weight_decay=nan"),
    ({"schedule": "linear"}, "schedule='linear'; choose one of cosine, step, constant"),
    ({"milestones": (0.5, 2)}, "milestones"),
])
def test_bad_optim_is_one_line(kw, match):
    with pytest.raises(ValueError, match=match) as e:
        Optim(**kw)
    assert "\n" not in str(e.value)


def test_bad_epochs():
    with pytest.raises(ValueError, match="epochs=-1"):
        fit(_net(), _loaders(32)[0], epochs=-1)


def test_distill_loss_and_teacher_untouched():
    teacher, student = _net(), tiny_net()
    before = copy.deepcopy(teacher.state_dict())
    cb = Distill(teacher, temperature=2.0, alpha=0.75)
    cb.on_fit_begin(student)
    x, y = separable(16)[:]
    logits = student(x)
    ce = F.cross_entropy(logits, y)
    with torch.no_grad():
        t = teacher(x)
    p, q = F.softmax(t / 2, 1), F.log_softmax(logits / 2, 1)
    expected = 0.75 * 4 * (p * (p.log() - q)).sum(1).mean() + 0.25 * ce
    torch.testing.assert_close(cb.loss(student, x, y, logits, ce), expected)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    with pytest.raises(ValueError, match="temperature=0"):
        Distill(teacher, temperature=0)


def test_distill_pulls_the_student_to_the_teacher():
    train, _ = _loaders()
    teacher = _net()
    fit(teacher, train, epochs=8, optim=Optim(lr=0.1), progress=False)
    x, _ = separable(256)[:]

    def kl(student):
        with torch.no_grad():
            return F.kl_div(F.log_softmax(student.eval()(x), 1), F.softmax(teacher(x), 1), reduction="batchmean")

    torch.manual_seed(1)
    student = tiny_net()
    before = kl(student)
    fit(student, train, epochs=4, optim=Optim(lr=0.1), callbacks=[Distill(teacher, alpha=1.0)], progress=False)
    assert kl(student) < 0.3 * before


@pytest.mark.slow
def test_torchrun_ddp_two_cpu_processes(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(Path(__file__).parent / "_ddp_train.py"), str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    w0 = safetensors.torch.load_file(tmp_path / "rank0.safetensors")
    w1 = safetensors.torch.load_file(tmp_path / "rank1.safetensors")
    for k in w0:
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked")):  # BN stats stay per-process
            torch.testing.assert_close(w0[k], w1[k], rtol=0, atol=0, msg=k)
    acc, world = (tmp_path / "rank0.acc").read_text().split()
    assert world == "2" and float(acc) > 0.6
    assert json.loads((tmp_path / "ckpt" / "state.json").read_text())["epochs_done"] == 6


def test_channels_last_default_avoids_the_strided_pointwise_crash():
    from secateur.train._fit import auto_channels_last
    assert auto_channels_last(tiny_net())
    assert auto_channels_last(torch.nn.Sequential(torch.nn.Conv2d(8, 16, 1, stride=2)))
    assert not auto_channels_last(torch.nn.Sequential(torch.nn.Conv2d(7, 21, 1, stride=2)))
    assert not auto_channels_last(torch.nn.Sequential(torch.nn.Linear(4, 4)))
