"""One web console connection: HTTP/1.1 requests routed by a table, then perhaps a WebSocket.

Every request passes the same checks, in order, before its route runs: a
``Host`` the service answers to (421 otherwise: DNS rebinding), a known path
(404) and method (405), the page's own origin for anything but a plain read
(403: cross-site requests and WebSocket hijacking), and a login when the
service needs one (a page redirects to ``/login``, the rest get 401).  Every
response carries the same security headers, among them a
Content-Security-Policy that allows scripts from the console's own files only.

Timers, one per purpose: ``request_timeout`` from a request's first byte to
its last (408, slow clients), ``keepalive_timeout`` between requests.
"""

import json
import logging
import urllib.parse
from collections import namedtuple

from msgsrv.plugin import format_peer
from msgsrv.services.chat.handler import ChatService
from msgsrv.services.status.handler import CONTENT_TYPES as METRIC_TYPES, render
from msgsrv.wire import auth
from . import login
from .handler import is_loopback
from .http import CLOSED, NEED_DATA, HttpConnection, HttpError, Limits
from .sockets import ChatSocket, SocketLink, StatusSocket
from .websocket import WebSocket, accept

log = logging.getLogger("msgsrv.web")

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = (
    ("Content-Security-Policy", CSP), ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"), ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"), ("Cross-Origin-Resource-Policy", "same-origin"),
)
_JSON = "application/json"

#: A route: the methods it answers, what answers it (``_do_<action>``), the page or
#: format it serves, and whether it is open without a login.
Route = namedtuple("Route", "methods action arg public")
_READ = ("GET", "HEAD")
ROUTES = {
    "/": Route(_READ, "page", "dashboard.html", False),
    "/chat": Route(_READ, "page", "chat.html", False),
    "/login": Route(_READ, "page", "login.html", True),
    "/metrics": Route(_READ, "metrics", "prometheus", False),
    "/status": Route(_READ, "metrics", "json", False),
    "/status.json": Route(_READ, "metrics", "json", False),
    "/ws/status": Route(("GET",), "socket", "status", False),
    "/ws/chat": Route(("GET",), "socket", "chat", False),
    "/auth/challenge": Route(("POST",), "challenge", None, True),
    "/auth/login": Route(("POST",), "login", None, True),
    "/auth/logout": Route(("POST",), "logout", None, True),
}
_STATIC = Route(_READ, "static", None, True)
_STATIC_PREFIX = "/static/"

Response = namedtuple("Response", "status headers body")


def _text(status, message, headers=()):
    return Response(status, list(headers) + [("Content-Type", "text/plain; charset=utf-8"),
                                             ("Cache-Control", "no-store")],
                    ("%s\n" % message).encode("utf-8"))


def _json(status, document, headers=()):
    return Response(status, list(headers) + [("Content-Type", _JSON),
                                             ("Cache-Control", "no-store")],
                    json.dumps(document).encode("utf-8"))


def split_host(value):
    """``(name, port)`` of a Host header value (port "" when absent)."""
    if value.startswith("["):
        name, _, rest = value.partition("]")
        return name + "]", rest[1:] if rest.startswith(":") else ""
    name, _, port = value.partition(":")
    return name, port


