"""Acknowledgements in as few `basic.ack` frames as the deliveries allow.

RabbitMQ numbers a channel's deliveries 1, 2, 3, ... and `basic.ack(tag, multiple=True)`
acknowledges every delivery up to `tag` at once. The worker acknowledges a message only
once it is done with it (its reply, retry copy or dead letter confirmed), and messages
finish out of order, so `Acks` keeps, per channel, the highest tag below which every
delivery is done (the watermark):

- the acks asked for during one turn of the event loop are sent together at the end of
  it: one `multiple=True` frame for the done deliveries that extend the watermark (a
  coalesced batch: one frame instead of 32);
- a done delivery above one still in progress (a slow provider call) is acknowledged on
  its own at once, so a slow message never holds others' acks back or uses up the
  prefetch;
- a `multiple=True` frame never reaches past a delivery that is not done: nothing is
  acknowledged before its work is.

`await acks.ack(message)` returns once the frame that carries it went to the connection,
as `message.ack()` does. A channel that closed and opened again numbers from 1: it is a
new channel object, with a watermark of its own.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from aio_pika.abc import AbstractIncomingMessage


class _ChannelAcks:
    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.watermark = 0  # every delivery tag <= watermark is acknowledged
        self.done: set[int] = set()  # done, not acknowledged yet
        self.alone: set[int] = set()  # acknowledged on their own, above the watermark
        self.pending: asyncio.Future[None] | None = None
        self.frames = 0  # basic.ack frames sent (for tests and curiosity)
        self.acked = 0  # deliveries acknowledged
        self._flushing: set[asyncio.Task[None]] = set()
        self._sending = asyncio.Lock()

    def add(self, tag: int) -> asyncio.Future[None] | None:
        """Queue the ack of `tag`; None when it is acknowledged already (asked twice)."""
        if tag <= self.watermark or tag in self.alone or tag in self.done:
            return None
        self.done.add(tag)
        if self.pending is None:
            loop = asyncio.get_running_loop()
            self.pending = loop.create_future()
            loop.call_soon(self._start_flush)
        return self.pending

    def _start_flush(self) -> None:
        task = asyncio.ensure_future(self.flush())
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    def _plan(self) -> list[tuple[int, bool]]:
        """The frames to send now: (tag, multiple)."""
        frames: list[tuple[int, bool]] = []
        highest_done = 0
        while (nxt := self.watermark + 1) in self.done or nxt in self.alone:
            self.watermark = nxt
            if nxt in self.done:
                self.done.discard(nxt)
                highest_done = nxt
            else:
                self.alone.discard(nxt)
        if highest_done:
            frames.append((highest_done, True))
        for tag in sorted(self.done):  # above a delivery still in progress
            frames.append((tag, False))
            self.alone.add(tag)
        self.done.clear()
        return frames

    async def flush(self) -> None:
        # One flush at a time, each planning only once the one before has sent its
        # frames: a `multiple` frame must never overtake a lone ack of a tag it covers
        # (that tag would then be acknowledged twice: a channel error).
        async with self._sending:
            future, self.pending = self.pending, None
            if future is None:  # an earlier flush took these acks along
                return
            await self._send(future)

    async def _send(self, future: asyncio.Future[None]) -> None:
        try:
            for tag, multiple in self._plan():
                await self.channel.basic_ack(delivery_tag=tag, multiple=multiple)
                self.frames += 1
        except BaseException as error:
            if not future.done():
                future.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return
        if not future.done():
            future.set_result(None)


class Acks:
    """The worker's acknowledgements, batched per channel (see the module docstring)."""

    def __init__(self) -> None:
        self._channels: weakref.WeakKeyDictionary[Any, _ChannelAcks] = weakref.WeakKeyDictionary()

    def of(self, channel: Any) -> _ChannelAcks:
        state = self._channels.get(channel)
        if state is None:
            state = self._channels[channel] = _ChannelAcks(channel)
        return state

    async def ack(self, message: AbstractIncomingMessage) -> None:
        tag = message.delivery_tag
        if tag is None:  # no_ack consumers have nothing to acknowledge
            return
        state = self.of(message.channel)
        queued = state.add(tag)
        if queued is None:  # as `message.ack()` of FastStream: a second ack does nothing
            return
        state.acked += 1
        await asyncio.shield(queued)
