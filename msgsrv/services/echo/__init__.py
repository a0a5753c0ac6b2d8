"""The echo service (RFC 862) over TCP and UDP: handlers and client."""
