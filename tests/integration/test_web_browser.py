"""The web console in a real browser: Debian's chromium and chromedriver, driven by Selenium.

One daemon (a subprocess) serves echo, chat, two web consoles (one open on loopback, one
asking for a key) and an optional service left out; two browser sessions and a raw TCP
client (as nc is) use them.  The driver's path is given, so Selenium Manager never
downloads anything.  Screenshots of each page go to a temporary directory (printed), or
to $MSGSRV_SCREENSHOTS when set (a CI artefact).
"""

import hashlib
import hmac
import os
import socket
import tempfile
import time

import pytest

from tests.conftest import DaemonProcess, wait_for
from tests.hostile.targets import KEY_NAME, SECRET, write_keys_file
from tests.integration.conftest import require_module, require_program

pytestmark = pytest.mark.timeout(60)

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,900")
MAX_LINE = 200
CONFIG = """\
[msgsrv]
log_level = info
shutdown_timeout = 2

[service:echo]
handler = echo
port = 0

[service:echo-udp]
handler = echo
transport = udp
port = 0

[service:chat]
handler = chat
port = 0
max_line = %(max_line)d

[service:web]
handler = web
port = 0

[service:web-key]
handler = web
port = 0
chat =
auth = key
keys_file = %(keys)s

[service:ghost]
handler = no_such_plugin:Handler
optional = yes
port = 0
"""
SERVICES = ["echo", "echo-udp", "chat", "web", "web-key", "ghost"]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """The daemon; yields {service: port}."""
    require_module("h11")
    require_module("wsproto")
    where = tmp_path_factory.mktemp("web-browser")
    keys = write_keys_file(where / "web.keys")
    path = where / "server.ini"
    path.write_text(CONFIG % {"max_line": MAX_LINE, "keys": keys})
    process = DaemonProcess(path)
    try:
        ports = {name: address[1] for name, address in process.wait_listening(5).items()}
        yield ports
    finally:
        assert process.stop() == 0, process.log
    assert "[service:ghost] disabled: " in process.log


@pytest.fixture(scope="module")
def screenshots():
    """Where the screenshots go (printed)."""
    directory = os.environ.get("MSGSRV_SCREENSHOTS") or tempfile.mkdtemp(prefix="msgsrv-web-")
    os.makedirs(directory, exist_ok=True)
    print("\nweb console screenshots: %s" % directory)
    return directory


def shoot(driver, screenshots, name):
    path = os.path.join(screenshots, name + ".png")
    driver.save_screenshot(path)
    print("screenshot: %s" % path)


