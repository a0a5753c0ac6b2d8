"""The command service: allow-list (sans-IO), child processes, handler, service object, client."""
