"""The ``rankstream`` command: run a service, everything at once, or an operator task."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timezone

import structlog

from shared.embedded import EmbeddedServerError
from shared.logs import configure_logging
from shared.runtime import resolve_servers
from shared.settings import Settings, SettingsError

log = structlog.get_logger(__name__)


def _run_service(name: str, settings: Settings) -> int:
    from shared.lifecycle import run_until_stopped

    settings = resolve_servers(settings)
    if name == "ingest":
        from services.ingest.run import run_ingest as runner
    elif name == "ranker":
        from services.ranker.run import run_ranker as runner
    elif name == "persister":
        from services.persister.run import run_persister as runner
    else:
        from services.gateway.run import run_gateway as runner
    run_until_stopped(lambda: runner(settings))
    return 0


def _up(_args: argparse.Namespace, settings: Settings) -> int:
    from services.supervisor import run_up

    return run_up(settings)


def _migrate(_args: argparse.Namespace, settings: Settings) -> int:
    from shared.database import migrate_url

    settings = resolve_servers(settings)
    applied = asyncio.run(migrate_url(settings.database_url))
    print(f"applied migrations: {applied or 'none pending'}")
    return 0


async def _with_connection(settings: Settings, work: Callable) -> object:
    import asyncpg

    connection = await asyncpg.connect(settings.database_url, timeout=10)
    try:
        return await work(connection)
    finally:
        await connection.close(timeout=5)


def _keys(args: argparse.Namespace, settings: Settings) -> int:
    from services.keys_command import create_audited, list_audited, revoke_audited
    from shared.api_keys import InvalidKeyRequest, KeyKind

    settings = resolve_servers(settings)
    if args.keys_command == "create":
        kind = KeyKind(args.kind)
        if (kind is KeyKind.DEVICE) != (args.user is not None):
            raise SettingsError("--user is required with --kind device and not allowed with other kinds")
        try:
            expires_at = datetime.fromisoformat(args.expires) if args.expires else None
        except ValueError:
            raise SettingsError(f"--expires {args.expires!r} is not an RFC 3339 instant; write one such as 2027-01-01T00:00:00Z") from None
        if expires_at is not None and expires_at.tzinfo is None:
            raise SettingsError("--expires needs a time zone offset, for example 2027-01-01T00:00:00Z")
        try:
            key, text = asyncio.run(_with_connection(settings, lambda c: create_audited(c, args.name, kind, args.user, expires_at)))
        except InvalidKeyRequest as error:
            raise SettingsError(f"--{'user' if error.field == 'user_id' else error.field}: {error}") from None
        log.info("api key created", key_id=key.id, name=key.name, kind=key.kind.value)
        print(f"created {key.kind.value} key {key.id} ({key.name}); store it now, it is not shown again:")
        print(text)
    elif args.keys_command == "list":
        for key in asyncio.run(_with_connection(settings, list_audited)):
            if key.revoked_at is not None:
                state = "revoked"
            elif key.usable_at(datetime.now(timezone.utc)):
                state = "active"
            else:
                state = "expired"
            expires = key.expires_at.isoformat() if key.expires_at else "-"
            print(f"{key.id}\t{key.name}\t{key.kind.value}\t{key.user_id or '-'}\t{state}\t{key.created_at.isoformat()}\t{expires}")
    else:
        revoked = asyncio.run(_with_connection(settings, lambda c: revoke_audited(c, args.id)))
        if not revoked:
            print(f"no active key has id {args.id}", file=sys.stderr)
            return 1
        log.info("api key revoked", key_id=args.id)
        print(f"revoked key {args.id}")
    return 0


def _simulate(args: argparse.Namespace, settings: Settings) -> int:
    from services.simulate import run_simulation

    return asyncio.run(run_simulation(settings, athletes=args.athletes, rate=args.rate, duration_s=args.duration, key=args.key, seed=args.seed))


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from services.status import run_status

    # Status reads only Redis, so a Redis URL alone is enough.
    settings = settings if settings.redis_url else resolve_servers(settings)
    return asyncio.run(run_status(settings, as_json=args.json))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rankstream", description="Real-time leaderboards for fitness apps.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in (
        ("ingest", "run the HTTP ingest and read API (RANKSTREAM_HTTP_PORT)"),
        ("ranker", "run one ranker consumer"),
        ("persister", "run one persister consumer"),
        ("gateway", "run the WebSocket gateway (RANKSTREAM_WS_PORT)"),
    ):
        commands.add_parser(name, help=text).set_defaults(handler=lambda _a, s, n=name: _run_service(n, s))
    commands.add_parser("up", help="start embedded servers (unless URLs are set) and all four services").set_defaults(handler=_up)
    commands.add_parser("migrate", help="apply pending database migrations").set_defaults(handler=_migrate)

    keys = commands.add_parser("keys", help="create, list or revoke API keys")
    keys.set_defaults(handler=_keys)
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = key_commands.add_parser("create", help="create a key and print it as the last line")
    create.add_argument("--name", required=True, help="a label for the key, such as the app or device")
    create.add_argument("--kind", choices=["device", "server", "admin"], default="server", help="what the key may do (default: server)")
    create.add_argument("--user", help="the athlete a device key posts for")
    create.add_argument("--expires", help="expiry instant in RFC 3339, such as 2027-01-01T00:00:00Z")
    key_commands.add_parser("list", help="list keys (never the key text)")
    revoke = key_commands.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("id", type=int)

    simulate = commands.add_parser("simulate", help="post a realistic crowd of athletes through the HTTP API")
    simulate.add_argument("--athletes", type=int, default=50, help="number of athletes (default 50)")
    simulate.add_argument("--rate", type=float, default=20.0, help="events per second (default 20)")
    simulate.add_argument("--duration", type=float, default=None, help="seconds to run (default: until Ctrl-C)")
    simulate.add_argument("--key", help="API key to post with (default: RANKSTREAM_API_KEY, else a new server key)")
    simulate.add_argument("--seed", type=int, default=None, help="random seed, for repeatable runs")
    simulate.set_defaults(handler=_simulate)

    from services.import_command import add_import_parser

    add_import_parser(commands)

    from services.dlq_command import add_dlq_parser

    add_dlq_parser(commands)

    from services.boards_command import add_boards_parser
    from services.rebuild_command import add_rebuild_parser

    add_boards_parser(commands)
    add_rebuild_parser(commands)

    status = commands.add_parser("status", help="show consumer groups, stream length, dead letters, Redis memory and board periods")
    status.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    status.set_defaults(handler=_status)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        configure_logging(settings.log_level, settings.log_format, service=args.command)
        code = args.handler(args, settings)
    except SettingsError as error:
        print(f"rankstream: {error}", file=sys.stderr)
        code = 2
    except EmbeddedServerError as error:
        # Most often a server of an earlier run still uses the data directory.
        print(f"rankstream: {error}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
