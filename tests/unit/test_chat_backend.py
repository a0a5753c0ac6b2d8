"""The chat ``backend`` setting and its checks (memory or Redis), without Redis."""

import sys

import pytest

from msgsrv.ops import config as config_module
from msgsrv.services.chat import backend
from msgsrv.services.chat.handler import ChatHandler, ChatService
from msgsrv.wire.errors import ConfigError
from tests.conftest import service_config


@pytest.mark.parametrize("text, shown", [
    ("memory", "memory"),
    (" MEMORY ", "memory"),
    ("redis://127.0.0.1:6380/2", "redis://127.0.0.1:6380/2"),
    ("redis://cache.example", "redis://cache.example:6379/0"),
    ("rediss://msgsrv@cache.example:6390/", "rediss://msgsrv@cache.example:6390/0"),
    ("redis://[::1]:7000/1", "redis://[::1]:7000/1"),
])
def test_backend_values(text, shown):
    assert str(backend.backend(text)) == shown


@pytest.mark.parametrize("text, rule", [
    ("postgres://x", "must be memory, redis://"),
    ("redis://", "must name a host"),
    ("redis://h:99999/0", "port in 1..65535"),
    ("redis://h/zero", "database number"),
    ("redis://h/0/1", "database number"),
    ("redis://h/0?ssl=1", "query"),
])
def test_backend_refusals(text, rule):
    with pytest.raises(ValueError, match=rule):
        backend.backend(text)


def _load(tmp_path, **options):
    path = tmp_path / "server.ini"
    lines = ["[service:chat]", "handler = chat", "port = 0"]
    lines += ["%s = %s" % item for item in options.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("url", ["redis://:hunter2@127.0.0.1/0", "redis://me:hunter2@h:1/0"])
def test_a_password_in_the_url_is_refused_without_showing_it(tmp_path, url):
    path = _load(tmp_path, backend=url)
    with pytest.raises(ConfigError) as refused:
        config_module.load(str(path))
    message = str(refused.value)
    assert "backend must not hold a password" in message and "redis_password_file" in message
    assert "hunter2" not in message and ":***@" in message



def _options(**values):
    return service_config("chat", **values).options


def test_password_from_a_file_or_the_environment(tmp_path):
    secret = tmp_path / "redis.pass"
    secret.write_text("s3cret\nignored\n")
    secret.chmod(0o640)
    assert backend.redis_password(_options(redis_password_file=secret), "[s]") == "s3cret"
    assert backend.redis_password(_options(redis_password_env="CHAT_PW"), "[s]",
                                  {"CHAT_PW": "fromenv"}) == "fromenv"
    assert backend.redis_password(_options(), "[s]") is None


def test_password_sources_are_checked(tmp_path):
    secret = tmp_path / "redis.pass"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    with pytest.raises(ConfigError, match="must not be readable by others"):
        backend.redis_password(_options(redis_password_file=secret), "[s]")
    secret.chmod(0o600)
    both = _options(redis_password_file=secret, redis_password_env="X")
    with pytest.raises(ConfigError, match="give one of them"):
        backend.redis_password(both, "[s]")
    with pytest.raises(ConfigError, match="redis_password_env CHAT_PW: .* not set"):
        backend.redis_password(_options(redis_password_env="CHAT_PW"), "[s]", {})
    with pytest.raises(ConfigError, match="cannot read"):
        backend.redis_password(_options(redis_password_file=tmp_path / "none"), "[s]")
    secret.write_text("\n")
    with pytest.raises(ConfigError, match="first line is empty"):
        backend.redis_password(_options(redis_password_file=secret), "[s]")


def test_a_redis_backend_without_the_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "redis", None)  # import redis now fails
    options = _options(backend="redis://127.0.0.1:6379/0")
    with pytest.raises(ConfigError, match=r"needs the Python package redis: pip install "
                                          r"msgsrv\[redis\]"):
        ChatHandler.check_service(service_config("chat", backend="redis://127.0.0.1/0"), {})
    with pytest.raises(ConfigError, match=r"msgsrv\[redis\]"):
        ChatService(service_config("chat", backend="redis://127.0.0.1/0"), {})
    backend.check(_options(), "[s]")  # memory needs nothing
    assert options["backend"].shared


def test_the_backend_cannot_change_on_a_reload():
    service = ChatService(service_config("chat"), {})
    with pytest.raises(ConfigError, match="backend cannot change while the service runs"):
        service.prepare_reconfigure(service_config("chat", backend="redis://127.0.0.1/0"), {})
    service.prepare_reconfigure(service_config("chat", history=3), {})()
    assert service.chat.history == 3
