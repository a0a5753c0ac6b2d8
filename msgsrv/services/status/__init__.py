"""The status service: the report (sans-IO), framed and HTTP handlers, client."""
