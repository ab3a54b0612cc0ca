"""AdminService through the public surface, on SQLite and PostgreSQL: who may manage
what, every setting validated when set (the field named, nothing changed), secrets
write-only, changes effective at once, and every change in the audit trail."""

from __future__ import annotations

import subprocess
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from sqlalchemy import text

from agentserver.client import AgentServerClient, AgentServerError, StatusCode
from agentserver.v1 import admin_service_pb2 as pb
from agentserver.v1 import agent_service_pb2 as apb
from agentserver.v1 import common_pb2
from agentserver.v1 import token_service_pb2 as tpb
from tests import procs
from tests.conftest import Harness, Tenant

SID = "AC" + "a1" * 16


async def admin_of(h: Harness, t: Tenant, user: str = "root") -> AgentServerClient:
    _, key = await h.app.admin.create_key(t.id, ["admin", "agent"], "admin", h.clock.now())
    return h.client(key, t.id, user_id=user)


async def platform(h: Harness) -> AgentServerClient:
    _, key = await h.app.admin.create_key(None, ["admin", "billing"], "ops", h.clock.now())
    return h.client(key, "", user_id="ops")


async def fails(code: StatusCode, call: object) -> AgentServerError:
    with pytest.raises(AgentServerError) as err:
        await call  # type: ignore[misc]
    assert err.value.code is code, err.value
    return err.value


def fields(err: AgentServerError) -> list[str]:
    return [v.field for v in err.details.field_violations]


async def test_who_may_manage_what(harness: Harness) -> None:
    a, b = await harness.tenant(), await harness.tenant()
    async with await admin_of(harness, a) as admin_a, a.client() as plain:
        tenant = (await admin_a.get_tenant(pb.GetTenantRequest())).tenant
        assert tenant.id == a.id
        # Another tenant's id, in the request or the metadata: refused, nothing leaks.
        err = await fails(
            StatusCode.PERMISSION_DENIED, admin_a.get_policy(pb.GetPolicyRequest(tenant_id=b.id))
        )
        assert err.details.reason == "TENANT_MISMATCH"
        await fails(
            StatusCode.PERMISSION_DENIED,
            admin_a.list_audit_events(pb.ListAuditEventsRequest(tenant_id=b.id)),
        )
        err = await fails(
            StatusCode.PERMISSION_DENIED,
            admin_a.create_tenant(pb.CreateTenantRequest(tenant_id="nope")),
        )
        assert err.details.reason == "PLATFORM_ONLY"
        await fails(
            StatusCode.PERMISSION_DENIED,
            admin_a.create_api_key(pb.CreateApiKeyRequest(platform=True)),
        )
        # A key without the admin scope: no AdminService at all.
        err = await fails(StatusCode.PERMISSION_DENIED, plain.get_tenant(pb.GetTenantRequest()))
        assert err.details.reason == "SCOPE_MISSING"
        # Another tenant's key: NOT_FOUND, as if it did not exist.
        (b_key,) = [k for k in await harness.app.admin.key_infos(b.id)]
        await fails(
            StatusCode.NOT_FOUND, admin_a.revoke_api_key(pb.RevokeApiKeyRequest(key_id=b_key.id))
        )
    async with await platform(harness) as ops:
        new_id = f"new-{uuid.uuid4().hex[:8]}"
        created = await ops.create_tenant(pb.CreateTenantRequest(tenant_id=new_id, name="New"))
        assert (created.tenant.id, created.tenant.name) == (new_id, "New")
        await fails(
            StatusCode.ALREADY_EXISTS, ops.create_tenant(pb.CreateTenantRequest(tenant_id=new_id))
        )
        err = await fails(
            StatusCode.INVALID_ARGUMENT, ops.create_tenant(pb.CreateTenantRequest(tenant_id="a b"))
        )
        assert fields(err) == ["tenant_id"]
        err = await fails(
            StatusCode.INVALID_ARGUMENT,
            ops.create_api_key(pb.CreateApiKeyRequest(platform=True, user_id="x")),
        )
        assert fields(err) == ["user_id"]
        platform_key = await ops.create_api_key(pb.CreateApiKeyRequest(platform=True))
        assert "billing" in platform_key.key.scopes and not platform_key.key.tenant_id
        # A platform key manages any tenant it names.
        assert (await ops.get_tenant(pb.GetTenantRequest(tenant_id=b.id))).tenant.id == b.id
        await fails(StatusCode.NOT_FOUND, ops.get_tenant(pb.GetTenantRequest(tenant_id="ghost")))
        seen: list[str] = []
        token = ""
        while True:
            page = await ops.list_tenants(pb.ListTenantsRequest(page_size=2, page_token=token))
            seen += [t.id for t in page.tenants]
            if not (token := page.next_page_token):
                break
        assert {a.id, b.id, new_id} <= set(seen) and seen == sorted(seen)


