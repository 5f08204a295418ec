import pytest
import torch

import myq_kernels


def pytest_report_header(config):
    return ["myq backends:"] + [f"  {b}" for b in myq_kernels.backends().values()]


@pytest.fixture
def poisoned_outputs():
    """Fresh tensors from torch.empty / at::empty come filled with NaN (ints: max value),
    so an output element a kernel forgets to write fails the comparison."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(previous)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
