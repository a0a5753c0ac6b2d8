"""The reference deployment's files (conf/examples/scaling/) agree with the guide and each other.

docs/SCALING.rst shows every file byte for byte; the msgsrv configuration
loads; HAProxy relays each client service to the port msgsrv.ini gives it,
from the address the services trust; the hosts file names the ops services.
tests/integration/test_reference_deployment.py runs them all.
"""

import os
import re

from msgsrv.ops import config
from tests.conftest import ROOT
from tests.daemon.test_doc_examples import literal_blocks

EXAMPLES = os.path.join(ROOT, "conf", "examples", "scaling")


def example(name):
    with open(os.path.join(EXAMPLES, name)) as file:
        return file.read()


def services():
    """msgsrv.ini's services by name, loaded as the daemon loads them."""
    return {s.name: s for s in config.load(os.path.join(EXAMPLES, "msgsrv.ini")).services}


def test_the_guide_shows_every_example_file_as_it_is():
    with open(os.path.join(ROOT, "docs", "SCALING.rst")) as doc:
        blocks = [block for _, block, _ in literal_blocks(doc.read())]
    names = sorted(os.listdir(EXAMPLES))
    assert names == ["haproxy.cfg", "hosts.txt", "msgsrv.ini", "redis.conf"]
    for name in names:
        assert example(name) in blocks, "docs/SCALING.rst does not show %s as it is" % name


def test_haproxy_relays_each_client_service_to_its_port_from_the_trusted_address():
    text = example("haproxy.cfg")
    source = re.search(r"^\s+source (\S+)$", text, re.M).group(1)
    backends = dict(re.findall(r"^backend (\S+)\n((?:[ #].*\n|\n)*)", text, re.M))
    by_name = services()
    relayed = {name for name, s in by_name.items() if s["proxy_protocol"] != "off"}
    assert set(backends) == relayed == {"echo", "chat", "command", "files", "status"}
    for name in relayed:
        ports = set(re.findall(r"server host\d 192\.0\.2\.1\d:(\d+)", backends[name]))
        assert ports == {str(by_name[name]["port"])}, name
        assert by_name[name]["proxy_protocol"] == "v2"
        assert [str(n) for n in by_name[name]["proxy_trusted"]] == [source + "/32"]
    assert "send-proxy-v2" in text


def test_the_operators_reach_the_ops_services_directly():
    by_name = services()
    hosts = [line for line in example("hosts.txt").splitlines() if not line.startswith("#")]
    assert {line.rsplit(":", 1)[1] for line in hosts} == {str(by_name["ops"]["port"])}
    for name in ("ops", "ops-status"):
        assert by_name[name]["proxy_protocol"] == "off" and by_name[name]["allow"]
    assert by_name["ops"]["keys_file"] != by_name["command"]["keys_file"]
    assert by_name["files"]["keys_file"] == by_name["command"]["keys_file"]
