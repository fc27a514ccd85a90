"""Does plain torch.compile (no inductor_moe) of the tiny Qwen3-MoE generate() compile on this machine's
CPU? Tells an Inductor CPU-codegen failure of the installed torch from one caused by the rewrite."""
import sys

import torch

sys.path.insert(0, ".")
from tests.utils import tiny_qwen3_moe  # noqa: E402

import inductor_moe  # noqa: E402

for use_moe in (False, True):
    torch._dynamo.reset()
    model = tiny_qwen3_moe(torch.float32)
    prompt = torch.randint(0, 96, (2, 6), generator=torch.Generator().manual_seed(3))
    if use_moe:
        inductor_moe.enable()
    model.forward = torch.compile(model.forward)
    try:
        with torch.no_grad():
            model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
        print(f"inductor_moe={use_moe}: ok")
    except Exception as e:  # report, do not stop
        print(f"inductor_moe={use_moe}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    inductor_moe.disable()
