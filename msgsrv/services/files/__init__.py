"""The file service: operations (sans-IO), path sandbox, root state, transfers, handler, client."""
