"""msgsrv: a small, dependable, dependency-free multi-service network daemon."""

__version__ = "0.1.0"
