"""What crosses the wire, for both ends: frames, frame stream, auth, client TLS, errors."""