class Exchange:
    """The HTTP side of one WebHandler (see the module docstring)."""

    def __init__(self, handler):
        self.handler = handler
        self.conn = handler.conn
        self.service = handler.service
        self.options = handler.options
        options = self.options
        self.http = HttpConnection(Limits(options["max_request_line"], options["max_headers"],
                                          options["max_request_body"]))
        self.socket = None  # a sockets._Socket once upgraded
        self._held = False  # a delayed answer (failed login) is pending
        self._request_timer = self._keepalive_timer = None

    # -- what the handler forwards ----------------------------------------------

    def connection_made(self):
        self._watch()

    def data_received(self, data):
        if self.socket is not None:
            self.socket.received(data)
            return
        self.http.feed(data)
        self._serve()

    def eof_received(self):
        if self.socket is not None:
            self.socket.received(b"")
            return False
        self.http.feed(b"")
        self._serve()
        return False

    def timed_out(self, reason):
        """The idle timeout: True if handled here (a WebSocket closes with a close frame)."""
        if self.socket is None:
            return False
        self.socket.timed_out(reason)
        return True

    def server_closing(self):
        if self.socket is not None:
            self.socket.server_closing()

    def connection_lost(self):
        if self.socket is not None:
            self.socket.lost()

    # -- the request loop -------------------------------------------------------

    def _serve(self):
        while self.socket is None and not self._held and not self.conn.closing:
            try:
                request = self.http.next_request()
            except HttpError as exc:
                self._fail(exc)
                return
            if request is NEED_DATA:
                self._watch()
                return
            if request is CLOSED:
                self.conn.close("closed by peer")
                return
            self._stop_timers()
            response = self._answer(request)
            if response is not None:
                self._send(response)
                if not self.http.next_cycle():
                    self.conn.close("closed")
                    return

    def _fail(self, error):
        log.info("%s: %s bad request: %d %s", self.handler.server.name,
                 format_peer(self.conn.address), error.status, error.message)
        self.handler.server.counters.incr("http_errors")
        out = self.http.error_response(error, SECURITY_HEADERS)
        if out:
            self.conn.send(out)
        self.conn.close("http %d" % error.status)

    def _send(self, response):
        headers = list(response.headers) + list(SECURITY_HEADERS)
        self.conn.send(self.http.respond(response.status, headers, response.body))

    def _answer(self, request):
        self.handler.server.counters.incr("requests")
        try:
            return self._route(request)
        except HttpError as exc:
            return _text(exc.status, exc.message)
        except Exception:
            log.exception("%s: handler error for %s %s %s", self.handler.server.name,
                          format_peer(self.conn.address), request.method, request.path[:200])
            self.handler.server.counters.incr("errors")
            return _text(500, "internal server error (logged)")

    # -- timers ---------------------------------------------------------------

    def _watch(self):
        if self.http.in_request:
            self._cancel("_keepalive_timer")
            if self._request_timer is None:
                self._request_timer = self.conn.call_later(self.options["request_timeout"],
                                                           self._request_timed_out)
        elif self._keepalive_timer is None and self._request_timer is None:
            self._keepalive_timer = self.conn.call_later(self.options["keepalive_timeout"],
                                                         self._keepalive_over)

    def _cancel(self, name):
        timer = getattr(self, name)
        if timer is not None:
            timer.cancel()
            setattr(self, name, None)

    def _stop_timers(self):
        self._cancel("_request_timer")
        self._cancel("_keepalive_timer")

    def _request_timed_out(self):
        self._request_timer = None
        self._fail(HttpError(408, "request not complete within %gs"
                             % self.options["request_timeout"]))

    def _keepalive_over(self):
        self._keepalive_timer = None
        self.conn.close("keep-alive timeout")

    # -- checks every request passes ------------------------------------------

    def _route(self, request):
        if not self._host_allowed(request.header("host").lower()):
            raise HttpError(421, "this server does not answer to Host %r"
                            % request.header("host")[:80])
        route = _STATIC if request.path.startswith(_STATIC_PREFIX) else ROUTES.get(request.path)
        if route is None:
            raise HttpError(404, "no page %s; try / or /chat" % request.path[:200])
        if request.method not in route.methods:
            raise HttpError(405, "%s does not take %s" % (request.path, request.method))
        self._check_origin(request, route)
        if self.service.access_required and not route.public and not self._identity(request):
            return self._login_needed(request, route)
        return getattr(self, "_do_" + route.action)(request, route.arg)

    def _host_allowed(self, host):
        name, port = split_host(host)
        allowed = self.options["allowed_hosts"]
        if allowed:
            return host in allowed or name in allowed
        if not is_loopback(self.options["host"]):
            return True
        bound = str(self.handler.server.server_address[1])
        default = "443" if self.handler.server.tls is not None else "80"
        loopback = {"localhost", "127.0.0.1", "[::1]", self.options["host"].lower()}
        return (name in loopback or name.startswith("127.")) and (port or default) == bound

    def own_origin(self, request):
        """The origin of the pages this connection serves (scheme and Host)."""
        scheme = "https" if self.handler.server.tls is not None else "http"
        return "%s://%s" % (scheme, request.header("host").lower())

    def _check_origin(self, request, route):
        # A plain read cannot do harm across sites; anything else must come from our pages.
        # A client without an Origin is not a browser page, which always sends one.
        origin = request.header("origin")
        if (request.method not in _READ or route.action == "socket") and origin \
                and origin.lower() != self.own_origin(request):
            self.handler.server.counters.incr("refused_origin")
            raise HttpError(403, "cross-origin request from %s refused" % origin[:100])

    def _identity(self, request):
        token = login.cookie_token(request.header("cookie"))
        name = self.service.logins.identity(token) if token else None
        if name is None and request.header("authorization"):
            name = self.service.logins.basic(request.header("authorization"))
            if name is None:
                self.handler.server.auth_failed(self.conn.address)
        return name

    def _login_needed(self, request, route):
        if route.action == "page":
            return Response(303, [("Location", "/login?next=" + urllib.parse.quote(request.path)),
                                  ("Cache-Control", "no-store")], b"")
        headers = [("WWW-Authenticate", 'Basic realm="msgsrv"')] if route.action == "metrics" \
            else []
        return _text(401, "log in first: /login", headers)

    # -- routes ---------------------------------------------------------------

    def _do_page(self, request, name):
        return self._asset(request, self.service.assets[name], None)

    def _do_static(self, request, _):
        asset = self.service.assets.get(request.path[len(_STATIC_PREFIX):])
        if asset is None or asset.name.endswith(".html"):
            raise HttpError(404, "no file %s" % request.path[:200])
        return self._asset(request, asset, request.query.get("v"))

    def _asset(self, request, asset, version):
        headers = [("ETag", asset.etag), ("Cache-Control", asset.cache_control(version))]
        if asset.matches(request.header("if-none-match")):
            return Response(304, headers, b"")
        return Response(200, headers + [("Content-Type", asset.content_type)], asset.body)

    def _do_metrics(self, request, fmt):
        body = render(self.handler.server, fmt)
        return Response(200, [("Content-Type", METRIC_TYPES[fmt]), ("Cache-Control", "no-store")],
                        body)

    def _do_challenge(self, request, _):
        return _json(200, {"scheme": auth.SCHEME, "nonce": self.service.logins.challenge()})

    def _do_login(self, request, _):
        left = self.handler.server.auth_penalty_left(self.conn.address)
        if left is not None:
            return _text(429, "too many failed logins: try again in %d s" % (left + 1),
                         [("Retry-After", str(int(left) + 1))])
        form = self._json_body(request)
        token = self.service.logins.login(form.get("key"), form.get("nonce"), form.get("proof"))
        if token is None:
            return self._login_failed(form.get("key"))
        log.info("%s: %s logged in as %s", self.handler.server.name,
                 format_peer(self.conn.address), form["key"])
        cookie = login.set_cookie(token, self.options["session_lifetime"],
                                  self.handler.server.tls is not None)
        return _json(200, {"key": form["key"]}, [("Set-Cookie", cookie)])

    def _json_body(self, request):
        try:
            form = json.loads(request.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise HttpError(400, "the body must be a JSON object") from None
        if not isinstance(form, dict):
            raise HttpError(400, "the body must be a JSON object")
        return form

    def _login_failed(self, key):
        log.warning("%s: failed login from %s (key %r)", self.handler.server.name,
                    format_peer(self.conn.address), key if isinstance(key, str) else None)
        self.handler.server.auth_failed(self.conn.address)
        self._held = True  # answered later, without a thread waiting: guessing costs time
        self.conn.pause_reading()
        self.conn.call_later(auth.FAILURE_DELAY, self._answer_failed_login)
        return None

    def _answer_failed_login(self):
        self._held = False
        self._send(_json(403, {"code": "auth-failed", "message": "login failed"}))
        if not self.http.next_cycle():
            self.conn.close("closed")
            return
        self.conn.resume_reading()
        self._serve()

    def _do_logout(self, request, _):
        token = login.cookie_token(request.header("cookie"))
        if token:
            self.service.logins.logout(token)
        cookie = login.set_cookie(None, 0, self.handler.server.tls is not None)
        return _json(200, {"logged_out": True}, [("Set-Cookie", cookie)])

    def _do_socket(self, request, kind):
        headers = accept(request)
        if kind == "chat":
            chat = self.service.sibling(self.options["chat"])
            if not isinstance(chat, ChatService):
                raise HttpError(503, "the chat service %r is not running"
                                % self.options["chat"] if self.options["chat"]
                                else "this console has no chat (chat is empty)")
        self.conn.send(self.http.switch_protocol(headers))
        link = SocketLink(self.conn, WebSocket(self.options["max_message"]))
        self.socket = (ChatSocket(self.handler, link, chat) if kind == "chat"
                       else StatusSocket(self.handler, link))
        self.handler.server.counters.incr("websockets_" + kind)
        self.socket.start()
        trailing = self.http.trailing_data
        if trailing:
            self.socket.received(trailing)
        return None
