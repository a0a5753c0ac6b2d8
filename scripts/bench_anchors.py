"""Anchor echo servers for scripts/bench.py: what msgsrv is measured against.

Usage: python scripts/bench_anchors.py KIND --port PORT [--max-seconds S]

KIND is one of:
  threading-tcp   socketserver.ThreadingTCPServer, handler written the tutorial way
  threading-tcp-q1024
                  the same with a listen backlog of 1024 instead of 5, to tell
                  what the backlog costs apart from what the threads cost
  asyncio-tcp     asyncio.start_server with streams (read/write/drain)
  uvloop-tcp      uvloop's event loop with an asyncio.Protocol (data_received ->
                  transport.write), backlog 1024: the fast Python anchor
                  (needs uvloop; exits with status 3 without it)
  udp             socketserver.UDPServer (one datagram at a time)
  threading-udp   socketserver.ThreadingUDPServer (one thread per datagram)

The servers keep the stdlib defaults on purpose (listen backlog 5, one thread
per connection): they stand for what a reader would write from the docs.
They listen on 127.0.0.1 only, and end by themselves when the benchmark that
started them is gone or after --max-seconds, so a killed benchmark leaves no
server behind. SIGTERM ends them at once (the default action).
"""

import argparse
import asyncio
import os
import socketserver
import sys
import threading
import time

HOST = "127.0.0.1"


class TutorialEchoHandler(socketserver.BaseRequestHandler):
    """Echo every chunk back until the peer closes, as the socketserver docs teach."""

    def handle(self):
        while True:
            data = self.request.recv(65536)
            if not data:
                break
            self.request.sendall(data)


class DatagramEchoHandler(socketserver.BaseRequestHandler):
    """Send each datagram back to where it came from."""

    def handle(self):
        data, sock = self.request
        sock.sendto(data, self.client_address)


class DeepBacklogThreadingTCPServer(socketserver.ThreadingTCPServer):
    """ThreadingTCPServer with a listen backlog deep enough for a burst of 1000 clients."""

    request_queue_size = 1024


def serve_threading_tcp(port, server_class=socketserver.ThreadingTCPServer):
    """Serve TCP echo with one thread per connection until the process ends."""
    with server_class((HOST, port), TutorialEchoHandler) as server:
        server.serve_forever()


def serve_udp(port, threading_mixin=False):
    """Serve UDP echo, inline or with a thread per datagram, until the process ends."""
    cls = socketserver.ThreadingUDPServer if threading_mixin else socketserver.UDPServer
    with cls((HOST, port), DatagramEchoHandler) as server:
        server.serve_forever()


async def _stream_echo(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def _serve_asyncio(port):
    server = await asyncio.start_server(_stream_echo, HOST, port)
    async with server:
        await server.serve_forever()


def serve_asyncio_tcp(port):
    """Serve TCP echo with asyncio streams until the process ends."""
    asyncio.run(_serve_asyncio(port))


class EchoProtocol(asyncio.Protocol):
    """Echo with asyncio's callback interface, the fastest way to write it for uvloop."""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


def serve_uvloop_tcp(port):
    """Serve TCP echo with an asyncio Protocol on uvloop's loop until the process ends."""
    try:
        import uvloop
    except ImportError:
        print("uvloop is not installed", file=sys.stderr)
        sys.exit(3)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(loop.create_server(EchoProtocol, HOST, port, backlog=1024))
    loop.run_forever()


SERVERS = {
    "threading-tcp": serve_threading_tcp,
    "threading-tcp-q1024": lambda port: serve_threading_tcp(port, DeepBacklogThreadingTCPServer),
    "asyncio-tcp": serve_asyncio_tcp,
    "uvloop-tcp": serve_uvloop_tcp,
    "udp": serve_udp,
    "threading-udp": lambda port: serve_udp(port, threading_mixin=True),
}


def _watch_parent(parent_pid, max_seconds):
    # Runs in a daemon thread: a benchmark killed with SIGKILL cannot stop us,
    # so we notice that our parent changed (or our time is up) and leave.
    deadline = time.monotonic() + max_seconds
    while time.monotonic() < deadline and os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(0)


def main(argv=None):
    """Parse the command line and serve until terminated; returns only on error."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(SERVERS))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    args = parser.parse_args(argv)
    watchdog = threading.Thread(target=_watch_parent, args=(os.getppid(), args.max_seconds),
                                name="parent-watch", daemon=True)
    watchdog.start()
    SERVERS[args.kind](args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
