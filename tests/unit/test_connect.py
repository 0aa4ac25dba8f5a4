"""Redis targets: which URLs and TLS options make sense, and what client they give."""

from __future__ import annotations

import pytest
import redis

from gpufeed.admin.acl import acl_rules
from gpufeed.connect import RedisTarget, slot_of
from gpufeed.errors import ConfigError
from gpufeed.worker.access import probes
from gpufeed.worker.config import WorkerConfig


@pytest.mark.parametrize(
    ("url", "cluster", "tls"),
    [
        ("redis://h:6379/0", False, False),
        ("rediss://h:6380/2", False, True),
        ("redis+cluster://h:7000", True, False),
        ("rediss+cluster://user:pw@h:7000/0", True, True),
        ("unix:///run/redis.sock", False, False),
    ],
)
def test_the_scheme_says_cluster_and_tls(url: str, cluster: bool, tls: bool) -> None:
    target = RedisTarget(url)
    assert (target.cluster, target.tls) == (cluster, tls)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "http://h"}, "scheme http:// is not one of"),
        ({"url": "h:6379"}, "is not one of"),
        ({"url": "redis://h", "tls_ca_cert": "ca.pem"}, "need a rediss:// URL"),
        ({"url": "rediss://h", "tls_cert": "c.pem"}, "go together"),
        ({"url": "redis+cluster://h:7000/3"}, "only database 0"),
    ],
)
def test_bad_targets_are_refused_with_the_reason(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RedisTarget(**kwargs)
    with pytest.raises(ConfigError, match=message):  # the worker's settings check it too
        WorkerConfig(redis_url=kwargs["url"], **{k: v for k, v in kwargs.items() if k != "url"})


def test_passwords_stay_out_of_logs() -> None:
    assert RedisTarget("rediss://gpufeed:s3cret@h:6380/0").safe_url == (
        "rediss://gpufeed:***@h:6380/0"
    )
    assert RedisTarget("redis://h:6379/0").safe_url == "redis://h:6379/0"


def test_tls_options_reach_the_connection_and_node_only_gives_a_plain_client() -> None:
    target = RedisTarget("rediss+cluster://h:7000", "ca.pem", "c.pem", "c.key")
    node = target.connect(node_only=True)  # connects lazily: nothing is dialled here
    assert isinstance(node, redis.Redis)
    kwargs = node.connection_pool.connection_kwargs
    assert (kwargs["ssl_ca_certs"], kwargs["ssl_certfile"], kwargs["ssl_keyfile"]) == (
        "ca.pem", "c.pem", "c.key",
    )  # fmt: skip
    assert (kwargs["host"], kwargs["port"]) == ("h", 7000)


def test_every_key_of_a_queue_shares_one_hash_slot() -> None:
    config = WorkerConfig(queue="images")
    slots = {slot_of(k) for k in (config.in_key, config.out_key, config.dead_key)}
    assert slots == {slot_of("gpufeed:{images}:reply:web-1")}
    assert slot_of("gpufeed:{other}:in") not in slots


def test_acl_rules_confine_each_role_to_its_keys() -> None:
    worker = acl_rules("worker", "images")
    assert worker[:3] == ["resetkeys", "resetchannels", "-@all"]
    assert worker[-2] == "~gpufeed:{images}:*" and "+xautoclaim" in worker
    # string commands for the consumer-name lease, on the lease keys alone
    assert worker[-1] == "(+get +set +del ~gpufeed:{images}:consumer:*)"
    assert "+set" not in worker
    assert "+cluster|slots" not in worker and "+cluster|slots" in acl_rules(
        "worker", "images", cluster=True
    )
    producer = acl_rules("producer", "images", reply="web-1")
    assert "%W~gpufeed:{images}:in" in producer
    mine = "~gpufeed:{images}:reply:web-1"
    assert f"(+xread +xrange +xrevrange +xlen +xtrim +del {mine} {mine}:*)" in producer
    assert not any(r.startswith("~") for r in producer)  # never read-write on any key
    with pytest.raises(ConfigError):
        acl_rules("admin", "images")


def test_the_worker_acl_grants_every_command_the_start_up_check_tries() -> None:
    """Two lists in two rooms: the commands a worker runs (its start-up probes) and the
    rules `gpufeed acl worker` prints. A probe the rules miss would fail every worker
    started under such a user."""
    config = WorkerConfig(queue="images", delete_acked=True, metrics_port=9400)
    rules = acl_rules("worker", "images")
    selector = rules[-1].strip("()").split()
    granted = set(rules) | set(selector)
    missing = [p.rule for p in probes(config) if f"+{p.rule}" not in granted]
    assert missing == []
    lease_keys = selector[-1].removeprefix("~").removesuffix("*")
    assert all(p.key.startswith(lease_keys) for p in probes(config)
               if f"+{p.rule}" in selector and p.key)  # fmt: skip
    assert all(p.key is None or p.key.startswith("gpufeed:{images}:") for p in probes(config))
