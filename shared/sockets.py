"""ZeroMQ plumbing: endpoint names, and thin typed PUSH/PULL/PUB/SUB wrappers (sync and asyncio).

Every frame is one shared.codec message. A frame that does not decode, or decodes to a type the
socket does not expect, is logged and dropped: a stray or hostile sender must never kill a
process. Sends never block: a peer that is gone must not hang us (the caller learns from the
return value, and liveness is judged by heartbeats elsewhere).
"""
from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time

import zmq
import zmq.asyncio

from shared import codec
from shared.security import UnsafePath, curve_keys, private_dir

log = logging.getLogger("ferry.sockets")


class _Guard:
    """What every socket this process opens gets: a frame size limit and, over tcp, the CURVE keys. Set once by
    configure() at start-up (services.runtime.start_service)."""

    max_frame_bytes = 64 * 1024 * 1024
    curve: tuple[bytes, bytes] | None = None  # the cluster's (public, secret) key pair
    keys_dir = ""


def configure(settings) -> None:
    """Check the run directory (or load the tcp keys) before anything binds; raises UnsafePath."""
    _Guard.max_frame_bytes = settings.max_frame_bytes
    base = run_dir(settings)
    if base.startswith("tcp://"):
        if not settings.curve_keys_dir:
            raise UnsafePath("tcp endpoints need --curve-keys-dir (a private directory holding the cluster's "
                             "CURVE key, made there on first use): unauthenticated tcp would let anyone who "
                             "reaches the ports drive the server")
        _Guard.curve, _Guard.keys_dir = curve_keys(settings.curve_keys_dir), settings.curve_keys_dir
    else:
        private_dir(base)


# With run_dir = "tcp://HOST:BASE", every endpoint gets a fixed port above BASE.
_TCP_PORT = {"scheduler": 0, "runner_out": 1, "stats": 2, "detokenizer": 3}
_TCP_RANGE = {"runner": (10, 90), "tokenizer": (100, 900), "gateway": (1000, 1000)}


def run_dir(settings) -> str:
    """Where ipc sockets live. Processes started by hand agree on it through the HTTP port."""
    return settings.run_dir or os.path.join(tempfile.gettempdir(), f"ferry-{os.getuid()}-{settings.port}")


def endpoint(settings, name: str, index: int | None = None) -> str:
    """The address of one named socket: ipc://RUN_DIR/name[.index] or tcp://HOST:BASE+offset."""
    base = run_dir(settings)
    if index is not None:  # in both modes: a forged id must not make a process open sockets without bound
        start, size = _TCP_RANGE[name]
        if not 0 <= index < size:
            raise ValueError(f"{name} index {index} out of range (0 to {size - 1})")
    if base.startswith("tcp://"):
        host, port = base[len("tcp://"):].rsplit(":", 1)
        offset = _TCP_PORT[name] if index is None else _TCP_RANGE[name][0] + index
        return f"tcp://{host}:{int(port) + offset}"
    leaf = name if index is None else f"{name}.{index}"
    return f"ipc://{os.path.join(base, leaf)}"


def _secure(sock: zmq.Socket, kind: int, addr: str, bind: bool) -> None:
    if kind in (zmq.PULL, zmq.SUB):
        # A peer that sends a bigger frame is disconnected before the frame is buffered whole.
        sock.setsockopt(zmq.MAXMSGSIZE, _Guard.max_frame_bytes)
    if addr.startswith("tcp://"):
        if _Guard.curve is None:
            raise UnsafePath(f"{addr}: tcp sockets need the CURVE keys (--curve-keys-dir)")
        public, secret = _Guard.curve
        if bind:  # the binder is the CURVE server; a client that lacks the key fails the handshake
            sock.curve_server = True
            sock.curve_secretkey = secret
            sock.curve_publickey = public
        else:
            sock.curve_serverkey = public
            sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
    elif addr.startswith("ipc://"):
        private_dir(os.path.dirname(addr[len("ipc://"):]))  # connecting into someone else's directory is no safer


def _open(ctx, kind: int, addr: str, bind: bool, immediate: bool = False) -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)  # never hang at exit on undelivered messages
    try:
        _secure(sock, kind, addr, bind)
    except BaseException:
        sock.close(0)
        raise
    if kind in (zmq.PUSH, zmq.PULL):
        # No high-water mark on the pipeline's data paths: ZeroMQ's default (1000 messages each side) makes a
        # non-blocking send fail once a slow reader (the gateway while a thousand streams open) falls that far
        # behind, and a lost output leaves its request waiting forever. Queues grow instead; the reader catches up.
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
    if immediate:
        sock.setsockopt(zmq.IMMEDIATE, 1)
    if bind:
        sock.bind(addr)
        if addr.startswith("ipc://"):
            os.chmod(addr[len("ipc://"):], 0o600)  # the directory keeps others out; the file does too
    else:
        sock.connect(addr)
    return sock


def _decode(frame: bytes, expect, where: str):
    try:
        return codec.decode(frame, expect=expect)
    except codec.DecodeError as e:
        log.warning("dropped a malformed frame on %s (%d bytes): %s", where, len(frame), e)
        return None


