"""Priority levels: how a batch is shared among levels, and crash-log names."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gpufeed.worker.levels import crash_id, parse_crash_id, split


@given(st.integers(1, 4096), st.integers(1, 16), st.floats(0, 0.99))
def test_a_split_hands_out_the_whole_room_top_level_first(room, levels, share) -> None:
    counts = split(room, levels, share)
    assert len(counts) == levels and sum(counts) == room and min(counts) >= 0
    assert counts[0] >= max(counts), "the highest level gets the most"
    if share > 0 and room >= levels:
        assert min(counts) >= 1, "every lower level moves, however small the batch"


def test_lower_levels_share_what_is_kept_for_them() -> None:
    assert split(1024, 2, 0.05) == [973, 51]
    assert split(1024, 3, 0.1) == [1024 - 2 * 51, 51, 51]
    assert split(16, 2, 0.25) == [12, 4]
    assert split(1, 3, 0.5) == [1, 0, 0]  # too small to share: the top takes it
    assert split(100, 2, 0.0) == [100, 0]


@given(st.integers(0, 15), st.binary(min_size=1, max_size=30))
def test_crash_names_round_trip(level, entry_id) -> None:
    entry_id = entry_id.replace(b"/", b"-")
    assert parse_crash_id(crash_id(level, entry_id)) == (level, entry_id)
    assert crash_id(0, entry_id) == entry_id, "level 0 keeps the names crash logs had"


def test_with_no_share_kept_a_lower_level_still_gets_what_the_top_leaves() -> None:
    import fakeredis

    from gpufeed.worker.config import WorkerConfig
    from gpufeed.worker.levels import LevelReader, make_levels

    server = fakeredis.FakeServer()
    client = fakeredis.FakeRedis(server=server)
    config = WorkerConfig(queue="q", priorities=2, lowest_share=0.0)
    for stream in config.level_keys:
        client.xgroup_create(stream, config.group, id="0", mkstream=True)
    for i in range(100):
        client.xadd(config.level_keys[0], {"data": b"low %d" % i})
    levels = make_levels(client, config, "c", lambda _: None)
    reader = LevelReader(client, config, "c", levels)
    for level in levels:
        level.reader.read_id = ">"  # past the (empty) history
    reads = reader.read(50, None, lambda _: set())
    assert [(k, len(e)) for k, e in reads] == [(0, 50)]
    assert reader.more_waiting
