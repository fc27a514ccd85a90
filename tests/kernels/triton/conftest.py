"""Triton route/sort kernels: on CPU tensors under the Triton interpreter where there is no GPU (the env var
must be set before Triton is first imported), on CUDA tensors, compiled, on a GPU machine."""
import importlib.util
import os

if not os.path.exists("/dev/nvidiactl"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

collect_ignore_glob = [] if importlib.util.find_spec("triton") is not None else ["test_*.py"]