async def test_keys_created_listed_and_revoked(harness: Harness) -> None:
    t = await harness.tenant(10)
    async with await admin_of(harness, t) as admin:
        made = await admin.create_api_key(
            pb.CreateApiKeyRequest(
                scopes=["tokens:read"],
                description="reporting",
                ttl=duration_pb2.Duration(seconds=3600),
                reason="the reporting job",
            )
        )
        assert made.secret.startswith(f"ask_{made.key.id}_")
        assert list(made.key.scopes) == ["tokens:read"] and made.key.HasField("expire_time")
        listed = (await admin.list_api_keys(pb.ListApiKeysRequest())).keys
        assert made.key.id in [k.id for k in listed]
        assert made.secret not in str(listed)
        async with harness.client(made.secret, t.id) as reporting:
            assert (
                await reporting.get_balance(tpb.GetBalanceRequest())
            ).balance.available_tokens == 10
            await fails(
                StatusCode.PERMISSION_DENIED,
                reporting.charge_tokens(
                    tpb.ChargeTokensRequest(operation_type=2, amount=1, request_id="x")
                ),
            )
            for bad, field in (
                (pb.CreateApiKeyRequest(scopes=["billing"]), "scopes.0"),
                (pb.CreateApiKeyRequest(scopes=["root"]), "scopes.0"),
                (pb.CreateApiKeyRequest(ttl=duration_pb2.Duration(seconds=-5)), "ttl"),
            ):
                err = await fails(StatusCode.INVALID_ARGUMENT, admin.create_api_key(bad))
                assert fields(err) == [field]
            person = await admin.create_api_key(
                pb.CreateApiKeyRequest(user_id="pat", scopes=["agent"], description="pat's browser")
            )
            assert person.key.user_id == "pat"
            async with harness.client(person.secret, t.id, user_id="someone-else") as pat:
                err = await fails(StatusCode.PERMISSION_DENIED, pat.list_user_sessions())
                assert err.details.reason == "USER_MISMATCH"
            revoked = await admin.revoke_api_key(
                pb.RevokeApiKeyRequest(key_id=made.key.id, reason="leaked")
            )
            assert revoked.key.HasField("revoke_time")
            # This replica forgets the key at once (others within 10 s).
            await fails(StatusCode.UNAUTHENTICATED, reporting.get_balance(tpb.GetBalanceRequest()))


async def test_policy_is_validated_when_set_and_applies_at_once(harness: Harness) -> None:
    t = await harness.tenant(10)
    async with await admin_of(harness, t) as admin, t.client("alice") as alice:
        L = common_pb2
        for policy, field in (
            (
                pb.TenantPolicy(
                    level_overrides=[
                        pb.LevelOverride(action_type="sms.sned", level=L.DECISION_LEVEL_SUGGESTION)
                    ]
                ),
                "policy.level_overrides.sms.sned",
            ),
            (
                pb.TenantPolicy(level_overrides=[pb.LevelOverride(action_type="sms.send")]),
                "policy.level_overrides.0.level",
            ),
            (
                pb.TenantPolicy(
                    level_overrides=[pb.LevelOverride(action_type="sms.send", level=9)]
                ),
                "policy.level_overrides.0.level",
            ),
            (pb.TenantPolicy(bypass_level=7), "policy.bypass_level"),
        ):
            err = await fails(
                StatusCode.INVALID_ARGUMENT, admin.set_policy(pb.SetPolicyRequest(policy=policy))
            )
            assert fields(err) == [field], err
        assert (await admin.get_policy(pb.GetPolicyRequest())).policy == pb.TenantPolicy()
        stored = await admin.set_policy(
            pb.SetPolicyRequest(
                policy=pb.TenantPolicy(
                    level_overrides=[
                        pb.LevelOverride(
                            action_type="sms.send", level=L.DECISION_LEVEL_APPROVAL_REQUIRED
                        )
                    ],
                    consultation_min_cost=150,
                ),
                reason="texts need a second pair of eyes",
            )
        )
        assert stored.policy.consultation_min_cost == 150
        assert (await admin.get_policy(pb.GetPolicyRequest())).policy == stored.policy
        (action,) = (
            await alice.process(apb.ProcessRequest(message="Text +15551234567 that we open at 9"))
        ).actions
        assert action.decision_level == L.DECISION_LEVEL_APPROVAL_REQUIRED


