"""Acks: as few basic.ack frames as the deliveries allow, never one past a delivery that
is not done (messaging/acks.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from billing_worker.messaging.acks import Acks


@dataclass(eq=False)  # hashable by identity, as aiormq's channels
class FakeChannel:
    """Records the frames; what RabbitMQ would then count as acknowledged."""

    frames: list[tuple[int, bool]] = field(default_factory=list)
    fail: bool = False

    async def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        if self.fail:
            raise ConnectionError("channel closed")
        self.frames.append((delivery_tag, multiple))

    def acknowledged(self, delivered: int) -> set[int]:
        tags: set[int] = set()
        for tag, multiple in self.frames:
            tags |= set(range(1, tag + 1)) if multiple else {tag}
        return tags & set(range(1, delivered + 1))


@dataclass
class FakeMessage:
    channel: Any
    delivery_tag: int | None


async def ack_all(acks: Acks, channel: FakeChannel, tags: list[int]) -> None:
    await asyncio.gather(*(acks.ack(FakeMessage(channel, t)) for t in tags))  # type: ignore[arg-type]


async def test_a_batch_done_in_one_turn_is_one_multiple_frame() -> None:
    channel, acks = FakeChannel(), Acks()
    await ack_all(acks, channel, list(range(1, 33)))
    assert channel.frames == [(32, True)]
    assert channel.acknowledged(32) == set(range(1, 33))


async def test_a_delivery_in_progress_is_never_covered_by_a_multiple_frame() -> None:
    channel, acks = FakeChannel(), Acks()
    await ack_all(acks, channel, [1, 2, 4, 5])  # 3 is a slow provider call
    assert 3 not in channel.acknowledged(5)
    assert channel.acknowledged(5) == {1, 2, 4, 5}  # 4 and 5 did not wait for 3
    assert channel.frames == [(2, True), (4, False), (5, False)]
    await ack_all(acks, channel, [3, 6])
    assert channel.frames[3:] == [(6, True)]  # up to 6: 4 and 5 were already acknowledged
    assert channel.acknowledged(6) == set(range(1, 7))


async def test_deliveries_acknowledged_out_of_order_across_turns() -> None:
    channel, acks = FakeChannel(), Acks()
    done: set[int] = set()
    for tag in [3, 1, 2, 6, 5, 4]:
        await ack_all(acks, channel, [tag])
        done.add(tag)
        assert channel.acknowledged(6) == done  # every done one, and nothing else
    assert channel.frames == [(3, False), (1, True), (2, True), (6, False), (5, False),
                              (4, True)]  # fmt: skip


async def test_each_channel_numbers_its_own_deliveries() -> None:
    first, second, acks = FakeChannel(), FakeChannel(), Acks()
    await ack_all(acks, first, [1, 2])
    await ack_all(acks, second, [2])  # its 1 is still in progress
    assert first.frames == [(2, True)]
    assert second.frames == [(2, False)]


async def test_a_closed_channel_fails_the_ack_as_message_ack_would() -> None:
    channel, acks = FakeChannel(fail=True), Acks()
    try:
        await acks.ack(FakeMessage(channel, 1))  # type: ignore[arg-type]
    except ConnectionError:
        pass
    else:
        raise AssertionError("the ack of a closed channel succeeded")


async def test_a_message_without_a_delivery_tag_sends_nothing() -> None:
    channel, acks = FakeChannel(), Acks()
    await acks.ack(FakeMessage(channel, None))  # type: ignore[arg-type]
    assert channel.frames == []


@dataclass(eq=False)
class SlowChannel(FakeChannel):
    """A channel whose first frame waits until released while later ones go straight
    through: aiormq's write queue was full for the first, and a slot had freed when the
    next came (asyncio.Queue lets a new put() past a putter that was woken but has not
    run yet)."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    calls: int = 0

    async def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        self.calls += 1
        if self.calls == 1:
            await self.gate.wait()
        await super().basic_ack(delivery_tag, multiple)


def acknowledged_twice(frames: list[tuple[int, bool]]) -> list[int]:
    """Tags a frame acknowledged that an earlier frame had acknowledged already (what
    RabbitMQ refuses with PRECONDITION_FAILED - unknown delivery tag)."""
    seen: set[int] = set()
    twice = []
    for tag, multiple in frames:
        if tag in seen:
            twice.append(tag)
        seen |= set(range(1, tag + 1)) if multiple else {tag}
    return twice


async def test_a_multiple_frame_never_overtakes_a_lone_ack_still_being_sent() -> None:
    channel, acks = SlowChannel(), Acks()
    first = asyncio.ensure_future(ack_all(acks, channel, [2]))  # alone: 1 in progress
    await asyncio.sleep(0.01)  # its frame is stuck in the channel
    later = asyncio.ensure_future(ack_all(acks, channel, [1, 3]))  # would cover 2 as well
    await asyncio.sleep(0.01)
    channel.gate.set()
    await asyncio.gather(first, later)
    assert acknowledged_twice(channel.frames) == [], channel.frames
    assert channel.acknowledged(3) == {1, 2, 3}


async def test_a_second_ack_of_a_message_sends_nothing() -> None:
    channel, acks = FakeChannel(), Acks()
    await ack_all(acks, channel, [1, 2])
    await ack_all(acks, channel, [2])
    await ack_all(acks, channel, [4])
    await ack_all(acks, channel, [4])
    assert acknowledged_twice(channel.frames) == []
    assert channel.frames == [(2, True), (4, False)]
