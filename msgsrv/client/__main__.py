"""``python -m msgsrv.client``: the client command line (:mod:`msgsrv.cli.client`)."""

import sys

from msgsrv.cli.client import main

if __name__ == "__main__":
    sys.exit(main())