async def test_channel_settings_are_checked_secrets_write_only(harness: Harness) -> None:
    t = await harness.tenant()
    async with await admin_of(harness, t) as admin:
        twilio = pb.TwilioSettings(account_sid=SID, from_number="+15550001111")
        for settings, wrong in (
            ({"twilio": twilio}, ["twilio.auth_token"]),
            (
                {"twilio": pb.TwilioSettings(account_sid="AC1", from_number="555", auth_token="t")},
                ["twilio.account_sid", "twilio.from_number"],
            ),
            (
                {"elevenlabs": pb.ElevenLabsSettings(agent_id="a", phone_number_id="p")},
                ["elevenlabs.api_key"],
            ),
            (
                {
                    "elevenlabs": pb.ElevenLabsSettings(
                        agent_id="a", phone_number_id="p", api_key="k", base_url="ftp://x"
                    )
                },
                ["elevenlabs.base_url"],
            ),
            (
                {"smtp": pb.SmtpSettings(host="mail.example.com", port=70000)},
                ["smtp.port", "smtp.from_address"],
            ),
            (
                {"smtp": pb.SmtpSettings(host="h", port=25, from_address="x", username="u")},
                ["smtp.from_address", "smtp.password"],
            ),
            ({"coordinators": pb.CoordinatorContacts(sms=["12"])}, ["coordinators.sms"]),
            ({"coordinators": pb.CoordinatorContacts()}, ["coordinators.email"]),
        ):
            err = await fails(
                StatusCode.INVALID_ARGUMENT,
                admin.set_channel_settings(pb.SetChannelSettingsRequest(**settings)),  # type: ignore[arg-type]
            )
            assert sorted(fields(err)) == sorted(wrong), err
        err = await fails(
            StatusCode.INVALID_ARGUMENT, admin.set_channel_settings(pb.SetChannelSettingsRequest())
        )
        assert fields(err) == ["settings"]
        assert not (await admin.list_channel_settings(pb.ListChannelSettingsRequest())).channels

        twilio.auth_token = "tok-s3cret"
        stored = await admin.set_channel_settings(
            pb.SetChannelSettingsRequest(twilio=twilio, reason="go live")
        )
        assert list(stored.channel.secrets_set) == ["auth_token"]
        assert stored.channel.twilio.auth_token == "" and stored.channel.twilio.account_sid == SID
        # A secret left out keeps the stored one.
        twilio.auth_token = ""
        twilio.whatsapp_from = "+15550002222"
        again = await admin.set_channel_settings(pb.SetChannelSettingsRequest(twilio=twilio))
        assert list(again.channel.secrets_set) == ["auth_token"]
        assert (await harness.app.runner.settings(t.id, "twilio") or {})[
            "auth_token"
        ] == "tok-s3cret"
        (listed,) = (await admin.list_channel_settings(pb.ListChannelSettingsRequest())).channels
        assert "tok-s3cret" not in str(listed) and listed.twilio.whatsapp_from == "+15550002222"
        changes = (
            await admin.list_audit_events(pb.ListAuditEventsRequest(type="channel.set"))
        ).events
        assert len(changes) == 2
        assert changes[1].after["auth_token"] == "<redacted>" and not changes[1].HasField("before")
        assert changes[0].before["auth_token"] == "<redacted>"
        assert changes[0].after["whatsapp_from"] == "+15550002222"
        assert all("tok-s3cret" not in str(e) for e in changes)
        await admin.delete_channel_settings(pb.DeleteChannelSettingsRequest(channel="twilio"))
        await fails(
            StatusCode.NOT_FOUND,
            admin.delete_channel_settings(pb.DeleteChannelSettingsRequest(channel="twilio")),
        )
    await harness.app.audit.flush()
    async with harness.app.engine.connect() as conn:
        rows = (
            await conn.execute(text("SELECT payload FROM events WHERE tenant_id = :t"), {"t": t.id})
        ).all()
    assert rows and all("tok-s3cret" not in str(r.payload) for r in rows)


