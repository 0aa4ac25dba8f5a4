"""Command options generated from a settings dataclass, so each setting is stated once.

A settings field made with ``worker.config.setting`` carries its help text
(and, for a boolean with two spellings, its flag); its name gives the option
(``--max-batch``) and the environment variable (``GPUFEED_MAX_BATCH``), and
its default is the option's default. ``with_settings`` adds such options to a
command and passes their values on as keyword arguments.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import typer

from gpufeed.errors import ConfigError, InternalError

ENV_PREFIX = "GPUFEED_"


def _option(field: dataclasses.Field[Any], annotation: Any) -> inspect.Parameter:
    help_text = field.metadata.get("help")
    if help_text is None:
        raise InternalError(f"settings field {field.name!r} has no help text (use setting())")
    if field.default is dataclasses.MISSING:
        raise InternalError(f"settings field {field.name!r} needs a plain default")
    flag = field.metadata.get("flag")
    envvar = ENV_PREFIX + field.name.upper()
    info = typer.Option(*([flag] if flag else []), help=help_text, envvar=envvar)
    return inspect.Parameter(
        field.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=field.default,
        annotation=Annotated[annotation, info],
    )


def settings_parameters(cls: type, names: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """One option per field of ``cls`` (or only those in ``names``), in field order."""
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    known = {f.name for f in fields}
    unknown = set(names) - known
    if unknown:
        raise InternalError(f"{cls.__name__} has no settings {sorted(unknown)}")
    return [_option(f, hints[f.name]) for f in fields if not names or f.name in names]


def with_settings(cls: type, *names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command the options of ``cls``'s fields (all, or ``names``).

    The command takes them as ``**settings``; its own parameters come first in
    ``--help``, then the settings in field order.
    """

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        # eval_str: typer does not evaluate a __signature__'s string annotations itself.
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
        params = [*own, *settings_parameters(cls, names)]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            return command(**kwargs)

        # typer reads the signature (inspect follows __signature__ before __wrapped__).
        wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        return wrapper

    return decorate


# The options every command that talks to Redis takes.
REDIS_OPTIONS = ("redis_url", "tls_ca_cert", "tls_cert", "tls_key")


def fail(command: str, why: object) -> typer.Exit:
    """Say ``why`` on one line of stderr; the ``Exit`` (code 2) to raise."""
    typer.echo(f"gpufeed {command}: {why}", err=True)
    return typer.Exit(2)


@contextlib.contextmanager
def redis_session(command: str, settings: dict[str, Any]) -> Iterator[Any]:
    """A client for the Redis options in ``settings``. Whatever goes wrong with them, or
    with Redis (unreachable, credentials, TLS, permissions, a refused command), ends
    the command with one line saying what to check, and exit code 2: never a
    traceback for an operator's ordinary mistake."""
    import redis

    from gpufeed.connect import RedisTarget, describe_failure

    try:
        target = RedisTarget(
            url=settings["redis_url"], tls_ca_cert=settings["tls_ca_cert"],
            tls_cert=settings["tls_cert"], tls_key=settings["tls_key"],
        )  # fmt: skip
    except ConfigError as exc:
        raise fail(command, exc) from exc
    client = None
    try:
        client = target.connect()  # a cluster client asks for the slot map at once
        yield client
    except (redis.RedisError, redis.RedisClusterException) as exc:
        raise fail(command, describe_failure(exc, target)) from exc
    finally:
        if client is not None:
            client.close()
