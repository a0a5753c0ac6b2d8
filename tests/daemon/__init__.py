"""Daemon tests: the daemon, msgsrvctl and the command-line tools as subprocesses."""
