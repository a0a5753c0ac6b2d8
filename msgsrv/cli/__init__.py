"""The command-line tools (being moved here from msgsrv/client/cli_*.py)."""
