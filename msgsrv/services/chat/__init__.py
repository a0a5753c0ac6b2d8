"""The chat service: line protocol (sans-IO), shared state, handler and service object, client."""