class _Sender:
    def __init__(self, sock: zmq.Socket):
        self.sock = sock

    def send(self, msg) -> bool:
        """Queue one message; False when no peer can take it now (an `immediate` socket with no peer
        connected; PUSH queues have no size limit, PUB drops what slow subscribers cannot take)."""
        try:
            sent = self.sock.send(codec.encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            return False
        # An asyncio socket does not raise: it hands back a future, already failed when no peer could take it.
        if isinstance(sent, asyncio.Future) and sent.done() and sent.exception() is not None:
            if isinstance(sent.exception(), zmq.Again):
                return False
            raise sent.exception()
        return True

    def close(self):
        self.sock.close(0)


class PushSocket(_Sender):
    """PUSH. immediate=True: queue only to peers that are connected now (round-robin over live
    workers; a dead worker gets nothing) instead of holding messages for a peer that may return."""

    def __init__(self, ctx: zmq.Context, addr: str, bind: bool = False, immediate: bool = False):
        super().__init__(_open(ctx, zmq.PUSH, addr, bind, immediate))


class PubSocket(_Sender):
    def __init__(self, ctx: zmq.Context, addr: str):
        super().__init__(_open(ctx, zmq.PUB, addr, bind=True))


class _Receiver:
    def __init__(self, sock, addr: str, expect):
        self.sock, self.addr, self.expect = sock, addr, expect

    def close(self):
        self.sock.close(0)


class PullSocket(_Receiver):
    """PULL (bind by default: the long-lived fan-in side binds)."""

    def __init__(self, ctx: zmq.Context, addr: str, expect=None, bind: bool = True):
        super().__init__(_open(ctx, zmq.PULL, addr, bind), addr, expect)

    def recv(self, timeout: float | None):
        """One well-formed message, or None when none came within timeout seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self.sock.poll(None if left is None else int(left * 1000)):
                return None
            msg = _decode(self.sock.recv(), self.expect, self.addr)
            if msg is not None:
                return msg

    def drain(self, limit: int = 10_000) -> list:
        """Every message waiting now, without blocking."""
        out = []
        for _ in range(limit):
            try:
                frame = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            msg = _decode(frame, self.expect, self.addr)
            if msg is not None:
                out.append(msg)
        return out


class AsyncPullSocket(_Receiver):
    """asyncio PULL/SUB for the gateway: recv() awaits the next well-formed message."""

    def __init__(self, ctx: zmq.asyncio.Context, addr: str, expect=None, bind: bool = True,
                 kind: int = zmq.PULL):
        sock = _open(ctx, kind, addr, bind)
        if kind == zmq.SUB:
            sock.setsockopt(zmq.SUBSCRIBE, b"")
        super().__init__(sock, addr, expect)

    async def recv(self):
        while True:
            msg = _decode(await self.sock.recv(), self.expect, self.addr)
            if msg is not None:
                return msg

    async def recv_batch(self, limit: int) -> list:
        """The next frame and those queued behind it, up to limit frames, as well-formed messages (maybe none).

        Awaiting recv() on a socket with frames queued returns without yielding to the event loop, so a reader
        that loops on it starves every other task while a backlog lasts; a reader of batches yields between them."""
        frames = [await self.sock.recv()]
        while len(frames) < limit:
            ready = self.sock.recv(zmq.NOBLOCK)  # a done future: the frame, or zmq.Again when none is queued
            if ready.exception() is not None:
                break
            frames.append(ready.result())
        return [m for m in (_decode(f, self.expect, self.addr) for f in frames) if m is not None]

    def waiting(self) -> bool:
        """A frame is queued here now: its sender spoke, and this process has not read it yet."""
        return bool(self.sock.get(zmq.EVENTS) & zmq.POLLIN)


class AsyncPushSocket(_Sender):
    """asyncio PUSH; send() is non-blocking and says at once whether a peer took the message."""

    def __init__(self, ctx: zmq.asyncio.Context, addr: str, immediate: bool = False):
        super().__init__(_open(ctx, zmq.PUSH, addr, False, immediate))

    def connected(self) -> bool:
        """Whether a send now would find a peer (an `immediate` socket is writable only with one connected)."""
        return bool(self.sock.getsockopt(zmq.EVENTS) & zmq.POLLOUT)


class Peers:
    """Lazily connected PUSH sockets keyed by an id (reply routes to gateways by gateway id)."""

    def __init__(self, ctx: zmq.Context, address_of):
        self.ctx, self.address_of, self.socks = ctx, address_of, {}

    def send(self, key, msg) -> bool:
        sock = self.socks.get(key)
        if sock is None:
            try:
                addr = self.address_of(key)
            except (ValueError, KeyError, TypeError) as e:  # an id no peer can have (a forged frame's)
                log.warning("dropped a %s for peer %r: %s", type(msg).__name__, key, e)
                return False
            sock = self.socks[key] = PushSocket(self.ctx, addr)
        return sock.send(msg)

    def close(self):
        for s in self.socks.values():
            s.close()
