"""One result status, three encodings: the Lua table, the CUDA header and the wire name
all say what ``Status`` says."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from gpufeed.errors import InternalError
from gpufeed.ops import cuda_file
from gpufeed.packing import ResultEntry, Status


def test_the_commit_scripts_status_table_is_status() -> None:
    lua = resources.files("gpufeed.worker").joinpath("commit.lua").read_text()
    (table,) = re.findall(r"local STATUS = \{(.*?)\}", lua)
    pairs = dict(re.findall(r"\[(\d+)\] = '(\w+)'", table))
    assert {int(code): name for code, name in pairs.items()} == {
        ord(s.code): s.value for s in Status
    }


def test_the_device_headers_status_constants_are_status_flags() -> None:
    header = cuda_file("gpufeed_op.cuh")
    constants = dict(re.findall(r"constexpr uint16_t STATUS_(\w+) = (\d+);", header))
    assert {name: int(value) for name, value in constants.items()} == {
        "OK": Status.OK.flag,
        "ERROR": Status.ERROR.flag,
    }


@pytest.mark.parametrize("flag", [0, 1, 2, 7, 65535])
def test_any_flag_but_ok_reads_as_an_error(flag: int) -> None:
    assert Status.of_flag(flag) is (Status.OK if flag == 0 else Status.ERROR)


def test_a_status_is_its_wire_name() -> None:
    entry = ResultEntry(b"1-0", Status.EXPIRED, b"too late")
    assert entry.status == "expired" and f"{entry.status}" == "expired"
    assert not entry.plain and entry.reason == "too late"
    assert [s.dead_letter for s in Status] == [False, True, False]


def test_an_expired_message_has_no_slot_flag() -> None:
    with pytest.raises(InternalError, match="never carries status 'expired'"):
        Status.EXPIRED.flag  # noqa: B018
