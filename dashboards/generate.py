#!/usr/bin/env python3
"""Writes confab's Grafana dashboards (dashboards/*.json). Run: python3 dashboards/generate.py

Every query uses a templated Prometheus datasource. tests/metrics.rs checks that each metric
named here is exported by the server or defined as a recording rule in prometheus/rules.yml.
"""
import json
import os

DS = {"type": "prometheus", "uid": "${datasource}"}
RI = "$__rate_interval"


def q(expr, legend):
    return {"expr": expr, "legendFormat": legend, "datasource": DS}


def quantiles(metric, by=""):
    by_l = f"le, {by}" if by else "le"
    suffix = f" {{{{{by}}}}}" if by else ""
    return [q(f"histogram_quantile({p}, sum by ({by_l}) (rate({metric}_bucket[{RI}])))", f"p{int(p*100)}{suffix}")
            for p in (0.5, 0.95, 0.99)]


def panel(title, targets, unit="short", thresholds=None, kind="timeseries", desc=""):
    steps = [{"color": "green", "value": None}]
    for value, color in thresholds or []:
        steps.append({"color": color, "value": value})
    return {
        "type": kind,
        "title": title,
        "description": desc,
        "datasource": DS,
        "targets": [dict(t, refId=chr(65 + i)) for i, t in enumerate(targets)],
        "fieldConfig": {"defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}},
                        "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max"]}}
        if kind == "timeseries" else {},
    }


