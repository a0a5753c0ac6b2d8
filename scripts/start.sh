#!/bin/sh
# Start msgsrv in the background: scripts/start.sh [-c CONFIG] (see msgsrvctl).
exec "$(dirname "$0")/msgsrvctl" start "$@"
