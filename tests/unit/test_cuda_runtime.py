"""How CUDA's statuses and errors become gpufeed's, without a GPU: the classification
both GPU backends and the persistent device side share (gpu/cuda_runtime.py)."""

from __future__ import annotations

import pytest
from fake_cupy import CUDARuntimeError, FakeCuPy

from gpufeed.errors import BackendError, ConfigError, DeviceLost
from gpufeed.gpu.cuda_runtime import classify, cooperative_launch_refused, work_done
from gpufeed.ops import OpTable

CP = FakeCuPy(OpTable.for_worker("echo", 48), lambda slots: None)


def test_a_query_status_says_done_not_yet_or_raises_for_the_error() -> None:
    assert work_done(CP, 0) is True
    assert work_done(CP, 600) is False  # cudaErrorNotReady: still running
    for status in (700, 719, 2):
        with pytest.raises(CUDARuntimeError) as raised:
            work_done(CP, status)
        assert raised.value.status == status


@pytest.mark.parametrize(("status", "kind"), [(719, DeviceLost), (700, DeviceLost),
                                              (701, BackendError), (2, BackendError)])  # fmt: skip
def test_a_sticky_error_loses_the_device_and_any_other_may_be_retried(status, kind) -> None:
    got = classify(CUDARuntimeError(status), "copying requests to the device")
    assert type(got) is kind
    assert str(got).startswith("copying requests to the device")


def test_a_refused_cooperative_launch_says_why_and_what_to_do() -> None:
    refused = cooperative_launch_refused(CUDARuntimeError(720), blocks=133, threads=128)
    assert isinstance(refused, ConfigError)
    assert "133 blocks of 128 threads cannot all be resident" in str(refused)
    assert "--backend batched" in str(refused)
    assert cooperative_launch_refused(CUDARuntimeError(719), 133, 128) is None
    assert cooperative_launch_refused(ValueError("no status"), 133, 128) is None
