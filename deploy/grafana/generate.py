#!/usr/bin/env python3
"""Writes the Grafana dashboards in this directory, one per service family.

Requests are counted by the listener that took them (`service`): a
polylith process's HTTP and gRPC listeners carry its service's name, the
monolith's are `client` and `federation`. The JSON files are committed; edit this script and run it again
(`python3 deploy/grafana/generate.py`) rather than editing them. Every
metric a panel queries is checked against a running polylith by the
integration test `dashboards_and_alerts_query_exported_metrics`.
"""

import json
import pathlib

HERE = pathlib.Path(__file__).resolve().parent


def panel(n, title, exprs, unit="short", legend="{{instance}}"):
    targets = []
    for i, expr in enumerate(exprs if isinstance(exprs, list) else [exprs]):
        if isinstance(expr, tuple):
            expr, legend_i = expr
        else:
            legend_i = legend
        targets.append(
            {
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "expr": expr,
                "legendFormat": legend_i,
                "refId": chr(ord("A") + i),
            }
        )
    return {
        "id": n,
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": (n - 1) % 2 * 12, "y": (n - 1) // 2 * 8},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom"}},
        "targets": targets,
    }


def dashboard(uid, title, panels):
    return {
        "uid": uid,
        "title": title,
        "tags": ["ganglion"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "label": "Prometheus",
                }
            ]
        },
        "panels": [panel(i + 1, *p) for i, p in enumerate(panels)],
    }


def quantile(q, metric, by):
    return f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket[5m])))"


def requests(service_filter):
    return [
        (
            f'sum by (service) (rate(ganglion_http_requests_total{{{service_filter}}}[5m]))',
            "{{service}}",
        ),
        (
            f'sum by (service, status) (rate(ganglion_http_requests_total{{{service_filter}, status=~"5.."}}[5m]))',
            "{{service}} {{status}}",
        ),
    ]


def latency(service_filter):
    metric = "ganglion_http_request_duration_seconds"
    return [
        (
            f"histogram_quantile(0.5, sum by (service, le) (rate({metric}_bucket{{{service_filter}}}[5m])))",
            "p50 {{service}}",
        ),
        (
            f"histogram_quantile(0.99, sum by (service, le) (rate({metric}_bucket{{{service_filter}}}[5m])))",
            "p99 {{service}}",
        ),
    ]


def lag(groups):
    return (
        f'sum by (group, topic, partition) (ganglion_consumer_lag_records{{group=~"{groups}"}})',
        "{{group}} {{topic}}/{{partition}}",
    )


def dead_letters(groups):
    return (
        f'sum by (group, topic) (increase(ganglion_consumer_dead_letters_total{{group=~"{groups}"}}[1h]))',
        "{{group}} {{topic}}",
    )


