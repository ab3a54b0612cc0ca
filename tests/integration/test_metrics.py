"""Operating it: Prometheus metrics after real calls (parsed with prometheus_client's
own parser), the access log naming tenant, user and key, and spans when traces are
configured."""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from agentserver.client import AgentServerClient, AgentServerError, StatusCode
from agentserver.v1 import agent_service_pb2 as apb
from agentserver.v1 import token_service_pb2 as tpb
from tests.conftest import Harness, database_url, start_harness

TOKENS = "agentserver.v1.TokenService"


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the endpoint, by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(params=["sqlite", "postgres"])
async def metered(request: pytest.FixtureRequest, tmp_root: Path) -> AsyncIterator[Harness]:
    """A server and database of this test's own, with metrics on an ephemeral port."""
    if request.param == "sqlite":
        url = database_url("sqlite", tmp_root, request)
    else:
        url = str(request.getfixturevalue("fresh_pg_url"))
    h = await start_harness(
        url,
        request.param,
        metrics_listen="127.0.0.1:0",
        metrics_tenant_label=True,
        unauthenticated_per_second=0.001,
        unauthenticated_burst=3,  # the tenant key's first call takes one too
    )
    yield h
    await h.server.stop(0)
    await h.app.close()


async def test_counts_after_real_calls(metered: Harness) -> None:
    h = metered
    assert h.server.metrics is not None
    port = h.server.metrics.port
    t = await h.tenant(100)
    async with t.client("alice") as client:
        await client.get_costs(tpb.GetCostsRequest())
        await client.get_costs(tpb.GetCostsRequest())
        await client.charge_tokens(
            tpb.ChargeTokensRequest(operation_type=2, amount=3, request_id="m-1")
        )
        # The same request again is a replay: answered, but nothing is spent twice.
        await client.charge_tokens(
            tpb.ChargeTokensRequest(operation_type=2, amount=3, request_id="m-1")
        )
        with pytest.raises(AgentServerError) as bad:
            await client.charge_tokens(
                tpb.ChargeTokensRequest(operation_type=2, amount=-1, request_id="m-2")
            )
        assert bad.value.code is StatusCode.INVALID_ARGUMENT
        processed = await client.process(
            apb.ProcessRequest(message="Email ann@example.com that the order shipped")
        )
    assert [a.state for a in processed.actions] == [apb.ACTION_STATE_SUCCEEDED]
    # Calls without a valid key take from their address's budget, then are refused.
    codes = []
    async with AgentServerClient(h.target, api_key="ask_nope_nope", tenant_id=t.id) as stranger:
        for _ in range(3):
            with pytest.raises(AgentServerError) as refused:
                await stranger.get_costs(tpb.GetCostsRequest())
            codes.append(refused.value.code)
    assert codes == [StatusCode.UNAUTHENTICATED] * 2 + [StatusCode.RESOURCE_EXHAUSTED]

    m = scrape(port)
    rpc = {"grpc_type": "unary", "grpc_service": TOKENS}
    assert value(m, "grpc_server_started_total", grpc_method="GetCosts", **rpc) == 5
    assert (
        value(
            m,
            "grpc_server_handled_total",
            grpc_method="GetCosts",
            grpc_code="OK",
            tenant=t.id,
            **rpc,
        )
        == 2
    )
    # Refused before any tenant was proven: no tenant label value.
    assert (
        value(
            m,
            "grpc_server_handled_total",
            grpc_method="GetCosts",
            grpc_code="UNAUTHENTICATED",
            tenant="",
            **rpc,
        )
        == 2
    )
    assert value(m, "agentserver_rate_limited_total", budget="unauthenticated", tenant="") == 1
    assert (
        value(
            m,
            "grpc_server_handled_total",
            grpc_method="ChargeTokens",
            grpc_code="INVALID_ARGUMENT",
            tenant=t.id,
            **rpc,
        )
        == 1
    )
    assert value(m, "grpc_server_handling_seconds_count", grpc_method="ChargeTokens", **rpc) == 3
    # 3 tokens charged once (the replay spent nothing), 1 for the email's capture.
    assert value(m, "agentserver_tokens_charged_total", operation_type="sms", tenant=t.id) == 3
    assert value(m, "agentserver_tokens_charged_total", operation_type="email", tenant=t.id) == 1
    assert value(m, "agentserver_decisions_total", level="automatic", tenant=t.id) == 1
    assert (
        value(m, "agentserver_actions_proposed_total", action_type="email.send", level="automatic")
        == 1
    )
    assert value(m, "agentserver_engine_decisions_total", engine="offline") == 1
    assert (
        value(
            m,
            "agentserver_actions_ended_total",
            action_type="email.send",
            state="succeeded",
            tenant=t.id,
        )
        == 1
    )
    assert value(m, "agentserver_channel_calls_total", provider="dryrun", outcome="ok") == 1
    assert value(m, "agentserver_channel_call_seconds_count", provider="dryrun") == 1
    assert value(m, "agentserver_batch_size_count", kind="debits") >= 2
    assert value(m, "agentserver_audit_events_shed_total") == 0
    assert value(m, "agentserver_audit_events_rejected_total") == 0
    assert value(m, "process_resident_memory_bytes") > 0


