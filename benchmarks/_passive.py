"""Imported first (before torch) by the benchmarks that may time on a shared machine: OpenMP threads
wait passively.

OpenMP threads that spin while they wait are what make 2-thread timings fast on an idle machine, but
with other processes on the cores a spinning thread steals the time slice its partner needs: a
resnet18 forward at 64 px took 0.8 s instead of 0.03 s here. Passive waiting keeps timings sane on a
shared machine. It only takes effect if this module is imported before torch; an OMP_WAIT_POLICY
already set in the environment wins. Not for ``latency.py``: a passive thread wakes for every
operation, which a small model at batch 1 pays on each (ResNet-56 on Fashion-MNIST: 19.7 ms a run
against 4.3 with the default policy), and a deployed process does not run that way.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
