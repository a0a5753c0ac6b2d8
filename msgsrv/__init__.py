"""msgsrv: a small, dependable, dependency-free multi-service network daemon."""

__version__ = "0.1.0"

from msgsrv import _moved

_moved.install()