async def test_without_the_label_no_tenant_is_named(
    tmp_root: Path, request: pytest.FixtureRequest
) -> None:
    h = await start_harness(
        database_url("sqlite", tmp_root, request), "sqlite", metrics_listen="127.0.0.1:0"
    )
    try:
        t = await h.tenant(10)
        async with t.client() as client:
            await client.charge_tokens(
                tpb.ChargeTokensRequest(operation_type=3, amount=2, request_id="n-1")
            )
        assert h.server.metrics is not None
        m = scrape(h.server.metrics.port)
        assert value(m, "agentserver_tokens_charged_total", operation_type="email") == 2
        assert not any(dict(labels).get("tenant") for _, labels in m)
    finally:
        await h.server.stop(0)
        await h.app.close()


async def test_metrics_are_off_unless_configured(harness: Harness) -> None:
    assert harness.server.metrics is None
    assert type(harness.app.telemetry).__name__ == "Telemetry"


async def test_the_access_log_names_tenant_user_and_key(
    tmp_root: Path, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    h = await start_harness(database_url("sqlite", tmp_root, request), "sqlite", access_log=True)
    try:
        t = await h.tenant(10)
        key_id = t.key.split("_")[1]
        with caplog.at_level(logging.INFO, logger="agentserver.rpc"):
            async with t.client("bob") as client:
                await client.get_balance(tpb.GetBalanceRequest())
        lines = [
            r for r in caplog.records if r.name == "agentserver.rpc" and r.getMessage() == "rpc"
        ]
        assert lines, "no access log line"
        line = lines[-1]
        assert (line.rpc, line.code) == ("GetBalance", "OK")  # type: ignore[attr-defined]
        assert (line.tenant, line.user, line.key_id) == (t.id, "bob", key_id)  # type: ignore[attr-defined]
        from agentserver.logs import JsonFormatter

        shown = json.loads(JsonFormatter().format(line))
        assert {"tenant", "user", "key_id"} <= shown.keys()
    finally:
        await h.server.stop(0)
        await h.app.close()


async def test_spans_of_a_process_call_when_traces_are_configured(
    tmp_root: Path, request: pytest.FixtureRequest
) -> None:
    exporter = InMemorySpanExporter()
    h = await start_harness(
        database_url("sqlite", tmp_root, request), "sqlite", span_exporter=exporter
    )
    try:
        t = await h.tenant(100)
        async with t.client("alice") as client:
            await client.process(apb.ProcessRequest(message="Text +15551234567 that we open at 9"))
        spans = {s.name: s for s in exporter.get_finished_spans()}
        root = spans["/agentserver.v1.AgentService/Process"]
        for name in (
            "engine.propose",
            "ledger.hold",
            "action.run",
            "channel.send",
            "ledger.settle",
        ):
            assert name in spans, sorted(spans)
            assert spans[name].context.trace_id == root.context.trace_id, name
        propose = spans["engine.propose"]
        assert propose.parent is not None
        assert propose.parent.span_id == root.context.span_id
        assert (spans["channel.send"].attributes or {})["provider"] == "dryrun"
    finally:
        await h.server.stop(0)
        await h.app.close()
