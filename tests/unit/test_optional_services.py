"""Optional services (``optional = yes``) and sibling references, as the config sees them."""

import re

import pytest

from msgsrv.ops import config as config_module
from msgsrv.wire.errors import ConfigError

pytestmark = pytest.mark.timeout(30)

NEEDS = "needs pip install msgsrv[web]"


def load(tmp_path, text):
    path = tmp_path / "server.ini"
    path.write_text(text)
    return config_module.load(str(path))


def test_an_optional_service_without_its_extra_is_left_out(tmp_path, no_hyper):
    config = load(tmp_path, "[service:echo]\nhandler = echo\n[service:web]\nhandler = web\n"
                            "optional = yes\nchat =\nport = 0\n")
    assert [s.name for s in config.services] == ["echo"]
    (web,) = config.disabled
    assert (web.name, web.handler, web.reason) == ("web", "web", NEEDS)
    assert web.message == "[service:web] disabled: " + NEEDS
    assert "# [service:web] disabled: " + NEEDS in config_module.format_effective(config)


def test_a_service_that_is_not_optional_names_the_missing_extra(tmp_path, no_hyper):
    expected = "handler web %s (or set optional = yes" % NEEDS
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load(tmp_path, "[service:web]\nhandler = web\nchat =\n")


def test_an_optional_plugin_that_cannot_be_imported_is_left_out(tmp_path):
    config = load(tmp_path, "[service:x]\nhandler = no_such_module:Handler\noptional = yes\n")
    assert config.services == () and "cannot import 'no_such_module'" in config.disabled[0].reason
    with pytest.raises(ConfigError, match="cannot import"):
        load(tmp_path, "[service:x]\nhandler = no_such_module:Handler\n")


@pytest.mark.parametrize("chat, problem", [
    ("nope", "chat names no service of this file (got 'nope'; services: echo, web)"),
    ("echo", "chat must name a service whose handler has a ChatService (got 'echo', "
             "handler echo)"),
])
def test_the_chat_setting_must_name_a_chat_service(tmp_path, chat, problem):
    pytest.importorskip("h11")
    pytest.importorskip("wsproto")
    with pytest.raises(ConfigError, match=re.escape("[service:web] " + problem)):
        load(tmp_path, "[service:echo]\nhandler = echo\n[service:web]\nhandler = web\n"
                       "chat = %s\n" % chat)
