"""Runtimes as backends: each installed one runs the exported model, agrees with PyTorch, and times it."""
from __future__ import annotations

import copy
import math
import re
import sys

import numpy as np
import pytest
import torch
from torch import nn

import secateur
import secateur.runtimes as rt
from secateur.criteria import L1


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    with torch.no_grad():
        net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.mark.parametrize("name", sorted(rt.backends()))
def test_every_installed_runtime_agrees_with_pytorch_and_times_it(name, tmp_path) -> None:
    if name not in rt.installed():
        pytest.skip(f"{name} is not installed here")
    model, x = _net(), torch.randn(2, 3, 16, 16)
    before, threads = copy.deepcopy(model.state_dict()), torch.get_num_threads()
    p = rt.prepare(model, x, name, threads=1, folder=tmp_path)
    assert p.error < 1e-4 and p.latency(repeats=3, warmup=1) > 0
    assert rt.backend(name).kernels(p, tmp_path, 1, 3) > 0   # its own operations, as a table times them
    inside = rt.backend(name).layer_times(p, tmp_path, 1, 3)   # each layer inside the model, where profiled
    assert set(inside) == (set() if name == "opencv" else {"0", "3", "6"})   # OpenCV has no profile
    assert all(t > 0 for t in inside.values())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert torch.get_num_threads() == threads


def test_a_missing_runtime_names_the_extra_before_any_work(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)   # import openvino now fails
    with pytest.raises(rt.RuntimeMissing, match=r"runtime 'openvino' needs openvino.*secateur\[runtimes\]"):
        rt.prepare(_net(), torch.randn(1, 3, 16, 16), "openvino")
    assert "openvino" not in rt.installed()
    with pytest.raises(ValueError, match="runtime='tensorrt'; choose one of torch"):
        rt.prepare(_net(), torch.randn(1, 3, 16, 16), "tensorrt")


def test_a_runtime_that_computes_something_else_is_refused() -> None:
    with pytest.raises(rt.RuntimeMismatch, match="output 0 differs from PyTorch"):
        rt.agree([torch.ones(2, 4).numpy()], [torch.zeros(2, 4).double().numpy() + 2], "runtime 'x'", 1e-3)


class Staircase(rt.Backend):
    """A synthetic runtime: every conv costs its output width rounded up to a multiple of 8 (a blocked
    layout's staircase) times its inputs and taps. Known answers, no clock."""

    name, modules = "staircase", ("torch",)

    def load(self, model, inputs, folder, threads):
        net = copy.deepcopy(model).eval()

        def run(arrays):
            with torch.no_grad():
                return [net(*[torch.from_numpy(a) for a in arrays]).numpy()]
        return run

    def latency(self, prepared, repeats, warmup):
        return sum(_stair(m) for m in prepared.model.modules() if isinstance(m, nn.Conv2d))


def _stair(m: nn.Conv2d) -> float:
    return math.ceil(m.out_channels / 8) * 8 * m.in_channels // m.groups * math.prod(m.kernel_size) / 1e3


def _vgg() -> nn.Module:
    torch.manual_seed(0)
    layers, c = [], 3
    for w in (24, 40, 56, 72):
        layers += [nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU()]
        c = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10)).eval()


@pytest.mark.parametrize("aim", [0.5, 0.3])
def test_target_latency_is_met_on_the_runtime_it_is_measured_on(monkeypatch, aim) -> None:
    monkeypatch.setitem(rt._base._BACKENDS, "staircase", Staircase())
    model, x = _vgg(), torch.randn(1, 3, 16, 16)
    small = secateur.prune(model, x, L1(), target_latency=aim, runtime="staircase")
    cost = [rt.prepare(m, x, "staircase").latency() for m in (model, small)]
    assert abs(cost[1] / cost[0] - aim) <= 0.05 * aim
    with pytest.raises(ValueError, match="exactly one of amount=, target_macs= and target_latency="):
        secateur.prune(model, x, L1(), target_macs=0.5, target_latency=0.5)
    with pytest.raises(rt.RuntimeMissing):
        monkeypatch.setitem(sys.modules, "openvino", None)
        secateur.prune(model, x, L1(), target_latency=0.5, runtime="openvino")


