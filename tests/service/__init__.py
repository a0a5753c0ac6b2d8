"""Service tests: real servers and sockets on 127.0.0.1 in this process."""
