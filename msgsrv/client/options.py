"""Command-line options shared by the client subcommands."""


def add_connection_options(parser, auth=False):
    """Add --timeout, the TLS options (and, with ``auth``, --key / --keys-file) to a subcommand."""
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for the server (default: %(default)s)")
    parser.add_argument("--tls", action="store_true",
                        help="connect with TLS (implied by --ca-file or --client-cert)")
    parser.add_argument("--ca-file", help="PEM CA certificates that signed the server's "
                                          "certificate (default: the system's)")
    parser.add_argument("--client-cert", help="PEM client certificate (mutual TLS)")
    parser.add_argument("--client-key", help="PEM key of --client-cert (if not in it)")
    if auth:
        parser.add_argument("--key", help="key name (or MSGSRV_KEY)")
        parser.add_argument("--keys-file",
                            help="file holding the key's secret (or MSGSRV_KEYS_FILE; "
                                 "MSGSRV_SECRET gives the secret directly)")


def tls_options(args):
    """The TLS keyword arguments of the clients, from parsed options."""
    return {"tls": args.tls, "ca_file": args.ca_file, "client_cert": args.client_cert,
            "client_key": args.client_key}
