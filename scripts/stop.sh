#!/bin/sh
# Stop msgsrv gracefully: scripts/stop.sh [-c CONFIG] (see msgsrvctl).
exec "$(dirname "$0")/msgsrvctl" stop "$@"
