"""Running the daemon: config and settings, start-up checks, daemon loop, pidfile, privileges."""