DASHBOARDS = {
    "ganglion-edge.json": dashboard(
        "ganglion-edge",
        "Ganglion: edge (gateway, clientapi)",
        [
            # `client`: the monolith's client listener (clientapi and syncapi).
            ("Requests/s (and 5xx)", requests('service=~"gateway|clientapi|client"'), "reqps"),
            ("Request latency", latency('service=~"gateway|clientapi|client"'), "s"),
            (
                "Gateway: forwarded by upstream and outcome",
                ("sum by (service, outcome) (rate(ganglion_gateway_forwarded_total[5m]))", "{{service}} {{outcome}}"),
                "reqps",
            ),
            (
                "Ready replicas per service",
                ("max by (service) (ganglion_replicas_ready)", "{{service}}"),
            ),
            (
                "Read-your-writes wait",
                [
                    (quantile(0.5, "ganglion_clientapi_read_your_writes_wait_seconds", "instance"), "p50"),
                    (quantile(0.99, "ganglion_clientapi_read_your_writes_wait_seconds", "instance"), "p99"),
                ],
                "s",
            ),
            (
                "Internal gRPC calls and refusals",
                [
                    ("sum by (api, outcome) (rate(ganglion_grpc_calls_total[5m]))", "{{api}} {{outcome}}"),
                    ("sum(rate(ganglion_internal_calls_refused_total[5m]))", "refused"),
                ],
                "reqps",
            ),
        ],
    ),
    "ganglion-rooms.json": dashboard(
        "ganglion-rooms",
        "Ganglion: rooms (roomserver)",
        [
            (
                "Events persisted/s by outcome",
                ("sum by (outcome) (rate(ganglion_roomserver_events_total[5m]))", "{{outcome}}"),
                "ops",
            ),
            (
                "Input record duration",
                [
                    (quantile(0.5, "ganglion_roomserver_input_duration_seconds", "kind"), "p50 {{kind}}"),
                    (quantile(0.99, "ganglion_roomserver_input_duration_seconds", "kind"), "p99 {{kind}}"),
                ],
                "s",
            ),
            ("Consumer lag per partition", lag("(.*)roomserver")),
            ("Dead-lettered records (1 h)", dead_letters(".*")),
            (
                "Room writes from clients/s",
                ("sum(rate(ganglion_clientapi_room_writes_total[5m]))", "writes"),
                "ops",
            ),
            (
                "Records consumed/s by group",
                ("sum by (group) (rate(ganglion_consumer_records_total[5m]))", "{{group}}"),
                "ops",
            ),
        ],
    ),
    "ganglion-sync.json": dashboard(
        "ganglion-sync",
        "Ganglion: sync (syncapi)",
        [
            ("Requests/s (and 5xx)", requests('service="syncapi"'), "reqps"),
            ("Request latency", latency('service="syncapi"'), "s"),
            (
                "Long-polls woken/s",
                ("sum(rate(ganglion_syncapi_wakeups_total[5m]))", "woken"),
                "ops",
            ),
            (
                "Events consumed/s",
                ("sum by (instance) (rate(ganglion_syncapi_events_consumed_total[5m]))", "{{instance}}"),
                "ops",
            ),
            ("Consumer lag per partition", lag("(.*)syncapi.*")),
            ("Dead-lettered records (1 h)", dead_letters("(.*)syncapi.*")),
        ],
    ),
    "ganglion-federation.json": dashboard(
        "ganglion-federation",
        "Ganglion: federation (federationapi, federationsender)",
        [
            (
                "Queued PDUs per destination (top 20)",
                ("topk(20, max by (destination) (ganglion_federationsender_queued_pdus))", "{{destination}}"),
            ),
            (
                "Transactions/s: sent and failed",
                [
                    ("sum(rate(ganglion_federationsender_transactions_sent_total[5m]))", "sent"),
                    ("sum(rate(ganglion_federationsender_transactions_failed_total[5m]))", "failed"),
                ],
                "ops",
            ),
            (
                "PDUs queued/s (one per destination)",
                ("sum(rate(ganglion_federationsender_pdus_queued_total[5m]))", "queued"),
                "ops",
            ),
            (
                "Server key fetches by outcome",
                ("sum by (outcome) (rate(ganglion_server_key_fetches_total[5m]))", "{{outcome}}"),
                "ops",
            ),
            ("Requests/s (and 5xx)", requests('service=~"federationapi|federation"'), "reqps"),
            ("Consumer lag per partition", lag("(.*)federationsender.*")),
        ],
    ),
    "ganglion-accounts.json": dashboard(
        "ganglion-accounts",
        "Ganglion: accounts (userapi, keyserver)",
        [
            (
                "Logins and registrations/s",
                [
                    ("sum(rate(ganglion_userapi_logins_total[5m]))", "logins"),
                    ("sum(rate(ganglion_userapi_accounts_created_total[5m]))", "accounts created"),
                ],
                "ops",
            ),
            (
                "Password checks refused (queue full)",
                ("sum(rate(ganglion_userapi_password_queue_full_total[5m]))", "refused"),
                "ops",
            ),
            ("Requests/s (and 5xx)", requests('service=~"userapi|keyserver"'), "reqps"),
            (
                "Rows pruned/s",
                ("sum by (what) (rate(ganglion_pruned_rows_total[5m]))", "{{what}}"),
                "ops",
            ),
        ],
    ),
}

for name, board in DASHBOARDS.items():
    (HERE / name).write_text(json.dumps(board, indent=2) + "\n")
    print(f"wrote {name}")
