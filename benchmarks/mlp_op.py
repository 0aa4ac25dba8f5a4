"""A torch MLP as a tensor op, for ``gpufeed bench model`` where the embeddings
example cannot be installed (a GPU machine that cannot reach a package index, or
cannot take the example's weights along): its weights come from a fixed seed, so
nothing is downloaded and every process builds the same model.

    PYTHONPATH=benchmarks gpufeed bench model --op mlp_op:mlp --json

Each message is 512 float32 values (2 KiB, a 4 KiB slot with its header); the
result is 512 float32 values. Three layers, 512 -> 4096 -> 4096 -> 512, about
21 M multiply-adds per message: on a GPU, a batch of 64 is a few kernels of
real work; on 2 CPU cores, tens of milliseconds.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from gpufeed.ops import Tensor, TensorOp

WIDTH = 512
HIDDEN = 4096


@cache
def net() -> Any:
    """The model, on the GPU when torch sees one. Built in the process that computes,
    on its first batch (the worker's ingest processes import this module for the
    op's length rule only)."""
    import torch

    torch.manual_seed(0)
    layers = torch.nn.Sequential(
        torch.nn.Linear(WIDTH, HIDDEN), torch.nn.GELU(),
        torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.GELU(),
        torch.nn.Linear(HIDDEN, WIDTH),
    )  # fmt: skip
    return layers.to("cuda" if torch.cuda.is_available() else "cpu").eval()


def forward(x: Any) -> Any:
    """One batch (n, 512) -> (n, 512). On the batched backend ``x`` is already on the
    device; called directly, it is a host tensor and goes over here."""
    import torch

    model = net()
    device = next(model.parameters()).device
    with torch.inference_mode():
        return model(x.to(device, non_blocking=True))


mlp = TensorOp("mlp", forward, Tensor("float32", (WIDTH,)), Tensor("float32", (WIDTH,)),
               framework="torch")  # fmt: skip
