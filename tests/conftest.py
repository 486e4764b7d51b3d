import os

import torch

# Triton kernels run under the interpreter on machines without a GPU (CI); this must be set
# before triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Two cores: keep torch from oversubscribing when tests spawn gloo ranks.
torch.set_num_threads(min(2, torch.get_num_threads()))

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _hermetic_cache(tmp_path_factory):
    """Prepared datasets and tokenizers go to a per-session directory, not the user's cache."""
    if "GROW_MEGATRON_CACHE" not in os.environ:
        os.environ["GROW_MEGATRON_CACHE"] = str(tmp_path_factory.mktemp("gm_cache"))
    yield


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests on one torch thread (restored afterwards)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
