import os
import warnings

# No GPU (CI, developer machines): Triton kernels run in the interpreter on CPU tensors. Triton reads
# this when triton.language is first imported, which torch may do, so it is set before importing torch.
if not os.path.exists("/dev/nvidiactl"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Rewrites are counted when a graph is compiled; a warm FX-graph/AOT cache would skip the pass and
# leave stats() empty, so tests always compile.
torch._inductor.config.fx_graph_cache = False
torch._functorch.config.enable_autograd_cache = False
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", message=".*lru_cache.*")

import inductor_moe  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_state():
    torch._dynamo.reset()
    inductor_moe.reset_stats()
    yield
    inductor_moe.disable()
    torch._dynamo.reset()
