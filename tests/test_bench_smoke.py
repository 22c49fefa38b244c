"""The benchmark's own pieces: percentiles, the delivery corpus, importtime parsing, targets.

The full smoke run (`python -m bench --smoke`) starts Azurite and several processes and
runs in CI as `make bench-smoke`; these tests cover the parts that need no server.
"""

from __future__ import annotations

import json

from bench.corpus import (
    CLAIM_CHECK_EVERY,
    build_deliveries,
    clienttrack_request,
    make_customers,
    queued_event,
)
from bench.report import check_targets
from bench.startup import direct_dependencies, parse_importtime
from bench.stats import median, percentile, summarize
from devhost.clienttrack import event_shape_error
from shared.envelope import compute_event_id, decode_queue_text
from shared.signature import verify

IMPORTTIME_OUTPUT = """\
import time: self [us] | cumulative | imported package
import time:        90 |         90 |   _io
import time:       100 |        190 | encodings
import time:        50 |         50 |     werkzeug
import time:       300 |        350 |   azure.functions
import time:        10 |         10 |   azure
import time:       200 |        200 |     asyncio
import time:        40 |        240 |   shared.runtime
import time:        20 |        620 | webhook_ingest
"""


def test_percentile_nearest_rank() -> None:
    values = [float(number) for number in range(1, 101)]
    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([7.0], 0.99) == 7.0


def test_median_even_and_odd() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5


def test_summarize_milliseconds() -> None:
    summary = summarize([0.001, 0.002, 0.003, 0.004])
    assert summary.p50_ms == 2.0
    assert summary.max_ms == 4.0
    assert summary.mean_ms == 2.5


def test_corpus_claim_check_share() -> None:
    customers = make_customers(3)
    deliveries = build_deliveries(300, customers)
    large = [delivery for delivery in deliveries if delivery.claim_checked]
    assert len(large) == 300 // CLAIM_CHECK_EVERY
    assert all(len(delivery.body) > 48 * 1024 for delivery in large)
    assert all(queued_event(delivery).blob_name is not None for delivery in large)


def test_corpus_small_bodies_inline() -> None:
    deliveries = build_deliveries(99, make_customers(2))
    assert not any(delivery.claim_checked for delivery in deliveries)
    assert all(queued_event(delivery).blob_name is None for delivery in deliveries)


def test_corpus_event_ids_unique() -> None:
    customers = make_customers(4)
    first = build_deliveries(200, customers)
    second = build_deliveries(200, customers, first_index=1_000_000)
    ids = {compute_event_id(d.customer_id, d.body) for d in [*first, *second]}
    assert len(ids) == 400


def test_corpus_signatures_verify() -> None:
    customers = make_customers(2)
    keys = {customer.customer_id: customer.webhook_key for customer in customers}
    for delivery in build_deliveries(20, customers):
        verify(delivery.body, delivery.signature, [keys[delivery.customer_id]])


def test_corpus_envelope_round_trip() -> None:
    delivery = build_deliveries(1, make_customers(1))[0]
    event = queued_event(delivery)
    decoded = decode_queue_text(event.text)
    assert decoded.event_id == compute_event_id(delivery.customer_id, delivery.body)
    assert decoded.inline_body() == delivery.body


def test_clienttrack_request_shape() -> None:
    for delivery in build_deliveries(101, make_customers(2)):
        document = json.loads(clienttrack_request(queued_event(delivery)))
        assert event_shape_error(document) is None
        assert document["attempt"] == 1


def test_importtime_tree_nesting() -> None:
    roots = parse_importtime(IMPORTTIME_OUTPUT)
    assert [root.name for root in roots] == ["encodings", "webhook_ingest"]
    module = roots[1]
    assert [child.name for child in module.children] == [
        "azure.functions",
        "azure",
        "shared.runtime",
    ]
    assert module.children[0].children[0].name == "werkzeug"
    assert module.cumulative_us == 620


def test_importtime_direct_dependencies() -> None:
    assert direct_dependencies(parse_importtime(IMPORTTIME_OUTPUT)) == ["azure.functions"]


def test_targets_met_and_missed() -> None:
    result = {
        "delivery": {"modes": {"clean": {"ratio_devhost_vs_baseline": 0.9}}},
        "startup": {"modules": {"webhook_ingest": {"ratio": 1.3}}},
    }
    rows = {row["target"]: row["met"] for row in check_targets(result)}
    assert rows["delivery drain rate / baseline (clean)"] is True
    assert rows["import webhook_ingest / its dependencies"] is False