@pytest.fixture(scope="module")
def browsers(tmp_path_factory):
    """Factory of headless Chromium sessions, each with a fresh profile; quit at the end."""
    require_program("chromium")
    require_program("chromedriver")
    require_module("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    sessions = []

    def start():
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument("--user-data-dir=%s" % tmp_path_factory.mktemp("profile"))
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        driver.set_page_load_timeout(15)
        sessions.append(driver)
        return driver
    yield start
    for driver in sessions:
        driver.quit()


@pytest.fixture(scope="module")
def ann(browsers):
    return browsers()


@pytest.fixture(scope="module")
def ben(browsers):
    return browsers()


def url(ports, service, path="/"):
    return "http://127.0.0.1:%d%s" % (ports[service], path)


def no_page_errors(driver):
    """Nothing the page did was refused (CSP) or failed (script errors)."""
    severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert not severe, severe


def cell(driver, service, column):
    from selenium.webdriver.common.by import By
    rows = driver.find_elements(By.CSS_SELECTOR, 'tr[data-service="%s"] td.%s' % (service, column))
    return rows[0].text if rows else None


def test_dashboard_lists_every_service_and_counts_a_new_connection(daemon, ann, screenshots):
    from selenium.webdriver.common.by import By
    ann.get(url(daemon, "web"))
    wait_for(lambda: len(ann.find_elements(By.CSS_SELECTOR, "#services tbody tr")) == len(SERVICES),
             10, message="a row per service")
    names = [row.get_attribute("data-service")
             for row in ann.find_elements(By.CSS_SELECTOR, "#services tbody tr")]
    assert sorted(names) == sorted(SERVICES)
    assert cell(ann, "ghost", "state").startswith("disabled: cannot import")
    assert cell(ann, "echo", "address") == "127.0.0.1:%d" % daemon["echo"]
    wait_for(lambda: cell(ann, "echo", "conns") == "0 / 1000", 5, message="no echo connection")
    with socket.create_connection(("127.0.0.1", daemon["echo"])) as client:
        client.sendall(b"ping\n")
        assert client.recv(10) == b"ping\n"
        wait_for(lambda: cell(ann, "echo", "conns") == "1 / 1000", 5,
                 message="the dashboard to count the new connection")
        assert ann.find_element(By.ID, "live").text == "live"
        assert ann.find_element(By.ID, "pid").text.isdigit()
        shoot(ann, screenshots, "dashboard")
    wait_for(lambda: cell(ann, "echo", "conns") == "0 / 1000", 5, message="the close counted")
    ann.set_window_size(390, 844)  # a phone: every service becomes a card
    try:
        assert not ann.find_element(By.CSS_SELECTOR, "#services thead").is_displayed()
        shoot(ann, screenshots, "dashboard-phone")
    finally:
        ann.set_window_size(1280, 900)
    no_page_errors(ann)


def log_of(driver, prefix):
    """The raw server lines the chat page shows that start with ``prefix``."""
    from selenium.webdriver.common.by import By
    lines = driver.find_elements(By.CSS_SELECTOR, "#log .line")
    return [el.get_attribute("data-raw") for el in lines
            if (el.get_attribute("data-raw") or "").startswith(prefix)]


def type_line(driver, text):
    from selenium.webdriver.common.by import By
    field = driver.find_element(By.ID, "line")
    driver.execute_script("arguments[0].value = arguments[1];", field, text)
    driver.find_element(By.CSS_SELECTOR, "#say-form button").click()


def join_chat(driver, ports, nick):
    from selenium.webdriver.common.by import By
    driver.get(url(ports, "web", "/chat"))
    wait_for(lambda: log_of(driver, "* welcome"), 10, message="the welcome line")
    driver.find_element(By.ID, "nick").send_keys(nick)
    driver.find_element(By.CSS_SELECTOR, "#nick-form button").click()
    wait_for(lambda: log_of(driver, "* join lobby %s" % nick), 5, message="%s in the lobby" % nick)


@pytest.fixture(scope="module")
def room(daemon, ann, ben):
    """ann and ben (browsers) and cat (a raw TCP client) in room ops."""
    from tests.webclients import LineClient
    join_chat(ann, daemon, "ann")
    join_chat(ben, daemon, "ben")
    cat = LineClient(daemon["chat"], "cat")
    from selenium.webdriver.common.by import By
    cat.send("/join ops")
    cat.line(lambda line: line == "* history-end ops")
    ann.find_element(By.ID, "room").send_keys("ops")  # the sidebar's form
    ann.find_element(By.CSS_SELECTOR, "#join-form button").click()
    cat.line(lambda line: line == "* join ops ann")
    type_line(ben, "/join ops")  # typed
    cat.line(lambda line: line == "* join ops ben")
    wait_for(lambda: log_of(ann, "* join ops ben"), 5, message="everyone in ops")
    yield cat
    cat.close()


def test_two_browsers_and_nc_chat_in_one_room_in_order(daemon, ann, ben, room, screenshots):
    cat, sent = room, []
    for turn in range(2):
        for nick, speak in (("ann", lambda t: type_line(ann, t)),
                            ("ben", lambda t: type_line(ben, t)), ("cat", cat.send)):
            text = "line %d from %s" % (turn, nick)
            speak(text)
            sent.append("MSG ops %s %s" % (nick, text))
            assert cat.line(lambda line: line.startswith("MSG ops")) == sent[-1]
            wait_for(lambda: log_of(ann, "MSG ops")[-1:] == sent[-1:]
                     == log_of(ben, "MSG ops")[-1:], 5, message="both browsers to show %r" % text)
    assert log_of(ann, "MSG ops") == sent == log_of(ben, "MSG ops")
    type_line(ann, "/me waves")
    wait_for(lambda: log_of(ben, "ACT ops ann waves"), 5, message="the action")
    wait_for(lambda: ann.find_elements("css selector", '#members li[data-nick="cat"]'), 20,
             message="the member list")
    shoot(ann, screenshots, "chat")
    no_page_errors(ann)
    no_page_errors(ben)


def test_a_private_message_reaches_only_its_target(daemon, ann, ben, room):
    cat = room
    type_line(ann, "/msg ben just between us")
    wait_for(lambda: log_of(ben, "PRIV ann ben just between us"), 5, message="ben's copy")
    wait_for(lambda: log_of(ann, "PRIV ann ben just between us"), 5, message="ann's own copy")
    cat.send("marker")
    assert cat.line(lambda line: line.startswith(("PRIV", "MSG ops cat marker"))) == \
        "MSG ops cat marker"


def test_a_long_line_shows_the_servers_error(daemon, ann, room):
    type_line(ann, "x" * (MAX_LINE + 50))
    wait_for(lambda: log_of(ann, "! line-too-long"), 5, message="the server's error")
    assert log_of(ann, "! line-too-long") == [
        "! line-too-long line longer than %d bytes discarded" % MAX_LINE]


def test_closing_the_tab_sends_quit(daemon, ben, room):
    cat = room
    first = ben.current_window_handle
    ben.switch_to.new_window("tab")
    join_chat(ben, daemon, "tabby")
    cat.line(lambda line: line == "* join lobby tabby" or line.startswith("* quit"))  # not in ops
    type_line(ben, "/join ops")
    cat.line(lambda line: line == "* join ops tabby")
    ben.close()
    ben.switch_to.window(first)
    assert cat.line(lambda line: line.startswith("* quit")) == "* quit tabby closed by peer"


def test_the_login_page_proves_a_key_computed_in_the_page(daemon, ann, screenshots):
    from selenium.webdriver.common.by import By
    ann.get(url(daemon, "web-key"))
    wait_for(lambda: "/login?next=/" in ann.current_url, 5, message="the login page")
    shoot(ann, screenshots, "login")
    vectors = [("key", "The quick brown fox"), ("k" * 100, ""),
               (SECRET, "msgsrv-auth-v1\0" + "ab" * 32)]
    lengths = [0, 1, 55, 56, 63, 64, 65, 1000]
    fallback = ann.execute_script("""
        var C = MsgsrvCrypto, out = {hmac: [], sha: []};
        arguments[0].forEach(function (v) {
          out.hmac.push(C.hex(C.hmac(C.utf8(v[0]), C.utf8(v[1]))));
        });
        arguments[1].forEach(function (n) {
          out.sha.push(C.hex(C.sha256(C.utf8("a".repeat(n)))));
        });
        return out;""", vectors, lengths)  # the pure-script HMAC, for pages without WebCrypto
    assert fallback["hmac"] == [hmac.new(k.encode(), m.encode(), hashlib.sha256).hexdigest()
                                for k, m in vectors]
    assert fallback["sha"] == [hashlib.sha256(b"a" * n).hexdigest() for n in lengths]
    ann.find_element(By.ID, "key").clear()
    ann.find_element(By.ID, "key").send_keys(KEY_NAME)
    ann.find_element(By.ID, "secret").send_keys("not-the-secret-at-all")
    ann.find_element(By.CSS_SELECTOR, "#login-form button").click()
    wait_for(lambda: "login failed" in ann.find_element(By.ID, "error").text, 5,
             message="the refusal")
    ann.find_element(By.ID, "secret").clear()
    ann.find_element(By.ID, "secret").send_keys(SECRET)
    ann.find_element(By.CSS_SELECTOR, "#login-form button").click()
    wait_for(lambda: ann.current_url.rstrip("/").endswith(str(daemon["web-key"])), 5,
             message="the dashboard after the login")
    wait_for(lambda: cell(ann, "web-key", "state") == "running", 5, message="the rows")
    started = time.monotonic()
    assert ann.get_cookies()[0]["httpOnly"] and time.monotonic() - started < 5
