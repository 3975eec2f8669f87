"""The event bus behind ``GET /v1/events``: each stream sends its account's events once, in seq
order, from memory while it keeps up and from the store when it is further behind; the store is
read once for all the streams, not once for each."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from wml_backend import eventbus
from wml_backend.eventbus import EventBus
from wml_backend.rundb import SqliteRunStore


@pytest.fixture
def store(tmp_path):
    store = SqliteRunStore(tmp_path / "wml.db")
    yield store
    store.close()


class CountingStore:
    """The real store, counting the reads of its event log (a spy: every call goes through)."""

    def __init__(self, store: SqliteRunStore):
        self.store, self.reads = store, {"events": 0, "event_log": 0}

    def __getattr__(self, name):
        if name in self.reads:
            self.reads[name] += 1
        return getattr(self.store, name)


def record(store, count: int) -> None:
    for i in range(count):
        store.add_event("alice" if i % 2 == 0 else "bob", {"type": "note", "i": i})


async def receive(bus: EventBus, account: str, count: int, after=None) -> list:
    """The first ``count`` events a stream of ``account`` sends (heartbeats skipped)."""
    stream = (await bus.subscribe(account, after)).stream(heartbeat=0.05)
    got = []
    async for sent in stream:
        if sent is not None:
            got.append(sent)
        if len(got) == count:
            break
    await stream.aclose()
    return got


def test_a_stream_far_behind_what_memory_holds_reads_the_store_then_memory_and_misses_nothing(store, monkeypatch):
    monkeypatch.setattr(eventbus, "RECENT_EVENTS", 4)
    monkeypatch.setattr(eventbus, "BATCH", 3)
    bus = EventBus(store)
    bus.start()
    try:
        record(store, 20)
        bus.poke()

        async def main():
            return await receive(bus, "alice", 10, after=0)
        got = asyncio.run(main())
    finally:
        bus.close()
    expected = store.events(0, "alice", 100)
    assert [sent.seq for sent in got] == [seq for seq, _ in expected]
    assert [sent.event for sent in got] == [event for _, event in expected]
    assert all(json.loads(sent.text) == sent.event and sent.account == "alice" for sent in got)


def test_streams_that_keep_up_are_sent_from_memory_and_the_log_is_read_once_for_all(store):
    counting = CountingStore(store)
    bus = EventBus(counting)
    bus.start()

    async def main():
        streams = [asyncio.create_task(receive(bus, "alice", 5)) for _ in range(20)]
        while bus.subscribers < len(streams):  # every stream is subscribed, and waits
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # each has read what there was (nothing) and waits
        counting.reads.update(events=0, event_log=0)
        record(store, 10)
        bus.poke()
        return await asyncio.wait_for(asyncio.gather(*streams), 10)
    try:
        received = asyncio.run(main())
    finally:
        bus.close()
    expected = [seq for seq, _ in store.events(0, "alice")]
    assert all([sent.seq for sent in got] == expected for got in received)
    assert counting.reads["events"] == 0, "a stream that kept up read the store"
    assert counting.reads["event_log"] <= 10  # once per wake of the bus: not once per stream


def test_with_no_stream_the_log_is_looked_at_once_a_poll_not_at_each_change_and_a_later_stream_misses_nothing(store):
    counting = CountingStore(store)
    counting.reads["latest_event"] = 0
    bus = EventBus(counting)
    bus.start()
    try:
        started, looked = time.monotonic(), counting.reads["latest_event"]
        for _ in range(50):  # the changes of a busy backend that nobody streams
            record(store, 1)
            bus.poke()
        polls = (time.monotonic() - started) / eventbus.POLL_S
        assert counting.reads["latest_event"] - looked <= polls + 2, "the log was read at each change"

        async def main():
            stream = asyncio.create_task(receive(bus, "alice", 2))
            while not bus.subscribers:
                await asyncio.sleep(0.01)
            record(store, 3)  # alice, bob, alice
            bus.poke()
            return await asyncio.wait_for(stream, 10)
        got = asyncio.run(main())
    finally:
        bus.close()
    assert [sent.event["i"] for sent in got] == [0, 2]
