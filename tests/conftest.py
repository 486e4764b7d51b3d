import os

import torch

# Triton kernels run under the interpreter on machines without a GPU (CI); this must be set
# before triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Two cores: keep torch from oversubscribing when tests spawn gloo ranks.
torch.set_num_threads(min(2, torch.get_num_threads()))
