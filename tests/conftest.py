"""Session settings, applied before any test imports torch: OpenMP threads that wait passively (a
spinning thread steals its partner's core on a shared machine), and torch threads split between
pytest-xdist workers so that `pytest -n 2` on 2 cores does not run 4 busy threads; latency tables
cached in a temporary directory."""
import os

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))


@pytest.fixture(autouse=True, scope="session")
def _latency_cache(tmp_path_factory):
    """Latency tables are cached in pytest's temporary directory, never the user's cache."""
    os.environ["SECATEUR_CACHE"] = str(tmp_path_factory.mktemp("latency-cache"))
