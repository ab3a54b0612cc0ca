"""`agentserver`: serve, migrate, and the operator commands for tenants, keys,
tokens, fees and permissions. Every command reads the same AGENTSERVER_* settings
as the server."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

from agentserver import logs
from agentserver.app import (
    App,
    bootstrap_demo,
    build_app,
    operator_caller,
    prepare_database,
    warn_about_upkeep,
)
from agentserver.config import Settings
from agentserver.domain.admin import Rule
from agentserver.domain.audit import AuditFilter
from agentserver.domain.channel_settings import CHANNEL_KINDS, Naming
from agentserver.domain.errors import DomainError, InvalidArgument
from agentserver.domain.paging import PageRequest, decode_token

log = logging.getLogger("agentserver")
CREDENTIALS_FILE = Path("var/demo-credentials.env")


def _run(fn: Callable[[App, argparse.Namespace], Awaitable[int]], args: argparse.Namespace) -> int:
    async def main() -> int:
        settings = Settings.from_env()
        app = await build_app(settings)
        args.caller = operator_caller()
        try:
            if args.command != "migrate":
                await prepare_database(app)
            return await fn(app, args)
        except DomainError as err:
            print(f"error: {err.message}", file=sys.stderr)
            return 2
        finally:
            app.record(
                args.caller, " ".join(filter(None, (args.command, getattr(args, "sub", None))))
            )
            await app.close()

    return asyncio.run(main())


async def cmd_serve(app: App, args: argparse.Namespace) -> int:
    from agentserver.entrypoints.grpc.server import serve_until_signalled

    await warn_about_upkeep(app)

    if app.settings.bootstrap_demo and app.settings.is_sqlite:
        keys = await bootstrap_demo(app, CREDENTIALS_FILE)
        if keys:
            banner = (
                "\nA demo tenant was created on this new embedded database. Keys (shown once,"
                f" also saved to {CREDENTIALS_FILE}):\n"
                + "".join(f"  {k} = {v}\n" for k, v in keys.items())
            )
            print(banner, file=sys.stderr, flush=True)
    # What start-up built (modules, protobuf descriptors, the app) lives as long as the
    # process: keep it out of every collection, and collect young objects less often
    # (a Process call allocates thousands of them). Collections cost about 4% of a
    # Process call's CPU before this (bench/README.md).
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)
    await serve_until_signalled(app, args.listen or app.settings.listen)
    return 0


async def cmd_migrate(app: App, args: argparse.Namespace) -> int:
    from agentserver.adapters.db.migrate import upgrade

    await upgrade(app.engine, args.revision)
    print(f"database at {args.revision}")
    return 0


def _json(option: str, text: str) -> dict[str, Any]:
    """A JSON object given on the command line, or INVALID_ARGUMENT naming the option."""
    try:
        value = json.loads(text)
    except ValueError as err:
        raise InvalidArgument.field(option, f"is not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise InvalidArgument.field(option, "must be a JSON object")
    return value


def _print_json(value: Any) -> None:
    print(json.dumps(value, default=str, sort_keys=True))


async def cmd_tenant_create(app: App, args: argparse.Namespace) -> int:
    await app.administration.create_tenant(args.caller, args.tenant_id, args.name, args.reason)
    print(f"tenant {args.tenant_id} created")
    return 0


async def cmd_tenant_update(app: App, args: argparse.Namespace) -> int:
    tenant = await app.administration.update_tenant(
        args.caller,
        args.tenant_id,
        name=args.name,
        conversation_retention_days=args.retention_days,
        reason=args.reason,
    )
    _print_json(asdict(tenant))
    return 0


async def cmd_key_create(app: App, args: argparse.Namespace) -> int:
    if bool(args.tenant) == bool(args.platform):
        raise InvalidArgument.field("--tenant", "give exactly one of --tenant ID or --platform")
    if args.user and args.platform:
        raise InvalidArgument.field("--user", "binds a tenant key to a person; not with --platform")
    key, secret = await app.administration.create_key(
        args.caller,
        args.tenant or "",
        platform=args.platform,
        scopes=args.scopes.split(",") if args.scopes else (),
        description=args.description,
        ttl=_duration(args.expires_in) if args.expires_in else None,
        user_id=args.user or "",
        reason=args.reason,
    )
    if args.quiet:
        print(secret)
    else:
        bound = f"\nspeaks for: {key.user_id} only" if key.user_id else ""
        until = f"\nexpires: {key.expires_at.isoformat()}" if key.expires_at else ""
        scopes = ",".join(key.scopes)
        print(f"key id: {key.id}\nscopes: {scopes}{bound}{until}\nkey (shown once): {secret}")
    return 0


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> timedelta:
    """`90d`, `12h`, `30m` or `45s` as a timedelta."""
    number, unit = text[:-1], text[-1:].lower()
    if unit not in _UNITS or not number.isdigit() or not 0 < int(number) <= 100 * 365 * 86400:
        raise InvalidArgument.field(
            "--expires-in", "must be a positive whole number with s, m, h or d (e.g. 90d)"
        )
    return timedelta(seconds=int(number) * _UNITS[unit])


async def cmd_key_revoke(app: App, args: argparse.Namespace) -> int:
    await app.administration.revoke_key(args.caller, args.key_id, reason=args.reason)
    print(f"key {args.key_id} revoked (takes effect within 10 s on running servers)")
    return 0


async def cmd_key_list(app: App, args: argparse.Namespace) -> int:
    admin = app.administration
    if args.tenant or args.platform:
        keys = await admin.list_keys(args.caller, args.tenant or "", platform=args.platform)
    else:  # every key: the platform's, then each tenant's
        keys = await admin.list_keys(args.caller, platform=True)
        page = PageRequest(500, None)
        while True:
            tenants, token = await admin.list_tenants(args.caller, page)
            for t in tenants:
                keys += await admin.list_keys(args.caller, t.id)
            if not token:
                break
            page = PageRequest(500, decode_token(token, "tenants"))
    for key in keys:
        _print_json(asdict(key))
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
    retained = await app.apply_retention(batches=1_000_000)
    print(f"removed or redacted {retained} rows of conversations past their tenant's retention")
    days = app.settings.audit_retention_days
    if days > 0:
        pruned = await app.prune_audit(batches=1_000_000)
        print(f"pruned {pruned} audit events older than {days:g} days")
    days = app.settings.event_retention_days
    if days > 0:
        deleted = await app.prune_events(batches=1_000_000)
        print(f"deleted {deleted} outbox events older than {days:g} days")
    windows = await app.prune_windows(batches=1_000_000)
    print(f"deleted {windows} conversation windows that lapsed over a day ago")
    return 0


async def cmd_events_notify(app: App, args: argparse.Namespace) -> int:
    from agentserver.adapters.db.notify import notify_enabled, set_notify

    if args.state != "status":
        await set_notify(app.engine, args.state == "on")
    print(f"outbox NOTIFY: {'on' if await notify_enabled(app.engine) else 'off'}")
    return 0


def _rule(args: argparse.Namespace) -> Rule:
    return Rule(args.scope, args.subject, args.effect, args.permission)


async def cmd_perm_set(app: App, args: argparse.Namespace) -> int:
    await app.administration.add_rule(args.caller, args.tenant, _rule(args), args.reason)
    print(f"{args.effect} {args.permission} for {args.scope} {args.subject}".rstrip())
    return 0


async def cmd_perm_remove(app: App, args: argparse.Namespace) -> int:
    await app.administration.remove_rule(args.caller, args.tenant, _rule(args), args.reason)
    print("removed")
    return 0


async def cmd_perm_list(app: App, args: argparse.Namespace) -> int:
    for r in await app.administration.list_rules(args.caller, args.tenant):
        print(f"{r.scope:9} {r.subject_id or '-':20} {r.effect:5} {r.permission}")
    return 0


async def cmd_location_put(app: App, args: argparse.Namespace) -> int:
    location = await app.administration.put_location(
        args.caller,
        args.tenant,
        args.location_id,
        name=args.name,
        allowed_permissions=[p for p in args.allow.split(",") if p] if args.allow else (),
        reason=args.reason,
    )
    _print_json(asdict(location))
    return 0


async def cmd_location_list(app: App, args: argparse.Namespace) -> int:
    for location in await app.administration.list_locations(args.caller, args.tenant):
        _print_json(asdict(location))
    return 0


async def cmd_location_delete(app: App, args: argparse.Namespace) -> int:
    await app.administration.delete_location(
        args.caller, args.tenant, args.location_id, args.reason
    )
    print(f"location {args.location_id} deleted")
    return 0


async def cmd_channel_set(app: App, args: argparse.Namespace) -> int:
    config = _json("--config", args.config or "{}")
    secrets = _json("--secrets", args.secrets or "{}")
    await app.administration.set_channel(
        args.caller,
        args.tenant,
        args.channel,
        config,
        secrets,
        naming=Naming("config", "secrets"),
        reason=args.reason,
    )
    print(
        f"{args.channel} settings stored for {args.tenant}"
        + (" (secrets encrypted)" if secrets else "")
    )
    return 0


async def cmd_channel_list(app: App, args: argparse.Namespace) -> int:
    for channel in await app.administration.list_channels(args.caller, args.tenant):
        _print_json(asdict(channel))
    return 0


async def cmd_channel_delete(app: App, args: argparse.Namespace) -> int:
    await app.administration.delete_channel(args.caller, args.tenant, args.channel, args.reason)
    print(f"{args.channel} settings deleted for {args.tenant}: it uses its dry-run twin")
    return 0


async def cmd_policy_set(app: App, args: argparse.Namespace) -> int:
    await app.administration.set_policy(
        args.caller, args.tenant, _json("policy", args.policy), args.reason
    )
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


async def cmd_policy_show(app: App, args: argparse.Namespace) -> int:
    _print_json(await app.administration.get_policy(args.caller, args.tenant))
    return 0


async def cmd_audit_list(app: App, args: argparse.Namespace) -> int:
    flt = AuditFilter(key_id=args.key, user_id=args.user, type=args.type, object=args.object)
    events, _ = await app.administration.audit_events(
        args.caller,
        args.tenant or "",
        flt,
        PageRequest(args.limit, None),
        trail="tenant" if args.tenant else "platform",
    )
    for event in events:
        _print_json(asdict(event))
    return 0


def cmd_secret_key(args: argparse.Namespace) -> int:
    from agentserver.adapters.secrets import generate_key

    print(generate_key())
    return 0


def _reason(s: argparse.ArgumentParser) -> None:
    s.add_argument("--reason", default="", help="why, for the audit trail")


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
    _reason(s)
    s.set_defaults(fn=cmd_tenant_create)
    s = tenants.add_parser("update", help="change a tenant's name or conversation retention")
    s.add_argument("tenant_id")
    s.add_argument("--name")
    s.add_argument(
        "--retention-days",
        type=int,
        help="delete messages older than this many days (0 keeps them)",
    )
    _reason(s)
    s.set_defaults(fn=cmd_tenant_update)

    keys = sub.add_parser("key", help="manage API keys").add_subparsers(dest="sub", required=True)
    s = keys.add_parser("create", help="create an API key (printed once)")
    s.add_argument("--tenant", help="a tenant key for this tenant")
    s.add_argument("--platform", action="store_true", help="a platform (billing) key")
    s.add_argument(
        "--user",
        help="bind the key to this person: it speaks for them only (what a browser gets)",
    )
    s.add_argument(
        "--scopes",
        help="comma-separated: agent, tokens:read, tokens:write, admin, billing (platform keys)"
        " (default: the key kind's defaults)",
    )
    s.add_argument("--expires-in", help="the key stops working after this long: 90d, 12h, 30m")
    s.add_argument("--description", default="")
    s.add_argument("--quiet", action="store_true", help="print only the key")
    _reason(s)
    s.set_defaults(fn=cmd_key_create)
    s = keys.add_parser("revoke", help="revoke an API key")
    s.add_argument("key_id")
    _reason(s)
    s.set_defaults(fn=cmd_key_revoke)
    s = keys.add_parser("list", help="list API keys (never the secrets); default: all")
    s.add_argument("--tenant")
    s.add_argument("--platform", action="store_true", help="the platform keys only")
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

    s = sub.add_parser(
        "sweep",
        help="release expired reservations, apply conversation retention, prune old audit"
        " and outbox events and lapsed conversation windows now",
    )
    s.set_defaults(fn=cmd_sweep)

    events = sub.add_parser("events", help="events out").add_subparsers(dest="sub", required=True)
    s = events.add_parser(
        "notify",
        help="PostgreSQL: wake replicas by NOTIFY from every writing transaction (off by "
        "default: it serialises commits; replicas poll every 50 ms)",
    )
    s.add_argument("state", choices=["on", "off", "status"])
    s.set_defaults(fn=cmd_events_notify)

    channels = sub.add_parser("channel", help="tenant provider settings").add_subparsers(
        dest="sub", required=True
    )
    s = channels.add_parser("set", help="store smtp, twilio, elevenlabs or coordinators settings")
    s.add_argument("--tenant", required=True)
    s.add_argument("--channel", required=True, choices=CHANNEL_KINDS)
    s.add_argument("--config", default="{}", help="non-secret settings, JSON")
    s.add_argument(
        "--secrets",
        default="{}",
        help="secret settings, JSON (stored encrypted; one left out keeps its stored value)",
    )
    _reason(s)
    s.set_defaults(fn=cmd_channel_set)
    s = channels.add_parser("list", help="a tenant's channel settings (never the secrets)")
    s.add_argument("--tenant", required=True)
    s.set_defaults(fn=cmd_channel_list)
    s = channels.add_parser("delete", help="back to the channel's dry-run twin")
    s.add_argument("--tenant", required=True)
    s.add_argument("--channel", required=True, choices=CHANNEL_KINDS)
    _reason(s)
    s.set_defaults(fn=cmd_channel_delete)

    policy = sub.add_parser("policy", help="tenant decision policy").add_subparsers(
        dest="sub", required=True
    )
    s = policy.add_parser("set", help="store a tenant's policy (JSON)")
    s.add_argument("--tenant", required=True)
    s.add_argument("policy", help='e.g. \'{"level_overrides": {"sms.send": "approval_required"}}\'')
    _reason(s)
    s.set_defaults(fn=cmd_policy_set)
    s = policy.add_parser("show", help="a tenant's stored policy")
    s.add_argument("--tenant", required=True)
    s.set_defaults(fn=cmd_policy_show)

    locations = sub.add_parser("location", help="a tenant's locations").add_subparsers(
        dest="sub", required=True
    )
    s = locations.add_parser("put", help="create or replace a location and its allow-list")
    s.add_argument("--tenant", required=True)
    s.add_argument("location_id")
    s.add_argument("--name", default="")
    s.add_argument(
        "--allow", default="", help="comma-separated permissions of the allow-list (none: no list)"
    )
    _reason(s)
    s.set_defaults(fn=cmd_location_put)
    s = locations.add_parser("list", help="a tenant's locations and their allow-lists")
    s.add_argument("--tenant", required=True)
    s.set_defaults(fn=cmd_location_list)
    s = locations.add_parser("delete", help="delete a location and its allow-list")
    s.add_argument("--tenant", required=True)
    s.add_argument("location_id")
    _reason(s)
    s.set_defaults(fn=cmd_location_delete)

    audit = sub.add_parser("audit", help="the audit trail").add_subparsers(
        dest="sub", required=True
    )
    s = audit.add_parser("list", help="newest first; without --tenant the platform's own")
    s.add_argument("--tenant", default="")
    s.add_argument("--key", default="", help="only this API key's events")
    s.add_argument("--user", default="", help="only this user's events")
    s.add_argument("--type", default="", help="only this type (policy.set, ChargeTokens, ...)")
    s.add_argument("--object", default="", help="only about this object (tenant:acme, ...)")
    s.add_argument("--limit", type=int, default=50, choices=range(1, 501), metavar="1..500")
    s.set_defaults(fn=cmd_audit_list)

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
        _reason(s)
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
