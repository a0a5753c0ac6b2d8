"""Command-line options shared by the client subcommands."""


def add_connection_options(parser, auth=False):
    """Add --timeout (and, with ``auth``, --key / --keys-file) to a subcommand."""
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for the server (default: %(default)s)")
    if auth:
        parser.add_argument("--key", help="key name (or MSGSRV_KEY)")
        parser.add_argument("--keys-file",
                            help="file holding the key's secret (or MSGSRV_KEYS_FILE; "
                                 "MSGSRV_SECRET gives the secret directly)")