def dashboard(uid, title, panels):
    for i, p in enumerate(panels):
        p["id"] = i + 1
        p["gridPos"] = {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i // 2) * 8}
    return {
        "uid": uid,
        "title": title,
        "tags": ["confab"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [{
            "name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "refresh": 1,
        }]},
        "panels": panels,
    }


LATENCY = dashboard("confab-latency", "confab / Latency & SLOs", [
    panel("Time to first token", quantiles("confab_ttft_seconds"), "s", [(1, "yellow"), (2, "red")],
          desc="From a turn's start to its first delta. SLO: p95 < 2 s."),
    panel("Turn duration", quantiles("confab_turn_duration_seconds"), "s", [(30, "yellow"), (60, "red")]),
    panel("Inter-token gap", quantiles("confab_inter_token_seconds"), "s", [(0.2, "yellow"), (0.5, "red")]),
    panel("Turns by outcome", [q(f"sum by (outcome) (rate(confab_turns_total[{RI}]))", "{{outcome}}")], "ops"),
    panel("Turn error ratio (SLO 99%)", [q("confab:turn_errors:ratio_rate5m", "5m"),
                                         q("confab:turn_errors:ratio_rate1h", "1h"),
                                         q("confab:turn_errors:ratio_rate6h", "6h")],
          "percentunit", [(0.01, "red")]),
    panel("Turn error-budget burn rate", [q("confab:turn_errors:ratio_rate1h / 0.01", "1h burn"),
                                          q("confab:turn_errors:ratio_rate6h / 0.01", "6h burn")],
          "short", [(6, "yellow"), (14.4, "red")], desc="1 = spending the budget exactly over 28 days."),
    panel("HTTP availability (SLO 99.9%)", [q("confab:availability:ratio_rate5m", "availability")],
          "percentunit", [(0.999, "green")]),
    panel("HTTP p95 by route", [q(f"histogram_quantile(0.95, sum by (le, route) "
                                  f"(rate(confab_http_request_duration_seconds_bucket[{RI}])))", "{{route}}")], "s"),
])

COST = dashboard("confab-cost", "confab / Cost & tokens", [
    panel("Spend rate by model (USD/hour)",
          [q(f"sum by (model) (rate(confab_cost_usd_total[{RI}])) * 3600", "{{model}}")], "currencyUSD"),
    panel("Spend over the last 24 h by model",
          [q("sum by (model) (increase(confab_cost_usd_total[24h]))", "{{model}}")], "currencyUSD",
          kind="bargauge"),
    panel("Tokens per second", [q(f"sum by (model, direction) (rate(confab_tokens_total[{RI}]))",
                                  "{{model}} {{direction}}")], "short"),
    panel("Cost per turn (USD)", [q(f"sum(rate(confab_cost_usd_total[{RI}])) / sum(rate(confab_turns_total[{RI}]))",
                                    "USD/turn")], "currencyUSD"),
    panel("Provider attempts by outcome", [q(f"sum by (provider, outcome) (rate(confab_provider_attempts_total[{RI}]))",
                                             "{{provider}} {{outcome}}")], "ops"),
    panel("Retries and fallbacks", [q(f"sum by (provider) (rate(confab_provider_retries_total[{RI}]))", "retry {{provider}}"),
                                    q(f"sum by (chain) (rate(confab_provider_fallbacks_total[{RI}]))", "fallback {{chain}}")],
          "ops"),
    panel("Cache savings (USD/hour)", [q(f"sum(rate(confab_cache_saved_usd_total[{RI}])) * 3600", "saved")],
          "currencyUSD"),
    panel("Cache hit ratio by layer",
          [q(f"sum by (layer) (rate(confab_cache_lookups_total{{result=\"hit\"}}[{RI}])) / "
             f"sum by (layer) (rate(confab_cache_lookups_total[{RI}]))", "{{layer}}")], "percentunit"),
    panel("Circuit breakers (0 closed, 1 open, 2 half-open)",
          [q("max by (provider) (confab_provider_circuit_state)", "{{provider}}")], "short", [(1, "red")]),
    panel("Spend over the last 24 h by tenant",
          [q("sum by (tenant) (increase(confab_tenant_cost_usd_total[24h]))", "{{tenant}}")], "currencyUSD",
          kind="bargauge", desc="Settled against each tenant's usd_per_day budget (UTC day)."),
    panel("Limit refusals by tenant and limit",
          [q(f"sum by (tenant, limit) (rate(confab_rate_limited_total[{RI}]))", "{{tenant}} {{limit}}"),
           q(f"sum by (reason) (rate(confab_auth_failures_total[{RI}]))", "auth {{reason}}")], "ops"),
])

REALTIME = dashboard("confab-realtime", "confab / Realtime & RAG", [
    panel("Open WebSocket sessions", [q("sum(confab_ws_sessions)", "sessions"),
                                      q(f"sum(rate(confab_ws_connections_total[{RI}]))", "new/s")], "short"),
    panel("Rooms", [q("sum(confab_rooms)", "rooms")], "short"),
    panel("Events sent by type", [q(f"sum by (type) (rate(confab_ws_events_sent_total[{RI}]))", "{{type}}")], "ops"),
    panel("Drops and slow consumers", [q(f"sum(rate(confab_ws_outbound_dropped_total[{RI}]))", "dropped frames"),
                                       q(f"sum(rate(confab_ws_slow_consumer_disconnects_total[{RI}]))", "slow consumers")],
          "ops", [(0.01, "red")]),
    panel("Closes, resumes and errors", [q(f"sum by (reason) (rate(confab_ws_closes_total[{RI}]))", "close {{reason}}"),
                                         q(f"sum by (result) (rate(confab_ws_resumes_total[{RI}]))", "resume {{result}}"),
                                         q(f"sum by (code) (rate(confab_ws_errors_total[{RI}]))", "error {{code}}")], "ops"),
    panel("Embedding queue depth", [q("sum by (priority) (confab_embed_queue_depth)", "{{priority}}")], "short"),
    panel("Embedding latency and batch size",
          quantiles("confab_embed_duration_seconds")[1:2]
          + [q(f"histogram_quantile(0.5, sum by (le) (rate(confab_embed_batch_size_bucket[{RI}])))", "median batch")],
          "s"),
    panel("Vector search latency", quantiles("confab_vector_search_duration_seconds", "backend"), "s",
          [(0.005, "yellow"), (0.05, "red")]),
    panel("Ingestion", [q(f"sum by (outcome) (rate(confab_ingest_documents_total[{RI}]))", "documents {{outcome}}"),
                        q(f"sum(rate(confab_ingest_chunks_total[{RI}]))", "chunks")], "ops"),
])

here = os.path.dirname(os.path.abspath(__file__))
# The Helm chart ships the same files (scripts/check-helm.sh fails if they differ).
chart = os.path.join(here, "..", "helm", "confab", "files", "dashboards")
for name, d in [("confab-latency.json", LATENCY), ("confab-cost.json", COST), ("confab-realtime.json", REALTIME)]:
    for folder in (here, chart):
        with open(os.path.join(folder, name), "w") as f:
            json.dump(d, f, indent=2)
            f.write("\n")
    print("wrote", name)
