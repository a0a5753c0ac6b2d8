"""Chat on Redis with ``processes = 2``: every worker serves chat, rooms span the workers."""

import pytest

from msgsrv.client import ChatClient
from msgsrv.services.chat.protocol import Message
from msgsrv.services.status.client import StatusClient
from tests.conftest import wait_for
from tests.integration.test_redis_chat import events_until

pytestmark = pytest.mark.timeout(60)

CONFIG = """\
[msgsrv]
processes = 2
shutdown_timeout = 3

[service:chat]
handler = chat
backend = redis://127.0.0.1:{port}/0
presence_ttl = 2
redis_timeout = 1
line_rate = 0

[service:status]
handler = status
"""


def _chat_per_worker(daemon):
    with StatusClient(*daemon.listeners["status"], timeout=5) as client:
        document = client.status()
    return {w["pid"]: next((s["connections"] for s in w["services"] if s["name"] == "chat"),
                           None)
            for w in document["workers"]}


def test_chat_on_redis_runs_in_every_worker_and_rooms_span_them(tmp_path, daemon_factory,
                                                                 redis_server):  # noqa: F811
    redis_server.start()
    path = tmp_path / "server.ini"
    path.write_text(CONFIG.format(port=redis_server.port))
    daemon = daemon_factory(path)
    daemon.wait_listening(2)
    wait_for(lambda: daemon.log.count(" connected after ") >= 2, timeout=10,
             message="both workers connected to redis")
    clients = []
    try:
        while len(clients) < 12:  # until both workers hold chat clients
            clients.append(ChatClient(*daemon.listeners["chat"], "nick%d" % len(clients),
                                      timeout=5, keepalive=None))
            per_worker = wait_for(lambda: _spread(daemon, len(clients)), message="status")
            if len(clients) >= 2 and all(per_worker.values()):
                break
        assert len(per_worker) == 2 and all(per_worker.values()), per_worker
        for client in clients:
            client.join("ops")
        clients[0].say("to every worker")
        for client in clients[1:]:
            got = events_until(client, lambda e: isinstance(e, Message))
            assert got[-1].text == "to every worker"
    finally:
        for client in clients:
            client.close()
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.log


def _spread(daemon, count):
    per_worker = _chat_per_worker(daemon)
    return per_worker if sum(v or 0 for v in per_worker.values()) == count else None
