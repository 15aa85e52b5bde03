"""Webhook delivery against a real receiver on 127.0.0.1 that fails first (500s, then
connection refused) and succeeds later: every event arrives, signed, with the same id and
body on every attempt; each is acknowledged once; a sender restarted mid-retry, or one
that dies holding a claim, loses nothing."""

from __future__ import annotations

import signal
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
import requests
import sqlalchemy as sa

from meterkit_agent.signals import (
    Cap,
    SignatureError,
    SpendLevels,
    WebhookSender,
    WebhooksSettings,
    Where,
    cap_events,
    list_notifications,
    record,
    spend_events,
    verify,
)
from meterkit_agent.signals import deliveries as outbox_deliveries
from meterkit_agent.signals.outbox import deliveries_table
from tests.agent.conftest import Proc, wait_for
from tests.agent.signals.conftest import write
from tests.agent.signals.receiver import Receiver

SECRET = "whsec_delivery_test"
PERIOD = (1767225600000, 1769904000000)


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TEST_HOOK_SECRET", SECRET)
    return SECRET


@pytest.fixture
def receiver(secret: str) -> Iterator[Receiver]:
    made = Receiver(secret)
    yield made
    if made.server is not None:
        made.down()


def fast(url: str, lease_millis: int = 5000) -> WebhooksSettings:
    """Small waits, so retries happen within the test (nothing is asserted about time)."""
    return WebhooksSettings.model_validate(
        {
            "endpoints": [{"name": "crm", "url": url, "secret_env": "TEST_HOOK_SECRET", "timeout_millis": 2000}],
            "retry": {"initial_interval_millis": 20, "max_interval_millis": 200, "jitter_millis": 10},
            "poll_interval_millis": 20,
            "lease_millis": lease_millis,
        }
    )


def some_events(org: str = "org1", accounts: int = 1) -> list:  # type: ignore[type-arg]
    events = []
    for a in range(accounts):
        where = Where(org, f"acct{a}", PERIOD, 1767300000000)
        events += cap_events(where, Cap("api_calls", Decimal(1000)), 0, 1000)
        events += spend_events(where, SpendLevels((Decimal(100),), "USD"), 0, Decimal("150.00"))
    return events


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def rows(engine: sa.Engine) -> list[sa.Row]:  # type: ignore[type-arg]
    with engine.connect() as conn:
        return list(conn.execute(sa.select(deliveries_table)))


def all_delivered(engine: sa.Engine) -> bool:
    return all(r.status == "delivered" for r in rows(engine))


def test_an_event_survives_500s_a_receiver_that_is_down_and_a_sender_restart(engine: sa.Engine, secret: str) -> None:
    receiver = Receiver(SECRET, fail_first=3)  # 500, 500, 500, then down: connection refused
    settings = fast(receiver.url)
    with write(engine) as conn, conn.begin():
        recorded = record(conn, some_events(), settings.endpoints)
    assert len(recorded) == 3

    first = WebhookSender(engine, settings)
    first.start()
    wait_for(
        lambda: (
            receiver.stopped.is_set()
            and sum(1 for r in rows(engine) if r.last_error == "ConnectionError") >= 2
            and sum(r.attempts for r in rows(engine)) >= 5
        ),
        what="three 500s, then attempts refused while the receiver is down",
    )
    first.shutdown()  # the sender stops mid-retry ...
    assert not any(r.status == "delivered" for r in rows(engine))
    assert {r.last_error for r in rows(engine)} <= {"HTTP 500", "ConnectionError"}

    assert receiver.count(500) >= 3 and receiver.count(200) == 0
    receiver.up()  # ... the receiver comes back on the same port, a new sender takes over
    second = WebhookSender(engine, settings)
    second.start()
    wait_for(lambda: all_delivered(engine), what="every event delivered")
    second.shutdown()
    receiver.down()
    with requests.Session() as session:
        assert second.tick(session) == 0  # nothing is due any more: never sent again

    seen = receiver.snapshot()
    ids = {e.id for e in recorded}
    assert {s.event_id for s in seen} == ids
    assert Counter(s.event_id for s in seen if s.status == 200) == dict.fromkeys(ids, 1)  # acknowledged once each
    bodies = defaultdict(set)
    for s in seen:
        bodies[s.event_id].add(s.body)
        assert orjson.loads(s.body)["id"] == s.event_id  # the same id in the header and the body
    assert all(len(b) == 1 for b in bodies.values())  # every attempt sent the same bytes
    assert all(s.verified for s in seen)
    retried = [s for s in seen if s.status == 500]
    assert retried and all(s.event_id in ids for s in retried)

    # what a receiver must refuse: another secret, a body altered, an old timestamp
    sample = seen[-1]
    timestamp = int(sample.signature.split(",")[0][2:])
    with pytest.raises(SignatureError, match="no signature matches"):
        verify(sample.body, sample.signature, "whsec_wrong")
    with pytest.raises(SignatureError, match="no signature matches"):
        verify(sample.body.replace(b"acct0", b"acct1"), sample.signature, SECRET)
    with pytest.raises(SignatureError) as old:
        verify(sample.body, sample.signature, SECRET, tolerance=300, now=timestamp + 301)
    assert old.value.reason == "too_old"

    with engine.connect() as conn:
        listed = list_notifications(conn, "org1")
    assert {d["status"] for n in listed for d in n["deliveries"]} == {"delivered"}
    assert sum(d["attempts"] for n in listed for d in n["deliveries"]) >= 5 + len(ids)
    assert all(d["last_error"] is None and d["delivered"] for n in listed for d in n["deliveries"])


