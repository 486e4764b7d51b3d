"""What every kernel test module shares: the device, the skip rule, and poisoned outputs."""

import pytest
import torch

from grow_megatron.kernels import _utils, triton_available
from grow_megatron.kernels.testing import poisoned_empty

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

requires_triton = pytest.mark.skipif(
    not triton_available("cpu") and not torch.cuda.is_available(), reason="needs CUDA or TRITON_INTERPRET=1"
)


@pytest.fixture
def poison_outputs(monkeypatch):
    """Kernel outputs start as NaN, so an element a kernel forgets to write fails the test."""
    monkeypatch.setattr(_utils, "empty", poisoned_empty)


# Apply with: pytestmark = KERNEL_TEST_MARKS (and import poison_outputs into the module).
KERNEL_TEST_MARKS = [requires_triton, pytest.mark.usefixtures("poison_outputs")]
