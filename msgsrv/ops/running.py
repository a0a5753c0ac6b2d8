"""The daemon's running services, in one thread-safe place the status service can read.

A service object sees it as its ``directory`` (:meth:`Registry.service` finds
a sibling by name); a server running without a daemon gets a
msgsrv.net.service.Solo.
"""

import collections
import threading
import time

_NONE = frozenset()


class Registry:
    """Running servers by service name, in start order.

    The daemon adds and removes servers (and sets ``server.registry`` to
    itself); any thread may read a snapshot with :meth:`servers` and the
    listening addresses with :meth:`addresses`.
    """

    def __init__(self):
        self.started = time.time()
        #: With several worker processes: what gathers the others' status (else None).
        self.peers = None
        self._lock = threading.Lock()
        self._servers = collections.OrderedDict()
        self._addresses = {}
        #: ``{name: DisabledService}``: the optional services left out (msgsrv.config).
        self.disabled = {}
        #: The last reload: ``{"time": epoch, "outcome": "accepted"|"refused",
        #: "detail": text}``, or None before the first.
        self.last_reload = None

    def add(self, server):
        """Register a running (bound) server under its ``name`` (replacing one of that name);
        its service object, if any, sees this registry as its ``directory``."""
        server.registry = self
        service = getattr(server, "service", None)
        if service is not None:
            service.directory = self
        with self._lock:
            self._servers[server.name] = server
            self._index()

    def service(self, name):
        """The service object of the running server called ``name``, or None."""
        server = self.get(name)
        return getattr(server, "service", None)

    def note_reload(self, outcome, detail):
        """Remember the outcome of a reload (``accepted`` or ``refused``) and its summary."""
        self.last_reload = {"time": time.time(), "outcome": outcome, "detail": detail}

    def remove(self, name):
        """Unregister and return the server called ``name`` (None if unknown)."""
        with self._lock:
            server = self._servers.pop(name, None)
            self._index()
            return server

    def addresses(self, transport):
        """The ``(host, port)`` pairs the registered servers of ``transport`` listen on.

        A frozenset, the same object until the registry changes (cheap to
        read per datagram, and to tell whether it changed).
        """
        return self._addresses.get(transport, _NONE)

    def _index(self):
        by_transport = collections.defaultdict(set)
        for server in self._servers.values():
            by_transport[server.config.transport].add(tuple(server.server_address[:2]))
        self._addresses = {transport: frozenset(pairs) for transport, pairs in by_transport.items()}

    def get(self, name):
        """The server called ``name``, or None."""
        with self._lock:
            return self._servers.get(name)

    def servers(self):
        """A snapshot list of the registered servers."""
        with self._lock:
            return list(self._servers.values())

    def clear(self):
        """Unregister everything; return the servers that were registered."""
        with self._lock:
            servers = list(self._servers.values())
            self._servers.clear()
            self._index()
        return servers

    def __contains__(self, name):
        with self._lock:
            return name in self._servers

    def __len__(self):
        with self._lock:
            return len(self._servers)

