"""Command-line options shared by the client subcommands."""

from msgsrv.client.base import DEFAULT_TIMEOUT
from msgsrv.client.framed import (CLI_NAMES, DEFAULT_HELLO_TIMEOUT, ENV_KEY, ENV_KEYS_FILE,
                                  resolve_credentials)
from msgsrv.wire.errors import AuthError


def add_connection_options(parser, auth=False, hello=True, tls=True, timeout_help=None):
    """Add --timeout, --hello-timeout (with ``hello``), the TLS options (with ``tls``)
    and, with ``auth``, --key / --keys-file to a subcommand.  With ``timeout_help``
    --timeout defaults to None (a subcommand that also runs on many hosts chooses)."""
    if timeout_help is None:
        parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                            help="seconds to wait for the server (default: %(default)s)")
    else:
        parser.add_argument("--timeout", type=float, help=timeout_help)
    if hello:
        parser.add_argument("--hello-timeout", type=float, default=DEFAULT_HELLO_TIMEOUT,
                            help="seconds the server may take to greet us before we decide it "
                                 "is not a msgsrv service (default: %(default)s)")
    if tls:
        parser.add_argument("--tls", action="store_true",
                            help="connect with TLS (implied by --ca-file or --client-cert)")
        parser.add_argument("--ca-file", help="PEM CA certificates that signed the server's "
                                              "certificate (default: the system's)")
        parser.add_argument("--client-cert", help="PEM client certificate (mutual TLS)")
        parser.add_argument("--client-key", help="PEM key of --client-cert (if not in it)")
    if auth:
        parser.add_argument("--key", help="key name (or %s; not needed when the keys file "
                                          "holds one key)" % ENV_KEY)
        parser.add_argument("--keys-file",
                            help="file holding the key's secret (or %s; MSGSRV_SECRET gives "
                                 "the secret directly)" % ENV_KEYS_FILE)


def tls_options(args):
    """The TLS keyword arguments of the clients, from parsed options."""
    return {"tls": args.tls, "ca_file": args.ca_file, "client_cert": args.client_cert,
            "client_key": args.client_key}


def wait_timeout(args):
    """``--timeout`` for one host: what was given, else the default."""
    return DEFAULT_TIMEOUT if args.timeout is None else args.timeout


def client_options(args):
    """The keyword arguments of a framed client: timeouts, TLS and (if the subcommand
    takes them) the credentials, resolved with messages naming the CLI options."""
    options = dict(tls_options(args), timeout=wait_timeout(args),
                   hello_timeout=args.hello_timeout)
    if hasattr(args, "key"):
        options["key_name"], options["secret"] = resolve_credentials(
            args.key, None, args.keys_file, names=CLI_NAMES)
    return options


def missing_key(address):
    """The AuthError for a service at ``address`` that needs a key when none was given."""
    return AuthError("auth-failed", "%s needs a key: give --key and --keys-file (or %s and %s)"
                     % (address, ENV_KEY, ENV_KEYS_FILE))


def check_key(client, address):
    """Close ``client`` and raise :func:`missing_key` if it has no identity and the
    service does not serve anonymous clients (its hello says which)."""
    if client.identity is None and not client.hello.header.get("anonymous"):
        client.close()
        raise missing_key(address)
