"""`agentserver`: serve, migrate, and the operator commands for tenants, keys,
tokens, fees and permissions. Every command reads the same AGENTSERVER_* settings
as the server."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

from agentserver import logs
from agentserver.app import App, bootstrap_demo, build_app, prepare_database
from agentserver.config import Settings
from agentserver.domain.errors import DomainError, InvalidArgument
from agentserver.domain.identity import PLATFORM_DEFAULT_SCOPES, TENANT_DEFAULT_SCOPES

log = logging.getLogger("agentserver")
CREDENTIALS_FILE = Path("var/demo-credentials.env")


def _run(fn: Callable[[App, argparse.Namespace], Awaitable[int]], args: argparse.Namespace) -> int:
    async def main() -> int:
        settings = Settings.from_env()
        app = await build_app(settings)
        try:
            if args.command != "migrate":
                await prepare_database(app)
            return await fn(app, args)
        except DomainError as err:
            print(f"error: {err.message}", file=sys.stderr)
            return 2
        finally:
            await app.close()

    return asyncio.run(main())


async def cmd_serve(app: App, args: argparse.Namespace) -> int:
    from agentserver.entrypoints.grpc.server import serve_until_signalled

    if app.settings.bootstrap_demo and app.settings.is_sqlite:
        keys = await bootstrap_demo(app, CREDENTIALS_FILE)
        if keys:
            banner = (
                "\nA demo tenant was created on this new embedded database. Keys (shown once,"
                f" also saved to {CREDENTIALS_FILE}):\n"
                + "".join(f"  {k} = {v}\n" for k, v in keys.items())
            )
            print(banner, file=sys.stderr, flush=True)
    await serve_until_signalled(app, args.listen or app.settings.listen)
    return 0


async def cmd_migrate(app: App, args: argparse.Namespace) -> int:
    from agentserver.adapters.db.migrate import upgrade

    await upgrade(app.engine, args.revision)
    print(f"database at {args.revision}")
    return 0


async def cmd_tenant_create(app: App, args: argparse.Namespace) -> int:
    await app.admin.create_tenant(args.tenant_id, args.name or args.tenant_id, app.clock.now())
    print(f"tenant {args.tenant_id} created")
    return 0


async def cmd_key_create(app: App, args: argparse.Namespace) -> int:
    if bool(args.tenant) == bool(args.platform):
        print("error: give exactly one of --tenant ID or --platform", file=sys.stderr)
        return 2
    default = PLATFORM_DEFAULT_SCOPES if args.platform else TENANT_DEFAULT_SCOPES
    scopes = args.scopes.split(",") if args.scopes else list(default)
    if args.user is not None and args.platform:
        print("error: --user binds a tenant key to a person; not with --platform", file=sys.stderr)
        return 2
    now = app.clock.now()
    expires_at = now + _duration(args.expires_in) if args.expires_in else None
    key_id, key = await app.admin.create_key(
        None if args.platform else args.tenant,
        scopes,
        args.description,
        now,
        expires_at=expires_at,
        user_id=args.user,
    )
    if args.quiet:
        print(key)
    else:
        until = f"\nexpires: {expires_at.isoformat()}" if expires_at else ""
        bound = f"\nspeaks for: {args.user} only" if args.user is not None else ""
        print(
            f"key id: {key_id}\nscopes: {','.join(scopes)}{bound}{until}\nkey (shown once): {key}"
        )
    return 0


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> timedelta:
    """`90d`, `12h`, `30m` or `45s` as a timedelta."""
    number, unit = text[:-1], text[-1:].lower()
    if unit not in _UNITS or not number.isdigit() or int(number) <= 0:
        raise InvalidArgument.field(
            "--expires-in", "must be a positive whole number with s, m, h or d (e.g. 90d)"
        )
    return timedelta(seconds=int(number) * _UNITS[unit])


async def cmd_key_revoke(app: App, args: argparse.Namespace) -> int:
    await app.admin.revoke_key(args.key_id, app.clock.now())
    print(f"key {args.key_id} revoked (takes effect within 10 s on running servers)")
    return 0


async def cmd_key_list(app: App, args: argparse.Namespace) -> int:
    for key in await app.admin.list_keys(args.tenant):
        print(json.dumps(key, default=str))
    return 0


async def cmd_tokens_add(app: App, args: argparse.Namespace) -> int:
    entry, balance = await app.ledger.add_tokens(
        args.tenant, args.location, args.amount, args.request_id or str(uuid.uuid4()), args.note
    )
    print(f"added {entry.tokens} tokens; available now {balance.available}")
    return 0


async def cmd_tokens_balance(app: App, args: argparse.Namespace) -> int:
    b = await app.ledger.balance(args.tenant, args.location)
    print(
        json.dumps(
            {
                "total": b.total,
                "used": b.used,
                "reserved": b.reserved,
                "available": b.available,
                "arrears": b.arrears,
            }
        )
    )
    return 0


async def cmd_fees_charge(app: App, args: argparse.Namespace) -> int:
    for r in await app.ledger.charge_monthly_fees():
        state = "already charged" if r.already_charged else f"charged {r.charged}"
        owed = f", {r.arrears} in arrears" if r.arrears and not r.already_charged else ""
        print(f"{r.tenant_id} {r.month}: {state}{owed}")
    return 0


async def cmd_sweep(app: App, args: argparse.Namespace) -> int:
    print(f"expired {await app.ledger.sweep_expired()} reservations")
    days = app.settings.audit_retention_days
    if days > 0:
        pruned = await app.prune_audit(batches=1_000_000)
        print(f"pruned {pruned} audit events older than {days:g} days")
    return 0


async def cmd_perm_set(app: App, args: argparse.Namespace) -> int:
    await app.admin.set_rule(args.tenant, args.scope, args.subject, args.effect, args.permission)
    print(f"{args.effect} {args.permission} for {args.scope} {args.subject}".rstrip())
    return 0


async def cmd_perm_remove(app: App, args: argparse.Namespace) -> int:
    removed = await app.admin.remove_rule(
        args.tenant, args.scope, args.subject, args.effect, args.permission
    )
    print("removed" if removed else "no such rule")
    return 0 if removed else 1


async def cmd_perm_list(app: App, args: argparse.Namespace) -> int:
    for scope, subject, effect, permission in await app.admin.rules(args.tenant):
        print(f"{scope:9} {subject or '-':20} {effect:5} {permission}")
    return 0


async def cmd_channel_set(app: App, args: argparse.Namespace) -> int:
    config = json.loads(args.config or "{}")
    secrets = json.loads(args.secrets or "{}")
    await app.set_channel(args.tenant, args.channel, config, secrets)
    print(
        f"{args.channel} settings stored for {args.tenant}"
        + (" (secrets encrypted)" if secrets else "")
    )
    return 0


async def cmd_policy_set(app: App, args: argparse.Namespace) -> int:
    from agentserver.domain.policy_source import policy_settings

    policy = json.loads(args.policy)
    policy_settings(policy)  # refuse what the server could not read
    await app.admin.set_tenant_policy(args.tenant, policy)
    print(f"policy stored for {args.tenant}")
    return 0


def cmd_envoy_config(args: argparse.Namespace) -> int:
    from agentserver.entrypoints.web.envoy import render_envoy

    settings = Settings.from_env()
    print(
        render_envoy(
            upstream=args.upstream or settings.listen,
            listen=args.listen,
            admin=args.admin,
            origins=settings.web_origins,
        ),
        end="",
    )
    return 0


def cmd_secret_key(args: argparse.Namespace) -> int:
    from agentserver.adapters.secrets import generate_key

    print(generate_key())
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agentserver", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the gRPC server")
    s.add_argument("--listen", help="host:port (default AGENTSERVER_LISTEN or 127.0.0.1:50051)")
    s.set_defaults(fn=cmd_serve)

    s = sub.add_parser("migrate", help="upgrade the database schema (Alembic)")
    s.add_argument("revision", nargs="?", default="head")
    s.set_defaults(fn=cmd_migrate)

    tenants = sub.add_parser("tenant", help="manage tenants").add_subparsers(
        dest="sub", required=True
    )
    s = tenants.add_parser("create", help="create a tenant and its wallet")
    s.add_argument("tenant_id")
    s.add_argument("--name", default="")
    s.set_defaults(fn=cmd_tenant_create)

    keys = sub.add_parser("key", help="manage API keys").add_subparsers(dest="sub", required=True)
    s = keys.add_parser("create", help="create an API key (printed once)")
    s.add_argument("--tenant", help="a tenant key for this tenant")
    s.add_argument("--platform", action="store_true", help="a platform (billing) key")
    s.add_argument(
        "--user",
        help="bind the key to this person: it speaks for them only (what a browser gets)",
    )
    s.add_argument("--scopes", help="comma-separated scopes (default: the key kind's defaults)")
    s.add_argument("--expires-in", help="the key stops working after this long: 90d, 12h, 30m")
    s.add_argument("--description", default="")
    s.add_argument("--quiet", action="store_true", help="print only the key")
    s.set_defaults(fn=cmd_key_create)
    s = keys.add_parser("revoke", help="revoke an API key")
    s.add_argument("key_id")
    s.set_defaults(fn=cmd_key_revoke)
    s = keys.add_parser("list", help="list API keys (never the secrets)")
    s.add_argument("--tenant")
    s.set_defaults(fn=cmd_key_list)

    tokens = sub.add_parser("tokens", help="the ledger").add_subparsers(dest="sub", required=True)
    s = tokens.add_parser("add", help="add purchased tokens")
    s.add_argument("--tenant", required=True)
    s.add_argument("--location", default="")
    s.add_argument("--amount", type=int, required=True)
    s.add_argument("--request-id", default="", help="idempotency key (default: random)")
    s.add_argument("--note", default="added by operator")
    s.set_defaults(fn=cmd_tokens_add)
    s = tokens.add_parser("balance", help="show a balance")
    s.add_argument("--tenant", required=True)
    s.add_argument("--location", default="")
    s.set_defaults(fn=cmd_tokens_balance)

    fees = sub.add_parser("fees", help="monthly fees").add_subparsers(dest="sub", required=True)
    s = fees.add_parser("charge", help="charge this month's fee to every tenant (cron-safe)")
    s.set_defaults(fn=cmd_fees_charge)

    s = sub.add_parser("sweep", help="release expired reservations and prune old audit events now")
    s.set_defaults(fn=cmd_sweep)

    channels = sub.add_parser("channel", help="tenant provider settings").add_subparsers(
        dest="sub", required=True
    )
    s = channels.add_parser("set", help="store smtp, twilio, elevenlabs or coordinators settings")
    s.add_argument("--tenant", required=True)
    s.add_argument(
        "--channel", required=True, choices=("smtp", "twilio", "elevenlabs", "coordinators")
    )
    s.add_argument("--config", default="{}", help="non-secret settings, JSON")
    s.add_argument("--secrets", default="{}", help="secret settings, JSON (stored encrypted)")
    s.set_defaults(fn=cmd_channel_set)

    policy = sub.add_parser("policy", help="tenant decision policy").add_subparsers(
        dest="sub", required=True
    )
    s = policy.add_parser("set", help="store a tenant's policy (JSON)")
    s.add_argument("--tenant", required=True)
    s.add_argument("policy", help='e.g. \'{"level_overrides": {"sms.send": "approval_required"}}\'')
    s.set_defaults(fn=cmd_policy_set)

    s = sub.add_parser(
        "envoy-config",
        help="print an Envoy configuration (gRPC-web, CORS from AGENTSERVER_WEB_ORIGINS)",
    )
    s.add_argument("--listen", default="0.0.0.0:8081", help="Envoy's address for browsers")
    s.add_argument("--admin", default="127.0.0.1:9901", help="Envoy's admin address")
    s.add_argument("--upstream", default="", help="the gRPC server (default AGENTSERVER_LISTEN)")
    s.set_defaults(offline=cmd_envoy_config)

    s = sub.add_parser("secret-key", help="print a new key for AGENTSERVER_SECRET_KEYS")
    s.set_defaults(offline=cmd_secret_key)

    perms = sub.add_parser("permission", help="permission rules").add_subparsers(
        dest="sub", required=True
    )
    for name, fn, text in (
        ("allow", cmd_perm_set, "grant a permission"),
        ("deny", cmd_perm_set, "deny a permission"),
        ("remove", cmd_perm_remove, "remove a rule"),
    ):
        s = perms.add_parser(name, help=text)
        s.add_argument("--tenant", required=True)
        s.add_argument("--scope", choices=("business", "user", "location"), default="business")
        s.add_argument("--subject", default="", help="the user id or location id of the rule")
        if name == "remove":
            s.add_argument("--effect", choices=("allow", "deny"), default="allow")
        else:
            s.set_defaults(effect=name)
        s.add_argument("permission", help="resource:verb, `*` wildcards allowed")
        s.set_defaults(fn=fn)
    s = perms.add_parser("list", help="list a tenant's rules")
    s.add_argument("--tenant", required=True)
    s.set_defaults(fn=cmd_perm_list)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "offline", None):
        return int(args.offline(args))
    settings = Settings.from_env()
    logs.configure(settings.log_level, settings.log_format)
    if args.command == "serve":
        try:
            import uvloop

            uvloop.install()
        except ImportError:  # pragma: no cover - uvloop is optional off Linux
            pass
    return _run(args.fn, args)


if __name__ == "__main__":
    sys.exit(main())
