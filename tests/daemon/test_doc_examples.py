"""Every Python example in README.rst and docs/*.rst runs as written against the shipped config.

The rule: a literal block (after ``::`` or ``.. code-block:: python``) whose first line that
is not a comment starts with ``from`` or ``import`` is a Python example and runs, in its own
subprocess with a timeout, against one daemon started from a copy of conf/server.ini.  A
block that must not run is preceded by an RST comment ``.. not-run: REASON``.

The shipped ports (9000-9004, and 9443-9444 of the TLS example's own daemon) may be taken on a test machine, so every port of the config is
mapped to a free one, in the config copy and in each example's text alike.  The examples run
in a scratch directory holding the daemon's ``var/`` (so ``var/keys/msgsrv.keys`` is the
daemon's keys file), with ``MSGSRV_KEY=admin`` and ``MSGSRV_KEYS_FILE`` set.
"""

import collections
import glob
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest

from tests.conftest import ROOT, DaemonProcess, wait_for

EXAMPLE_TIMEOUT = 30
# Ports examples use for daemons of their own (the TLS example), mapped like the shipped ones.
EXAMPLE_PORTS = (9443, 9444)

Example = collections.namedtuple("Example", "where code run reason")

def documents():
    """README.rst and docs/*.rst, relative to the source tree."""
    return ["README.rst"] + sorted(os.path.relpath(path, ROOT) for path in
                                   glob.glob(os.path.join(ROOT, "docs", "*.rst")))


def literal_blocks(text):
    """Yield (line number, block text, preceding not-run reason or None) for each literal block."""
    lines = text.split("\n")
    reason = None
    for number, line in enumerate(lines):
        stripped = line.strip()
        marker = re.match(r"\.\. not-run:\s*(.*)$", stripped)
        if marker:
            reason = marker.group(1) or "(no reason given)"
            continue
        opens = (stripped.endswith("::") and not stripped.startswith("..")) or \
            stripped in (".. code-block:: python", ".. code-block:: python3")
        if not opens:
            continue
        indent = len(line) - len(line.lstrip())
        body = []
        for following in lines[number + 1:]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            body.append(following)
        while body and not body[-1].strip():
            body.pop()
        block = _dedent(body)
        if block.strip():
            yield number + 1, block, reason
        reason = None


def _dedent(lines):
    widths = [len(line) - len(line.lstrip()) for line in lines if line.strip()]
    cut = min(widths) if widths else 0
    return "\n".join(line[cut:] for line in lines).strip("\n") + "\n"


def is_python(block):
    """A block is Python when its first line that is not a comment imports something."""
    for line in block.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            return bool(re.match(r"(from|import) \w", line))
    return False


def examples():
    """Every Python example of the documentation."""
    found = []
    for name in documents():
        with open(os.path.join(ROOT, name), encoding="utf-8") as stream:
            text = stream.read()
        for number, block, reason in literal_blocks(text):
            if is_python(block):
                found.append(Example("%s:%d" % (name, number), block, reason is None, reason))
    return found


def free_port_pair():
    """A port free for both TCP and UDP on 127.0.0.1 (the echo service uses both)."""
    for _ in range(50):
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port
    raise RuntimeError("no port free for both TCP and UDP")


def shipped_config(directory, ports):
    """conf/server.ini with its ports mapped and its paths moved into ``directory``."""
    with open(os.path.join(ROOT, "conf", "server.ini"), encoding="utf-8") as stream:
        text = stream.read()
    text = re.sub(r"(?m)^port = (\d+)$", lambda m: "port = %d" % ports[int(m.group(1))], text)
    text = re.sub(r"(?m)^log_file = .*$", "log_file =", text)
    text = re.sub(r"(?m)^pidfile = (.*)$",
                  lambda m: "pidfile = " + os.path.join(directory, m.group(1)), text)
    keys = os.path.join(directory, "var", "keys", "msgsrv.keys")
    text = re.sub(r"(?m)^handler = (command|file)$",
                  lambda m: "%s\nkeys_file = %s" % (m.group(0), keys), text)
    text = text.replace("handler = file\n", "handler = file\nroot = %s\n"
                        % os.path.join(directory, "var", "files"))
    path = os.path.join(directory, "server.ini")
    with open(path, "w", encoding="utf-8") as stream:
        stream.write(text)
    return path


def map_ports(code, ports):
    """The example's text with each shipped port replaced by the test daemon's."""
    return re.sub(r"\b(%s)\b" % "|".join(str(p) for p in ports),
                  lambda m: str(ports[int(m.group(1))]), code)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """One daemon from the shipped config (ports mapped); yields (directory, port map)."""
    directory = str(tmp_path_factory.mktemp("doc-examples"))
    with open(os.path.join(ROOT, "conf", "server.ini"), encoding="utf-8") as stream:
        shipped = sorted({int(p) for p in re.findall(r"(?m)^port = (\d+)$", stream.read())})
    for _attempt in range(3):
        ports = {port: free_port_pair() for port in shipped + list(EXAMPLE_PORTS)}
        process = DaemonProcess(shipped_config(directory, ports), env={"PYTHONPATH": ROOT})
        wait_for(lambda: "ready" in process.log or process.proc.poll() is not None, 15,
                 message="the daemon to be ready")
        if process.proc.poll() is None:
            break
        process.stop()  # a port was taken meanwhile: try other ones
    else:
        pytest.fail("the daemon did not start:\n" + process.log)
    yield directory, ports
    assert process.stop() == 0, process.log


def test_the_documentation_has_python_examples_and_each_not_run_one_says_why():
    found = examples()
    assert len([e for e in found if e.run]) >= 6, found
    for example in found:
        assert example.run or example.reason.strip(), example.where


def test_block_rules():
    text = ("Text::\n\n    from os import path\n    print(path)\n\nMore.\n\n"
            ".. not-run: it needs a terminal\n\nShell::\n\n    import tty\n\n"
            ".. code-block:: python\n\n    # a comment\n    import sys\n\n"
            "Not Python::\n\n    $ nc 127.0.0.1 9000\n")
    blocks = list(literal_blocks(text))
    assert [(b[0], b[2]) for b in blocks] == [(1, None), (10, "it needs a terminal"),
                                             (14, None), (19, None)]
    assert [is_python(b[1]) for b in blocks] == [True, True, True, False]
    assert blocks[0][1] == "from os import path\nprint(path)\n"
    assert map_ports("connect(9000, 19000, 9004)", {9000: 1, 9004: 2}) == "connect(1, 19000, 2)"


@pytest.mark.parametrize("example", [e for e in examples() if e.run], ids=lambda e: e.where)
def test_example_runs(example, daemon):
    if '"openssl"' in example.code and shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make the example's certificate")
    directory, ports = daemon
    env = dict(os.environ, PYTHONPATH=ROOT, MSGSRV_KEY="admin",
               MSGSRV_KEYS_FILE=os.path.join(directory, "var", "keys", "msgsrv.keys"))
    try:
        result = subprocess.run([sys.executable, "-c", map_ports(example.code, ports)],
                                cwd=directory, env=env, capture_output=True, text=True,
                                timeout=EXAMPLE_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail("%s did not finish within %d s" % (example.where, EXAMPLE_TIMEOUT))
    assert result.returncode == 0, "%s failed:\n%s%s" % (example.where, result.stdout,
                                                         result.stderr)