async def test_locations_and_rules_apply_at_once(harness: Harness) -> None:
    t = await harness.tenant(20, rules=("email:*", "sms:*"))
    async with await admin_of(harness, t) as admin, t.client("alice", "desk") as at_desk:
        put = await admin.put_location(
            pb.PutLocationRequest(
                location_id="desk", name="Front desk", allowed_permissions=["email:send"]
            )
        )
        assert list(put.location.allowed_permissions) == ["email:send"]
        (sms,) = (
            await at_desk.process(apb.ProcessRequest(message="Text +15551234567 that we open at 9"))
        ).actions
        assert not sms.executable and sms.blocked_reasons[0].reason == "PERMISSION_MISSING"
        err = await fails(
            StatusCode.INVALID_ARGUMENT,
            admin.put_location(
                pb.PutLocationRequest(location_id="desk", allowed_permissions=["Email Send"])
            ),
        )
        assert fields(err) == ["allowed_permissions.0"]
        await admin.delete_location(pb.DeleteLocationRequest(location_id="desk"))
        assert not (await admin.list_locations(pb.ListLocationsRequest())).locations
        (sms,) = (
            await at_desk.process(apb.ProcessRequest(message="Text +15551234567 that we open at 9"))
        ).actions
        assert sms.executable

        deny = pb.PermissionRule(
            scope=pb.PERMISSION_SCOPE_USER,
            subject_id="alice",
            effect=pb.PERMISSION_EFFECT_DENY,
            permission="sms:send",
        )
        await admin.add_permission_rule(pb.AddPermissionRuleRequest(rule=deny, reason="abuse"))
        rules = (await admin.list_permission_rules(pb.ListPermissionRulesRequest())).rules
        assert deny in rules
        (sms,) = (
            await at_desk.process(apb.ProcessRequest(message="Text +15551234567 that we open at 9"))
        ).actions
        assert not sms.executable
        for bad, wrong in (
            (
                pb.PermissionRule(scope=pb.PERMISSION_SCOPE_USER, effect=1, permission="a:b"),
                "rule.subject_id",
            ),
            (pb.PermissionRule(scope=1, effect=1, permission="nocolon"), "rule.permission"),
            (pb.PermissionRule(effect=1, permission="a:b"), "rule.scope"),
        ):
            err = await fails(
                StatusCode.INVALID_ARGUMENT,
                admin.add_permission_rule(pb.AddPermissionRuleRequest(rule=bad)),
            )
            assert fields(err) == [wrong]
        await admin.remove_permission_rule(pb.RemovePermissionRuleRequest(rule=deny))
        await fails(
            StatusCode.NOT_FOUND,
            admin.remove_permission_rule(pb.RemovePermissionRuleRequest(rule=deny)),
        )


async def test_the_audit_trail_says_who_what_before_after_and_why(harness: Harness) -> None:
    t, other = await harness.tenant(), await harness.tenant()
    async with await admin_of(harness, t, user="maria") as admin:
        start = harness.clock.now()
        await admin.update_tenant(
            pb.UpdateTenantRequest(
                conversation_retention_days=30,
                update_mask=["conversation_retention_days"],
                reason="GDPR policy",
            )
        )
        harness.clock.advance(timedelta(minutes=5))
        await admin.put_location(pb.PutLocationRequest(location_id="bar", name="Bar"))
        await admin.get_tenant(pb.GetTenantRequest())  # a read: recorded as a call
        await fails(
            StatusCode.INVALID_ARGUMENT,
            admin.update_tenant(pb.UpdateTenantRequest(update_mask=["title"])),
        )
        events = (await admin.list_audit_events(pb.ListAuditEventsRequest())).events
        by_type = {e.type: e for e in events}
        update = by_type["tenant.update"]
        assert (update.object, update.user_id, update.outcome, update.rpc) == (
            f"tenant:{t.id}",
            "maria",
            "OK",
            "UpdateTenant",
        )
        assert update.before["conversation_retention_days"] == 0
        assert update.after["conversation_retention_days"] == 30
        assert update.reason == "GDPR policy" and update.key_id and update.request_id
        assert by_type["location.put"].after["name"] == "Bar"
        assert by_type["GetTenant"].outcome == "OK" and not by_type["GetTenant"].object
        assert by_type["UpdateTenant"].outcome == "INVALID_ARGUMENT"
        assert [e.id for e in events] == sorted((e.id for e in events), reverse=True)

        async def listed(**filters: object) -> list[str]:
            req = pb.ListAuditEventsRequest(**filters)  # type: ignore[arg-type]
            return [e.type for e in (await admin.list_audit_events(req)).events]

        assert await listed(type="location.put") == ["location.put"]
        assert await listed(object=f"tenant:{t.id}") == ["tenant.update"]
        assert set(await listed(user_id="maria")) >= {"tenant.update", "GetTenant"}
        assert await listed(user_id="nobody") == []
        assert await listed(key_id=update.key_id)
        late = timestamp_pb2.Timestamp()
        late.FromDatetime(start + timedelta(minutes=1))
        assert "tenant.update" not in await listed(start_time=late)
        assert await listed(end_time=late, type="tenant.update") == ["tenant.update"]
        err = await fails(
            StatusCode.INVALID_ARGUMENT,
            admin.list_audit_events(pb.ListAuditEventsRequest(start_time=late, end_time=late)),
        )
        assert fields(err) == ["end_time"]
        first = await admin.list_audit_events(pb.ListAuditEventsRequest(page_size=1))
        second = await admin.list_audit_events(
            pb.ListAuditEventsRequest(page_size=1, page_token=first.next_page_token)
        )
        assert second.events[0].id < first.events[0].id
        # The unauthenticated trail is the platform's to read.
        err = await fails(
            StatusCode.PERMISSION_DENIED,
            admin.list_audit_events(
                pb.ListAuditEventsRequest(trail=pb.AUDIT_TRAIL_UNAUTHENTICATED)
            ),
        )
    async with await admin_of(harness, other) as theirs:
        mine = (await theirs.list_audit_events(pb.ListAuditEventsRequest())).events
        assert all(e.tenant_id == other.id for e in mine)
        assert not any(e.type == "tenant.update" for e in mine)
    async with AgentServerClient(harness.target, api_key="ask_made_up", tenant_id=t.id) as anon:
        await fails(StatusCode.UNAUTHENTICATED, anon.get_costs())
    async with await platform(harness) as ops:
        trail = (
            await ops.list_audit_events(
                pb.ListAuditEventsRequest(trail=pb.AUDIT_TRAIL_UNAUTHENTICATED, type="GetCosts")
            )
        ).events
        assert trail and trail[0].after["claimed_tenant_id"] == t.id
        assert all(not e.tenant_id for e in trail)


