"""Where Redis is and how to reach it: one server or a cluster, plain or TLS.

A URL names the server: ``redis://`` or ``rediss://`` (TLS) for one server,
``redis+cluster://`` or ``rediss+cluster://`` for Redis Cluster, where the
host is any node (redis-py's ``RedisCluster`` discovers the others). TLS
takes a CA bundle and, for servers that check clients (``tls-auth-clients``),
a client certificate and key; they are options rather than URL parameters so
that they can come from ``GPUFEED_TLS_*`` variables like every other setting.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.crc import key_slot

from gpufeed.errors import ConfigError

SCHEMES = {
    "redis": (False, False),
    "rediss": (False, True),
    "redis+cluster": (True, False),
    "rediss+cluster": (True, True),
    "unix": (False, False),
}

# Either a single-server or a cluster client: both take the same commands.
Client = Any


@dataclass(frozen=True)
class RedisTarget:
    url: str = "redis://127.0.0.1:6379/0"
    tls_ca_cert: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    def __post_init__(self) -> None:
        scheme = urlsplit(self.url).scheme
        if scheme not in SCHEMES:
            raise ConfigError(
                f"--redis-url: scheme {scheme + '://' if scheme else '(none)'} is not one of "
                + ", ".join(f"{s}://" for s in SCHEMES)
            )
        if not self.tls and (self.tls_ca_cert or self.tls_cert or self.tls_key):
            raise ConfigError("--tls-ca-cert/--tls-cert/--tls-key need a rediss:// URL")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together: a client certificate and key")
        parts = urlsplit(self.url)
        try:
            parts.port  # noqa: B018 -- raises for a port out of range or not a number
        except ValueError as exc:
            raise ConfigError(f"--redis-url: bad port: {exc}") from None
        db = parts.path.strip("/")
        if scheme != "unix" and db and not db.isdigit():
            # redis-py would quietly take database 0
            raise ConfigError(
                f"--redis-url: database {db!r} is not a number, as in redis://HOST:6379/0"
            )
        if self.cluster and db not in ("", "0"):
            raise ConfigError("--redis-url: Redis Cluster has only database 0")

    @property
    def cluster(self) -> bool:
        return SCHEMES[urlsplit(self.url).scheme][0]

    @property
    def tls(self) -> bool:
        return SCHEMES[urlsplit(self.url).scheme][1]

    @property
    def safe_url(self) -> str:
        """The URL without its password, for logs."""
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        netloc = f"{parts.username or ''}:***@{parts.hostname}" + (
            f":{parts.port}" if parts.port else ""
        )
        return urlunsplit(parts._replace(netloc=netloc))

    def connect(self, *, node_only: bool = False, **options: Any) -> Client:
        """A client for this target; ``options`` go to redis-py (timeouts, retry, …).

        ``node_only``: a plain client for the one node a cluster URL names.
        """
        options.update(self._tls_options())
        if not self.cluster:
            return redis.Redis.from_url(self.url, **options)
        url = self._node_url()
        if node_only:
            return redis.Redis.from_url(url, **options)
        return redis.RedisCluster.from_url(url, **options)

    def _tls_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.tls_ca_cert:
            options["ssl_ca_certs"] = self.tls_ca_cert
        if self.tls_cert:
            options["ssl_certfile"] = self.tls_cert
            options["ssl_keyfile"] = self.tls_key
        return options

    def connect_async(self, **options: Any) -> Any:
        """An asyncio client for this target (``redis.asyncio``), as ``connect``."""
        import redis.asyncio as aioredis

        options.update(self._tls_options())
        if not self.cluster:
            return aioredis.Redis.from_url(self.url, **options)
        return aioredis.RedisCluster.from_url(self._node_url(), **options)

    def _node_url(self) -> str:
        parts = urlsplit(self.url)
        return urlunsplit(parts._replace(scheme=parts.scheme.removesuffix("+cluster"), path=""))


def slot_of(key: bytes | str) -> int:
    """The Redis Cluster hash slot of ``key`` (its hash tag's, if it has one)."""
    return int(key_slot(key if isinstance(key, bytes) else key.encode()))


def cluster_reply_check(key: str) -> Callable[[bytes], str | None]:
    """A check of ``reply_to`` stream names for a queue on Redis Cluster: the commit
    script writes every stream in one call, so a reply stream must share the hash
    slot of ``key`` (any key of the queue). The check returns why not, or None."""
    slot = slot_of(key)

    def check(reply_to: bytes) -> str | None:
        if slot_of(reply_to) == slot:
            return None
        return (
            f"reply_to {reply_to.decode(errors='replace')!r} is in another Redis Cluster "
            "hash slot than the queue: give it the queue's hash tag, as in "
            "gpufeed:{QUEUE}:reply:NAME"
        )

    return check


def describe_failure(exc: Exception, target: RedisTarget) -> str:
    """One line for an operator: what went wrong talking to Redis, and what to check."""
    where = target.safe_url
    if isinstance(exc, redis.AuthenticationError) or "WRONGPASS" in str(exc):
        return f"Redis at {where} refused the credentials ({exc}): check the user and " \
               "password in --redis-url"  # fmt: skip
    if isinstance(exc, redis.ConnectionError) and is_tls_failure(exc):
        return f"TLS handshake with {where} failed ({exc}): check --tls-ca-cert, and " \
               "--tls-cert/--tls-key if the server checks clients"  # fmt: skip
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return f"the Redis user may not do this ({exc}): `gpufeed acl` prints the rules it needs"
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, redis.RedisClusterException)):
        return f"cannot reach Redis at {where} ({exc}): is the server up, and are the host " \
               "and port right?"  # fmt: skip
    if isinstance(exc, redis.ResponseError):
        return f"Redis at {where} refused the command: {exc}"
    return f"Redis at {where}: {type(exc).__name__}: {exc}"


def is_tls_failure(exc: BaseException) -> bool:
    """Whether a connection error comes from a TLS handshake (a bad CA or
    certificate: retrying will not help), looking through chained causes."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLError) or "SSL" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
