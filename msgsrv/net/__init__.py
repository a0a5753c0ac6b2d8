"""The server core: event loop and workers, transports, server classes, admission, handlers."""
