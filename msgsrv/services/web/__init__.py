"""The web console (``handler = web``): a live status dashboard and the chat in a browser.

:mod:`.handler` (importable with the standard library alone: the daemon reads
its settings before it knows whether the ``web`` extra is installed) serves
HTTP and WebSocket on the worker pool.  The protocol glue is sans-IO, on the
python-hyper libraries of the extra: :mod:`.http` (h11) and :mod:`.websocket`
(wsproto).  :mod:`.assets` holds the page files, :mod:`.dashboard` the status
samples, :mod:`.login` the key login, :mod:`.sockets` what runs over a
WebSocket.  See docs/WEB.rst.
"""
