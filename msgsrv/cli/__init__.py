"""The command-line tools: msgsrv-client and its subcommands, msgsrvctl, man pages."""
