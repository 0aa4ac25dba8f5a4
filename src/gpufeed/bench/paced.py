"""The op ``gpufeed bench scheduling`` serves: an echo whose batch takes a known time.

A batch of n takes ``BATCH_S + MESSAGE_S * n``, spent sleeping, as a GPU's
launch, copies and kernel are spent off the host's cores. Loaded by the
worker as ``--op gpufeed.bench.paced:paced``.
"""

from __future__ import annotations

import time

import numpy as np
import numpy.typing as npt

from gpufeed.ops import Echo

BATCH_S = 0.005  # the fixed cost of one batch
MESSAGE_S = 0.00005  # and the cost of each message in it


class Paced(Echo):
    """Echo taking ``BATCH_S + MESSAGE_S * n`` per batch of n."""

    name = "paced"

    def cpu(
        self, payloads: npt.NDArray[np.uint8], lens: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
        time.sleep(BATCH_S + MESSAGE_S * len(lens))
        return self.reference(payloads, lens)


paced = Paced()
