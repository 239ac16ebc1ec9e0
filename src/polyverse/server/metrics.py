"""Prometheus series of the server, in a registry of its own (one per app), served at /metrics.

Per method: requests by outcome, prompt and completion tokens, forward passes, time to first
token, request latency, decode speed (tokens/s), and per request and pass the tokens drafted, the
draft tokens accepted and the new tokens (histograms); per shared pass its rows and its requests;
plus the queue: requests waiting and decoding now, and requests refused because it was full.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
PER_PASS = (1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32)
ROWS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128)
SPEED = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONTENT_TYPE = CONTENT_TYPE_LATEST
disable_created_metrics()  # no *_created series: they double the exposition and say little here


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("polyverse_requests", "Generation requests finished, by method and outcome "
                                "(stop, length, cancelled, error)", ["method", "outcome"], registry=r)
        self.http = Counter("polyverse_http_responses", "HTTP responses by route and status", ["route", "status"], registry=r)
        self.tokens = Counter("polyverse_tokens", "Tokens by method and kind (prompt, completion)", ["method", "kind"], registry=r)
        self.passes = Counter("polyverse_forward_passes", "Decode forward passes by method", ["method"], registry=r)
        self.ttft = Histogram("polyverse_time_to_first_token_seconds", "From arrival to the first generated token",
                              ["method"], buckets=SECONDS, registry=r)
        self.latency = Histogram("polyverse_request_seconds", "From arrival to the last token", ["method"],
                                 buckets=SECONDS, registry=r)
        self.queue_wait = Histogram("polyverse_queue_wait_seconds", "From arrival to the first forward pass",
                                    ["method"], buckets=SECONDS, registry=r)
        self.speed = Histogram("polyverse_tokens_per_second", "Completion tokens per second of decoding, per request",
                               ["method"], buckets=SPEED, registry=r)
        self.accepted = Histogram("polyverse_accepted_tokens_per_pass", "New tokens accepted by one forward pass",
                                  ["method"], buckets=PER_PASS, registry=r)
        self.drafted = Histogram("polyverse_drafted_tokens_per_pass", "Draft tokens a request fed in one pass "
                                 "(after the pass's row budget)", ["method"], buckets=(0,) + PER_PASS, registry=r)
        self.accepted_draft = Histogram("polyverse_accepted_draft_tokens_per_pass", "Draft tokens of a request "
                                        "accepted by one pass", ["method"], buckets=(0,) + PER_PASS, registry=r)
        self.pass_rows = Histogram("polyverse_pass_rows", "Rows (tokens) of one shared forward pass: prompt chunks, "
                                   "pending tokens and drafts of every request in it", buckets=ROWS, registry=r)
        self.pass_seconds = Histogram("polyverse_pass_seconds", "Wall time of one shared pass: drafting, the forward, "
                                      "verification", buckets=(0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1, 2),
                                      registry=r)
        self.pass_requests = Histogram("polyverse_pass_requests", "Requests with rows in one shared forward pass",
                                       buckets=PER_PASS, registry=r)
        self.waiting = Gauge("polyverse_requests_waiting", "Requests queued for a decoding slot", registry=r)
        self.active = Gauge("polyverse_requests_active", "Requests holding a decoding slot", registry=r)
        self.kv_reserved = Gauge("polyverse_kv_tokens_reserved", "KV cache tokens (prompt plus max_tokens) reserved "
                                 "by the requests holding a slot", registry=r)
        self.kv_budget = Gauge("polyverse_kv_tokens_budget", "KV cache tokens the requests holding a slot may "
                               "reserve together (--kv-budget)", registry=r)
        self.rejected = Counter("polyverse_requests_rejected", "Requests refused with 429 because the queue was full",
                                registry=r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
