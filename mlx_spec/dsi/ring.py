"""Addressed packets over mx.distributed's ring backend, relayed by the ranks in between.

The ring backend connects each rank only to its two ring neighbours (send/recv to any other rank
raises), so with N workers rank 0 reaches workers 1 and N directly and the others through them.
Every rank runs one listener thread per neighbour; a packet addressed to another rank is passed on
in the direction it was travelling. The sender picks the direction (rank 0 avoids ranks it knows
are dead; a worker answers back along the way the job came), so relays need no routing state.

A packet is one fixed-size int32 message [dest, src, kind, length, payload...] when the payload
fits, else that message followed by the rest of the payload: one message per hop for token blocks,
two for the drafter's probabilities. Each hop stores the whole packet before passing it on, so a
relay that dies loses whole packets, never half of one.

Sending is asynchronous: one sender thread per neighbour takes packets from its outbox in order (so
the two messages of a packet stay together). A send to a peer that just died can block inside the
ring backend for seconds; on its own thread it holds up only that link, never a listener (a relay
that stopped reading while forwarding to a dead peer looked hung) nor the orchestrator. A failed
send reports the link as lost, like a failed recv. A rank that leaves on purpose says goodbye
to its neighbours first, and they stop listening to it. Sends to one neighbour are serialized by a
lock Each thread uses its own CPU stream (streams belong to threads in MLX, and a blocked recv holds
its stream).

Waiting without spinning: the ring backend's socket thread polls a non-blocking socket in a loop
while a recv is pending (mlx/distributed/ring/ring.cpp, SocketThread::worker), so every listener
kept one thread spinning (measured here: 0.1-0.25 of a core each, idle, on 2 shared cores; with 3
workers 8 of them). A listener therefore first sleeps in select() on a duplicate of the backend's
socket for that neighbour (found by its ports in the hostfile) and posts the recv only once bytes
are there. Where the socket cannot be identified it falls back to posting the recv at once.
"""
from __future__ import annotations

import json
import os
import queue
import select
import socket
import threading
import time
from typing import Callable, Optional

import mlx.core as mx
import numpy as np

HEADER, PACKET_SIZE = 4, 256    # [dest, src, kind, payload length], then the payload

# packet kinds
JOB, RESULT, SHUTDOWN, ERROR, PEER_LOST, GOODBYE = 1, 2, 3, 4, 5, 6


def backend_sockets(rank: int, size: int) -> dict:
    """neighbour -> a duplicate of the ring backend's socket that recv(neighbour) reads, for
    select(). recv from the left neighbour reads the connection this rank accepted on its own
    address; recv from the right one (when it differs) reads the connection made to its address.
    Empty when the hostfile is unknown or lists several connections per rank."""
    try:
        with open(os.environ["MLX_HOSTFILE"]) as f:
            hosts = json.load(f)
        if len(hosts) != size or any(len(addresses) != 1 for addresses in hosts):
            return {}
        port = [int(addresses[0].rsplit(":", 1)[1]) for addresses in hosts]
    except (KeyError, OSError, ValueError, IndexError):
        return {}
    left, right = (rank - 1) % size, (rank + 1) % size
    found = {}
    for name in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else []:
        try:
            sock = socket.fromfd(int(name), socket.AF_INET, socket.SOCK_STREAM)
        except (OSError, ValueError):
            continue
        try:
            local, peer = sock.getsockname(), sock.getpeername()
        except OSError:
            sock.close()
            continue
        if local[1] == port[rank] and left not in found:
            found[left] = sock
        elif peer[1] == port[right] and right != left and right not in found:
            found[right] = sock
        else:
            sock.close()
    return found


def carries_traffic(rank: int, neighbour: int, size: int) -> bool:
    """Can packets ever come over this link? Every packet starts or ends at rank 0, so in a ring
    of 3 the link between the two workers is never used (rank 0 reaches both directly, and a
    worker whose direct link broke is dead). Not listening there matters: a pending recv of the
    ring backend keeps a thread busy (measured here: 0.1 to 0.2 of a core each, idle)."""
    return rank == 0 or neighbour == 0 or size > 3


def closing_order(rank: int, size: int) -> tuple[int, int]:
    """Workers stop in decreasing order of this key, farthest from rank 0 first, so that every
    acknowledgement still finds live relays on its way back."""
    return min(rank, size - rank), rank


class _ThreadStreams(threading.local):
    def get(self):
        if not hasattr(self, "stream"):
            self.stream = mx.new_stream(mx.cpu)
        return self.stream


def ring_hops(src: int, dest: int, size: int, step: int) -> list[int]:
    """The ranks a packet visits from src to dest going `step` (+1 or -1) around the ring,
    dest included."""
    hops, rank = [], src
    while rank != dest:
        rank = (rank + step) % size
        hops.append(rank)
    return hops


