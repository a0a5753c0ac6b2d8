"""Echo (RFC 862) over TCP and UDP: every byte received is sent back."""

from msgsrv.plugin import DatagramHandler, Handler


class EchoHandler(Handler):
    """TCP echo.  Memory stays bounded: reading pauses while the echo backlog
    is above ``max_pending_output``; a half-close still gets every echo back."""

    sticky = True

    def data_received(self, data):
        self.conn.send(data)


class EchoDatagramHandler(DatagramHandler):
    """UDP echo: each datagram is answered with the same bytes."""

    def handle(self):
        self.reply(self.data)