async def test_the_cli_runs_the_same_use_cases(harness: Harness) -> None:
    """The CLI validates and audits as the rpcs do (in process: the same App)."""
    from agentserver import cli

    t = await harness.tenant()
    parser = cli.parser()

    async def run(*argv: str) -> int:
        args = parser.parse_args(list(argv))
        from agentserver.app import operator_caller

        args.caller = operator_caller()
        try:
            return await args.fn(harness.app, args)
        finally:
            harness.app.record(args.caller, f"{args.command} {args.sub}")

    with pytest.raises(Exception) as err:
        await run("channel", "set", "--tenant", t.id, "--channel", "twilio", "--config", "{}")
    assert "config.account_sid: is required" in str(err.value)
    assert "secrets.auth_token: is required" in str(err.value)
    with pytest.raises(Exception) as err:
        await run("policy", "set", "--tenant", t.id, '{"level_overides": {}}')
    assert "policy.level_overides: is not a policy setting" in str(err.value)
    with pytest.raises(Exception) as err:
        await run("policy", "set", "--tenant", t.id, "{not json")
    assert "policy: is not valid JSON" in str(err.value)
    assert (
        await run("policy", "set", "--tenant", t.id, '{"bypass_level": "approval_required"}') == 0
    )
    await harness.app.audit.flush()
    async with await admin_of(harness, t) as admin:
        (event,) = (
            await admin.list_audit_events(pb.ListAuditEventsRequest(type="policy.set"))
        ).events
        assert (event.key_id, event.rpc) == ("cli", "policy set")
        assert event.after["bypass_level"] == "approval_required"


def test_the_cli_answers_bad_input_without_a_traceback(tmp_path: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(procs.BIN / "agentserver"), *args],
            cwd=tmp_path,
            env=procs.server_env(database_url=db, auto_migrate="true"),
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert cli("tenant", "create", "acme").returncode == 0
    for args, said in (
        (
            ("channel", "set", "--tenant", "acme", "--channel", "twilio", "--config", "{oops"),
            "error: --config: is not valid JSON",
        ),
        (
            (
                "channel",
                "set",
                "--tenant",
                "acme",
                "--channel",
                "elevenlabs",
                "--config",
                '{"agent_id": "a", "phone_number_id": "p"}',
            ),
            "secrets.api_key: is required",
        ),
        (
            ("policy", "set", "--tenant", "acme", '{"level_overrides": {"sms.send": "maybe"}}'),
            "policy.level_overrides.sms.send: must be one of automatic",
        ),
        (("key", "create", "--tenant", "acme", "--expires-in", "soon"), "--expires-in:"),
        (("tenant", "create", "bad id"), "tenant_id: must be"),
        (("permission", "allow", "--tenant", "acme", "Send Email"), "rule.permission"),
        (("tenant", "update", "ghost", "--name", "x"), "tenant 'ghost' not found"),
    ):
        done = cli(*args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert said in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    listed = cli("audit", "list", "--tenant", "acme")
    assert listed.returncode == 0, listed.stderr
    assert '"type": "tenant.create"' in listed.stdout