class RingNode:
    """One rank's end: send addressed packets, relay others' packets, hand its own to `deliver`.

    deliver(src, kind, payload: np.ndarray int32, via: neighbour it came from) runs on a listener
    thread; link_lost(neighbour, reason) is called once per neighbour whose connection breaks
    (on a listener or sender thread)."""

    def __init__(self, group, deliver: Callable, link_lost: Callable):
        self.group = group
        self.rank, self.size = group.rank(), group.size()
        self.left, self.right = (self.rank - 1) % self.size, (self.rank + 1) % self.size
        self.neighbours = sorted({self.left, self.right} - {self.rank})
        self.deliver, self.link_lost = deliver, link_lost
        self.lost: set[int] = set()
        self._lost_lock = threading.Lock()
        self._streams = _ThreadStreams()
        self._outboxes = {n: queue.Queue() for n in self.neighbours}
        self._readable = backend_sockets(self.rank, self.size)
        self._listeners = {n: threading.Thread(target=self._listen, args=(n,), daemon=True,
                                               name=f"ring-{self.rank}-from-{n}")
                           for n in self.neighbours if carries_traffic(self.rank, n, self.size)}
        senders = [threading.Thread(target=self._send_loop, args=(n,), daemon=True,
                                    name=f"ring-{self.rank}-to-{n}") for n in self.neighbours]
        for thread in [*self._listeners.values(), *senders]:
            thread.start()

    # -- sending --------------------------------------------------------------------------------
    def send(self, dest: int, kind: int, payload, via: int) -> None:
        """Queue a packet to `dest` through neighbour `via` (dropped if that link is down)."""
        payload = np.asarray(payload, dtype=np.int32).ravel()
        room = PACKET_SIZE - HEADER
        first = np.zeros(PACKET_SIZE, dtype=np.int32)
        first[:HEADER] = [dest, self.rank, kind, payload.size]
        first[HEADER:HEADER + min(room, payload.size)] = payload[:room]
        rest = payload[room:] if payload.size > room else None
        self._outboxes[via].put([mx.array(first)] + ([mx.array(rest)] if rest is not None else []))

    def _send_loop(self, neighbour: int) -> None:
        outbox = self._outboxes[neighbour]
        while True:
            parts = outbox.get()
            try:
                if neighbour not in self.lost:
                    for part in parts:
                        mx.eval(mx.distributed.send(part, neighbour, group=self.group,
                                                    stream=self._streams.get()))
            except RuntimeError as exc:
                self._mark_lost(neighbour, str(exc))
            finally:
                outbox.task_done()

    def flush(self, timeout: float) -> None:
        """Wait (at most `timeout` s) until every queued packet has been handed to the sockets."""
        deadline = time.monotonic() + timeout
        while any(box.unfinished_tasks for box in self._outboxes.values()):
            if time.monotonic() > deadline:
                return
            time.sleep(0.001)

    def wait_listeners(self, timeout: float, skip=frozenset()) -> None:
        """Wait (at most `timeout` s in all) until every listener but those of `skip` has
        returned: each does after its neighbour's goodbye or a lost link. A process that exits
        while a listener is still inside MLX (receiving the goodbye that follows the last
        acknowledgement) aborts in C++ teardown ("terminate called without an active
        exception", seen once in CI). A listener blocked on a hung neighbour (skip) is harmless:
        it waits, it does not run."""
        deadline = time.monotonic() + timeout
        for neighbour, thread in self._listeners.items():
            if neighbour not in skip:
                thread.join(max(0.0, deadline - time.monotonic()))

    def _mark_lost(self, neighbour: int, reason: str, report: bool = True) -> None:
        with self._lost_lock:
            if neighbour in self.lost:
                return
            self.lost.add(neighbour)
        if report:
            self.link_lost(neighbour, reason)

    def goodbye(self) -> None:
        """Before this rank exits: tell the neighbours that leave after it (closing_order) to stop
        listening to it, so its sockets close with no recv pending on the other side (the ring
        backend reports those loudly). Neighbours that left before it are not written to."""
        mine = closing_order(self.rank, self.size)
        for neighbour in self.neighbours:
            if (neighbour not in self.lost and closing_order(neighbour, self.size) < mine
                    and carries_traffic(neighbour, self.rank, self.size)):
                self.send(neighbour, GOODBYE, [], neighbour)

    def toward(self, dest: int, avoid=frozenset()) -> Optional[tuple[int, list[int]]]:
        """(first hop, ranks in between) of the shortest way to dest that passes no rank in
        `avoid`; None when both ways are blocked."""
        best = None
        for step in (1, -1):
            hops = ring_hops(self.rank, dest, self.size, step)
            between = hops[:-1]
            if any(rank in avoid for rank in between):
                continue
            if best is None or len(hops) < len(best[1]) + 1:
                best = (hops[0], between)
        return best

    # -- receiving ------------------------------------------------------------------------------
    def _recv(self, shape, neighbour: int) -> mx.array:
        array = mx.distributed.recv(shape, mx.int32, neighbour, group=self.group,
                                    stream=self._streams.get())
        mx.eval(array)
        return array

    def _listen(self, neighbour: int) -> None:
        onward = self.right if neighbour == self.left else self.left
        waiter = self._readable.get(neighbour)
        try:
            while True:
                if waiter is not None:  # sleep until the neighbour has written (or closed)
                    select.select([waiter], [], [])
                first = self._recv((PACKET_SIZE,), neighbour)
                header = np.array(first[:HEADER]).tolist()
                dest, src, kind, length = header
                room = PACKET_SIZE - HEADER
                rest = self._recv((length - room,), neighbour) if length > room else None
                if dest != self.rank:  # relay it on in the direction it travels (if that link is
                    # down the packet is lost: rank 0 re-sends jobs that went through a dead rank)
                    self._outboxes[onward].put([first] + ([rest] if rest is not None else []))
                    continue
                if kind == GOODBYE:
                    self._mark_lost(neighbour, "goodbye", report=False)
                    return
                payload = np.array(first[HEADER:HEADER + min(length, room)])
                if rest is not None:
                    payload = np.concatenate([payload, np.array(rest)])
                self.deliver(src, kind, payload, neighbour)
        except RuntimeError as exc:  # the ring backend lost this neighbour
            self._mark_lost(neighbour, str(exc))