def test_a_latency_table_predicts_the_staircase_and_is_read_from_its_cache(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(rt._base._BACKENDS, "staircase", Staircase())
    model, x = _vgg(), torch.randn(1, 3, 16, 16)
    graph = secateur.trace(model, x)
    table = rt.latency_table(model, graph, "staircase", cache=tmp_path, progress=False)
    assert table.measured > 0 and table.hits == 0 and abs(table.fixed) < 1e-9
    assert table.curves["3"].out_widths == [8, 16, 24, 32, 40] and table.curves["3"].in_widths == [8, 16, 24]
    assert math.isclose(table.total(), rt.prepare(model, x, "staircase").latency())
    assert table.layer("3", 24, 33) == table.layer("3", 24, 40) > table.layer("3", 24, 32)   # one stair
    assert table.fitted
    calls = []   # the fit read back too: no model timed, the same table
    monkeypatch.setattr(rt._tables, "alternating", lambda *a, **k: calls.append(a) or [1.0, 1.0])
    again = rt.latency_table(model, graph, "staircase", cache=tmp_path, progress=False)
    assert again.measured == 0 and again.hits == table.measured and again.curves == table.curves
    assert not again.fitted and not calls and (again.scale, again.fixed) == (table.scale, table.fixed)
    other = copy.deepcopy(model)   # the same layers with another activation: no point to time, but fitted anew
    other[2] = nn.ReLU6()
    fresh = rt.latency_table(other, secateur.trace(other, x), "staircase", cache=tmp_path, progress=False)
    assert fresh.measured == 0 and fresh.fitted and len(calls) == 1


def test_a_noisy_curve_is_read_non_decreasing_from_below_so_a_slowed_point_is_dropped(monkeypatch, tmp_path) -> None:
    assert rt.monotone([0.5, 0.3, 0.7, 0.6]) == [0.3, 0.3, 0.6, 0.6]   # the spikes go
    assert rt.monotone([0.1, 0.2]) == [0.1, 0.2] and rt.monotone([0.3]) == [0.3]

    class Noisy(Staircase):   # 24 output channels timed slower than 32: the noise of a small layer
        def latency(self, prepared, repeats, warmup):
            convs = [m for m in prepared.model.modules() if isinstance(m, nn.Conv2d)]
            return super().latency(prepared, repeats, warmup) + (2.0 if [c.out_channels for c in convs] == [24] else 0)
    monkeypatch.setitem(rt._base._BACKENDS, "noisy", Noisy())
    model, x = _vgg(), torch.randn(1, 3, 16, 16)
    table = rt.latency_table(model, secateur.trace(model, x), "noisy", cache=tmp_path, progress=False)
    curve = table.curves["3"]   # 24 -> 40 channels: the point at 24 outputs is 2 ms too slow
    assert curve.out_ms == sorted(curve.out_ms)
    assert curve.out_ms[2] == curve.out_ms[3] == pytest.approx(32 * 24 * 9 / 1e3)   # 32's own time, not raised


def test_a_table_point_is_timed_despite_a_fast_algorithms_rounding_but_the_model_is_refused(monkeypatch, tmp_path) -> None:
    class Winograd(Staircase):   # a lone conv off by 0.3 % of its output's scale, as MNN's 3x3 were
        def load(self, model, inputs, folder, threads):
            run, off = super().load(model, inputs, folder, threads), 3e-3 * isinstance(model, nn.Conv2d)
            return lambda arrays: [o + off * np.abs(o).max() for o in run(arrays)]
    monkeypatch.setitem(rt._base._BACKENDS, "winograd", Winograd())
    model, x = _vgg(), torch.randn(1, 3, 16, 16)
    table = rt.latency_table(model, secateur.trace(model, x), "winograd", cache=tmp_path, progress=False)
    assert table.measured > 0 and table.curves["3"].out_widths == [8, 16, 24, 32, 40]
    with pytest.raises(rt.RuntimeMismatch, match=r"runtime 'winograd': output 0 differs from PyTorch by 0.003"):
        rt.prepare(model[0], x, "winograd")   # what is shipped is still checked at 1e-3


def test_a_table_point_is_timed_without_the_layout_conversions_a_model_makes_once(monkeypatch, tmp_path) -> None:
    class Converting(Staircase):   # each run also converts its input and output: 1 ms, as OpenVINO's reorders
        def latency(self, prepared, repeats, warmup):
            return super().latency(prepared, repeats, warmup) + 1.0

        def kernels(self, prepared, folder, threads, repeats):
            return super().latency(prepared, repeats, 0)
    monkeypatch.setitem(rt._base._BACKENDS, "staircase", Staircase())
    monkeypatch.setitem(rt._base._BACKENDS, "converting", Converting())
    model, x = _vgg(), torch.randn(1, 3, 16, 16)
    graph = secateur.trace(model, x)
    plain, converting = (rt.latency_table(model, graph, name, cache=tmp_path, progress=False)
                         for name in ("staircase", "converting"))
    assert plain.curves == converting.curves   # the conversions are not charged to the layers
    assert math.isclose(converting.fixed, 1.0) and math.isclose(converting.total(), plain.total() + 1.0)
    kernels = rt.cache_file("converting", 1, tmp_path)
    monkeypatch.delattr(Converting, "kernels")   # timed another way: measured again, not read back
    assert rt.cache_file("converting", 1, tmp_path) != kernels
    plain = rt.cache_file("staircase", 1, tmp_path)
    monkeypatch.setattr(Staircase, "timing", "-kept-memory")   # its runs timed another way: the same
    assert rt.cache_file("staircase", 1, tmp_path) != plain


def test_pytorch_tables_are_kept_apart_by_the_openmp_wait_policy(monkeypatch, tmp_path) -> None:
    backends = sys.modules["secateur.runtimes._backends"]   # the policy torch loaded with, read once
    monkeypatch.setattr(backends, "OMP_POLICY", "passive")   # threads sleep between ops: another speed at batch 1
    passive = rt.cache_file("torch", 2, tmp_path)
    assert rt.backend("torch").timing == "-kept-memory-omp-passive"
    monkeypatch.setattr(backends, "OMP_POLICY", "default")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")   # set after torch loaded: changes nothing, nor the key
    assert rt.backend("torch").timing == "-kept-memory-omp-default"
    assert rt.cache_file("torch", 2, tmp_path) != passive


def test_each_curve_is_mapped_onto_its_layers_time_inside_the_model_where_profiled(monkeypatch, tmp_path) -> None:
    class Fusing(Staircase):   # inside the model conv "6" runs at a quarter of its time alone (another algorithm)
        def times(self, model):
            return {name: _stair(m) * (0.25 if name == "6" else 1.0)
                    for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}

        def latency(self, prepared, repeats, warmup):
            return sum(self.times(prepared.model).values())

        def layer_times(self, prepared, folder, threads, repeats):
            return self.times(prepared.model)
    monkeypatch.setitem(rt._base._BACKENDS, "fusing", Fusing())
    model, x = _vgg(), torch.randn(1, 3, 16, 16)
    graph = secateur.trace(model, x)
    small = secateur.prune(model, x, L1(), amount={"0": 0.5, "3": 0.2, "6": 0.6}, round_to=8)
    measured = rt.prepare(small, x, "fusing").latency()
    table = rt.latency_table(model, graph, "fusing", cache=tmp_path, progress=False)
    assert table.inside == 4 and math.isclose(table.predict(small), measured) and abs(table.fixed) < 1e-9
    assert math.isclose(table.layer("6", 40, 56), 0.25 * _stair(model[6]))
    monkeypatch.setattr(Fusing, "layer_times", rt.Backend.layer_times)   # no profile: one scale for all
    blind = rt.latency_table(model, graph, "fusing", cache=tmp_path / "blind", progress=False)
    assert blind.inside == 0 and abs(blind.predict(small) / measured - 1) > 0.03


def test_a_weighted_onnx_node_is_matched_to_its_module_by_call_order_and_weight_shape(tmp_path) -> None:
    from secateur.io.onnx import export_onnx
    from secateur.runtimes._nodes import by_module, onnx_modules
    model, x = _net(), torch.randn(2, 3, 16, 16)
    export_onnx(model, x, tmp_path / "m.onnx")
    pairs = onnx_modules(tmp_path / "m.onnx", model, (x,))
    assert [module for *_, module in pairs] == ["0", "3", "6"]
    node, output, _ = pairs[2]
    assert by_module({node: 1.0, pairs[0][1]: 2.0, "other": 5.0}, pairs) == {"6": 1.0, "0": 2.0}
    other = _net()
    other[3] = nn.Conv2d(8, 8, 3)   # a full conv where the export has a depthwise one: nothing matched
    assert onnx_modules(tmp_path / "m.onnx", other, (x,)) == []


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.down = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(3, 8, 1)
        self.bn, self.fc = nn.BatchNorm2d(8), nn.Linear(8, 4)

    def forward(self, x):
        y = torch.relu(self.bn(self.b(torch.relu(self.a(x)))) + self.down(x))
        return self.fc(y.mean((2, 3)))


def test_an_operation_onnx_runtime_fused_and_renamed_is_traced_back_to_its_weighted_node(tmp_path) -> None:
    import onnx
    from secateur.io.onnx import export_onnx
    from secateur.runtimes._nodes import fused_owners
    torch.manual_seed(0)
    model, x = _Residual().eval(), torch.randn(1, 3, 8, 8)
    export_onnx(model, x, tmp_path / "model.onnx")
    nodes = onnx.load(tmp_path / "model.onnx").graph.node
    convs = [n for n in nodes if n.op_type == "Conv"]
    add = next(n for n in nodes if n.op_type == "Add" and not set(n.input) & {c.output[0] for c in convs[:1]})
    after_add = next(n for n in nodes if add.output[0] in n.input)   # the Relu a fused conv is named by
    x_name = nodes[0].input[0]   # the model's input: no weighted node behind it
    names = [after_add.output[0], convs[2].output[0], convs[0].name, x_name]
    owners = fused_owners(tmp_path / "model.onnx", names)
    # the Relu after the Add reaches conv b and the shortcut conv; the shortcut is named, so b is left
    assert owners == {after_add.output[0]: convs[1].name, convs[2].output[0]: convs[2].name, convs[0].name: convs[0].name}
    assert x_name not in owners
    if "onnxruntime" in rt.installed():   # ONNX Runtime's own profile, all four layers, its file removed
        p = rt.prepare(model, x, "onnxruntime", folder=tmp_path)
        assert set(rt.backend("onnxruntime").layer_times(p, tmp_path, 1, 3)) == {"a", "b", "down", "fc"}
        assert sorted(f.name for f in tmp_path.iterdir()) == ["model.onnx"]


def test_target_latency_plans_on_the_table_and_snaps_widths_to_the_stairs(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(rt._base._BACKENDS, "staircase", Staircase())
    monkeypatch.setenv("SECATEUR_CACHE", str(tmp_path))   # an empty cache: every layer is timed
    model, x = _vgg(), torch.randn(1, 3, 16, 16)
    calls = []
    measure = rt.prepare
    monkeypatch.setattr(rt._tables, "prepare", lambda *a, **k: calls.append(a) or measure(*a, **k))
    small = secateur.prune(model, x, L1(), target_latency=0.5, runtime="staircase")
    cost = [rt.prepare(m, x, "staircase").latency() for m in (model, small)]
    assert 0.475 <= cost[1] / cost[0] <= 0.525   # the table is exact here: within 5 % of the target
    widths = [m.out_channels for m in small.modules() if isinstance(m, nn.Conv2d)]
    assert all(w % 8 == 0 for w in widths) and widths != [24, 40, 56, 72], widths
    assert len(calls) > 10   # the layers were timed one by one


def test_profile_shares_add_up_and_the_biggest_conv_comes_first(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(rt._base._BACKENDS, "staircase", Staircase())
    model, x = _vgg(), torch.randn(1, 3, 16, 16)
    rows, total = rt.profile(model, secateur.trace(model, x), "staircase", progress=False)
    assert rows[0].module == "9" and rows[0].kind == "Conv2d"   # 56 -> 72 channels, 3x3: the most work
    assert math.isclose(sum(r.latency_share for r in rows), 1.0, rel_tol=1e-6)
    assert math.isclose(sum(r.macs_share for r in rows), 1.0, rel_tol=1e-6)
    assert rows[0].bytes == 4 * (56 * 256 + 72 * 256 + 72 * 56 * 9 + 72)   # activations in and out, weights, bias
    assert "compute" in rt.format_profile(rows, total, "staircase")
    rt.plot_profile(rows, tmp_path / "p.png", "staircase")
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_the_next_goal_follows_the_line_through_the_tries_nearest_the_aim() -> None:
    from secateur.prune import next_goal
    measured = lambda goal: 0.2 + 0.8 * goal   # noqa: E731  a runtime's fixed cost: affine, not proportional
    first = next_goal([(0.5, measured(0.5))], 0.5)
    assert math.isclose(first, 0.5 * 0.5 / 0.6)   # one try: scaled by aim / measured
    second = next_goal([(0.5, measured(0.5)), (first, measured(first))], 0.5)
    assert math.isclose(measured(second), 0.5)   # two: on the line, exactly
    assert next_goal([(0.4, 0.41), (0.5, 0.40)], 0.5) == 0.5 * 0.5 / 0.40   # a falling line: scaled instead
    assert next_goal([(0.5, 5.0)], 0.5) == 0.25 and next_goal([(0.8, 0.2)], 0.5) == 1.0   # at most halved or doubled
    cliff = [(0.5, 0.755), (0.331, 0.623), (0.173, 0.170)]   # bracketed: inside it, on the line through its ends
    assert math.isclose(next_goal(cliff, 0.5), 0.173 + (0.5 - 0.170) / (0.623 - 0.170) * (0.331 - 0.173))
    assert next_goal([(0.3, 0.499), (0.31, 0.99)], 0.5) == pytest.approx(0.3 + 0.1 * 0.01)   # never (almost) an end again


@pytest.mark.parametrize("ms, runs", [(2.0, 125), (100.0, 10), (500.0, 10), (1150.0, 5), (3000.0, 3)])
def test_a_long_models_timing_round_asks_fewer_runs_but_never_under_3(ms, runs) -> None:
    class Fixed:   # a model that runs in ``ms`` milliseconds
        def latency(self, repeats, warmup):
            return ms
    assert rt._base.repeats_for(Fixed(), 250.0, least=10, most=500, probe=5, least_ms=rt._base.ROUND_MS) == runs
    assert rt._base.repeats_for(Fixed(), 250.0, least=10, most=500, probe=5) == max(10, runs)


def test_each_ratio_loads_every_model_afresh_and_takes_the_median_over_sessions(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(rt._base._BACKENDS, "staircase", Staircase())
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    loads = []
    load = Staircase.load
    monkeypatch.setattr(Staircase, "load", lambda self, m, *a: loads.append(m) or load(self, m, *a))
    model, x = _vgg(), torch.randn(1, 3, 16, 16)
    small = secateur.prune(model, x, L1(), amount=0.5)
    cost = [rt.prepare(m, x, "staircase").latency() for m in (model, small)]
    loads.clear()
    ratios = rt.ratios_to(model, x, "staircase", sessions=3, rounds=2)
    assert ratios([small, model]) == [pytest.approx(cost[1] / cost[0]), 1.0]
    assert ratios([small])[0] == pytest.approx(cost[1] / cost[0])
    # the original: once for the probe, then 3 loads a call (as the base; 3 more as one of the first
    # call's models); no session of it is kept across calls
    assert sum(m is model for m in loads) == 1 + (3 + 3) + 3 and sum(m is small for m in loads) == 3 + 3
    del ratios
    assert not list(tmp_path.iterdir())   # its exports went with it
    with pytest.raises(ValueError, match="sessions=0 must be >= 1"):
        rt.ratios_to(model, x, "staircase", sessions=0)


class Busy(Staircase):
    """The staircase on a shared machine: each session loaded takes the next of ``extra`` milliseconds
    added to every run (a busy host's fixed cost, heavier on a small model)."""

    def __init__(self, extra):
        self.extra = iter(extra)

    def load(self, model, inputs, folder, threads):
        run = super().load(model, inputs, folder, threads)
        run.extra = next(self.extra, 0.0)
        return run

    def latency(self, prepared, repeats, warmup):
        return super().latency(prepared, repeats, warmup) + prepared.run.extra


def test_a_session_on_a_busy_machine_is_measured_again_and_else_warned_about(monkeypatch) -> None:
    model, x = _vgg(), torch.randn(1, 3, 16, 16)
    small = secateur.prune(model, x, L1(), amount=0.5)
    monkeypatch.setitem(rt._base._BACKENDS, "staircase", Staircase())
    cost = [rt.prepare(m, x, "staircase").latency() for m in (model, small)]
    busy = cost[0]   # the whole model runs twice as slow: past DISTURBED
    # loads: the probe's, then each session's (small, model); the first session is busy, the second not
    monkeypatch.setitem(rt._base._BACKENDS, "staircase", Busy([0.0, busy, busy, 0.0, 0.0]))
    monkeypatch.setattr(rt._base, "PAUSE", 0.0)
    assert rt.ratios_to(model, x, "staircase")([small]) == [pytest.approx(cost[1] / cost[0])]
    monkeypatch.setitem(rt._base._BACKENDS, "staircase", Busy([0.0] + [busy] * 2 * (1 + rt._base.RETRIES)))
    with pytest.warns(UserWarning, match="staircase: the model ran 2.00x slower than its fastest in 4 sessions"):
        got = rt.ratios_to(model, x, "staircase")([small])
    assert got == [pytest.approx((cost[1] + busy) / (cost[0] + busy))]   # the least busy, said to be off


class Cliff(Staircase):
    """The staircase, but a model costing less than ``below`` runs twice as fast (a runtime switching
    kernels): no cut lands within 5 % of a target just under the cliff."""

    name, below = "cliff", 0.0

    def latency(self, prepared, repeats, warmup):
        cost = super().latency(prepared, repeats, warmup)
        return cost / 2 if cost < self.below else cost


def test_a_latency_target_no_cut_meets_returns_the_closest_under_it_and_names_every_try(monkeypatch) -> None:
    model, x = _vgg(), torch.randn(1, 3, 16, 16)
    cliff = Cliff()
    monkeypatch.setitem(rt._base._BACKENDS, "cliff", cliff)
    cliff.below = 0.55 * rt.prepare(model, x, "cliff").latency()   # this instance's, not the class's
    with pytest.warns(RuntimeWarning, match=r"not within 5 % of target_latency=0.5; returning the closest cut "
                                            r"\(tries: 0\.\d+ \(planned for 0\.\d+\)") as said:
        small = secateur.prune(model, x, L1(), target_latency=0.5, runtime="cliff")
    message = str(said[0].message)
    got = float(re.search(r"measured (0\.\d+)", message).group(1))
    tries = [float(v) for v in re.findall(r"(0\.\d+) \(planned", message)]
    cost = [rt.prepare(m, x, "cliff").latency() for m in (model, small)]
    assert cost[1] / cost[0] == pytest.approx(got, abs=1e-3) and got < 0.5 and len(tries) >= 2
    assert got in tries and not any(0.475 <= r <= 0.525 for r in tries)
    assert got > 0.2   # the tries close in on the cliff from both sides (a line through the nearest two stopped at 0.170)


class Overhead(Staircase):
    """The staircase plus a fixed cost a run (a runtime's per-run overhead): a floor no cut goes under."""

    name, fixed = "overhead", 20.0

    def latency(self, prepared, repeats, warmup):
        return super().latency(prepared, repeats, warmup) + self.fixed


@pytest.mark.parametrize("runtime", ["staircase", "overhead"])
def test_a_latency_target_out_of_reach_returns_the_cut_keeping_the_most_near_the_fastest(monkeypatch, runtime):
    monkeypatch.setitem(rt._base._BACKENDS, runtime, Overhead() if runtime == "overhead" else Staircase())
    model, x = _vgg(), torch.randn(1, 3, 16, 16)
    graph = secateur.trace(model, x)
    table = rt.latency_table(model, graph, runtime, progress=False)
    with pytest.raises(secateur.TargetError) as caught:   # the planner alone: out of reach, and how far it gets
        secateur.plan.make_plan(graph, {g.index: torch.ones(g.size).numpy() for g in graph.prunable},
                                secateur.Target(macs=0.01), secateur.plan.layer_facts(graph), table)
    with pytest.warns(RuntimeWarning, match=r"target_latency=0.01 is past what the runtime reaches") as said:
        small = secateur.prune(model, x, L1(), target_latency=0.01, runtime=runtime)
    floor, got = (float(v) for v in re.findall(r"measured (0\.\d+)", str(said[0].message)))
    assert caught.value.reachable > 0.01 and floor <= got <= 1.05 * floor
    cost = [rt.prepare(m, x, runtime).latency() for m in (model, small)]
    assert cost[1] / cost[0] == pytest.approx(got, abs=1e-3)
    # the fastest cut on the table's grid (widths of 8): the knee keeps more of the MACs than it
    grid = secateur.prune(model, x, L1(), amount={n: 1 - 8 / w for n, w in zip(("0", "3", "6", "9"), (24, 40, 56, 72))})
    assert rt.prepare(grid, x, runtime).latency() / cost[0] == pytest.approx(floor, rel=0.02)
    macs = [secateur.measure(m, x, latency=False).macs for m in (small, grid)]
    if runtime == "overhead":   # a fixed cost flattens the last stairs: near the floor the knee keeps more
        assert macs[0] > 1.2 * macs[1]
    else:                       # no stair fits within 5 % of the floor: the floor cut itself
        assert macs[0] == macs[1]


def test_a_latency_plan_thins_no_group_past_half_while_half_can_meet_the_target(monkeypatch) -> None:
    monkeypatch.setitem(rt._base._BACKENDS, "staircase", Staircase())
    model, x = _vgg(), torch.randn(1, 3, 16, 16)
    full = [24, 40, 56, 72]

    def widths(m):
        return [c.out_channels for c in m.modules() if isinstance(c, nn.Conv2d)]
    assert all(2 * w >= f for w, f in zip(widths(secateur.prune(model, x, L1(), target_latency=0.5,
                                                                 runtime="staircase")), full))
    deep = secateur.prune(model, x, L1(), target_latency=0.1, runtime="staircase")   # half cannot reach it
    cost = [rt.prepare(m, x, "staircase").latency() for m in (model, deep)]
    assert abs(cost[1] / cost[0] - 0.1) <= 0.005 and any(2 * w < f for w, f in zip(widths(deep), full))
    with pytest.raises(ValueError, match="max_amount=0 must be in"):
        secateur.prune(model, x, L1(), target_latency=0.5, runtime="staircase", max_amount=0)