def test_a_claim_left_by_a_sender_that_died_is_taken_over(engine: sa.Engine, receiver: Receiver) -> None:
    settings = fast(receiver.url, lease_millis=3000)
    with write(engine) as conn, conn.begin():
        assert len(record(conn, some_events(), settings.endpoints)) == 3
    with engine.connect() as conn:
        (due, *_) = outbox_deliveries.due(conn, ["crm"], 2**62, 10)
    with write(engine) as conn, conn.begin():  # a sender claims it, then dies mid-send
        assert outbox_deliveries.claim(conn, due, "dead-sender", now_ms(), 300)

    sender = WebhookSender(engine, settings)
    with engine.connect() as conn:  # held: nobody else may send it while the claim lasts
        assert due.event_id not in {d.event_id for d in outbox_deliveries.due(conn, ["crm"], now_ms(), 10)}
    sender.start()
    wait_for(lambda: all_delivered(engine), what="the dead sender's delivery taken over")
    sender.shutdown()
    assert receiver.count(200) == 3 and {s.event_id for s in receiver.snapshot()} >= {due.event_id}
    with write(engine) as conn, conn.begin():  # the dead sender, back, cannot undo it
        assert not outbox_deliveries.reschedule(conn, due, "dead-sender", 0, "late")
        assert not outbox_deliveries.acknowledged(conn, due, "dead-sender", 0)


def test_two_senders_on_one_outbox_send_each_event_once(engine: sa.Engine, receiver: Receiver) -> None:
    settings = fast(receiver.url)
    with write(engine) as conn, conn.begin():
        recorded = record(conn, some_events(accounts=20), settings.endpoints)
    senders = [WebhookSender(engine, settings), WebhookSender(engine, settings)]
    for s in senders:
        s.start()
    wait_for(lambda: all_delivered(engine), what="every event delivered")
    for s in senders:
        s.shutdown()
    assert Counter(s.event_id for s in receiver.snapshot()) == {e.id: 1 for e in recorded}
    assert sum(s.counts["delivered"] for s in senders) == len(recorded)


def test_a_missing_secret_stops_the_sender_before_it_starts(engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_HOOK_SECRET", raising=False)
    with pytest.raises(ValueError, match="TEST_HOOK_SECRET"):
        WebhookSender(engine, fast("http://127.0.0.1:9/hook"))


def test_a_sender_process_killed_mid_send_loses_nothing(
    db_url: str, engine: sa.Engine, secret: str, receiver: Receiver, tmp_path: Path
) -> None:
    settings = fast(receiver.url, lease_millis=3000)
    with write(engine) as conn, conn.begin():
        recorded = record(conn, some_events(), settings.endpoints)
    receiver.hold_first = True  # the first request is in flight when its sender dies
    proc = Proc(
        [sys.executable, "-m", "tests.agent.signals.sender_proc", db_url, settings.model_dump_json()],
        tmp_path / "sender.log",
        env={"TEST_HOOK_SECRET": secret},
    ).start()
    wait_for(receiver.held.is_set, what="a request in flight")
    proc.kill(signal.SIGKILL)
    receiver.release.set()  # its answer (a 500) goes to a dead process
    claimed = [r for r in rows(engine) if r.lease_owner is not None]  # pending, no attempt recorded
    assert len(claimed) == 1 and claimed[0].status == "pending" and claimed[0].attempts == 0

    sender = WebhookSender(engine, settings)
    sender.start()
    wait_for(lambda: all_delivered(engine), what="every event delivered after the crash")
    sender.shutdown()
    seen = receiver.snapshot()
    assert Counter(s.event_id for s in seen if s.status == 200) == {e.id: 1 for e in recorded}
    assert [s.event_id for s in seen if s.status == 500] == [claimed[0].event_id]
    assert len({s.body for s in seen if s.event_id == claimed[0].event_id}) == 1
