"""The system checks: each id fires on the setup it names, and stays quiet on a sound one.

Checks never connect to Redis, so these tests need no server: the addresses are made up.
"""

from __future__ import annotations

import sys
from io import StringIO
from typing import Any

import pytest
from django.core.checks import CheckMessage
from django.core.management import call_command
from django.test import override_settings

from channels_ha import RedisConfig, channel_layers, parse_connection_config, parse_url
from channels_ha._interop import caches
from channels_ha.checks import CHECK_IDS, check_configuration, check_deployment
from channels_ha.sandbox import StandaloneTopology
from tests import django_settings

CHANNELS_REDIS = "channels_redis.core.RedisChannelLayer"
LOCMEM = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
SENTINELS = "redis+sentinel://:data-pw@s1:26379,s2:26379,s3:26379/mymaster"
SAFE_SENTINELS = f"{SENTINELS}?sentinel_password=sentinel-pw"
# A sound production setup: Sentinel with auth on both hops, shared by channels and cache.
SOUND = {
    "CHANNEL_LAYERS": channel_layers(parse_url(SAFE_SENTINELS)),
    "CACHES": caches(parse_url(SAFE_SENTINELS)),
}


@pytest.fixture(autouse=True)
def _django(monkeypatch: pytest.MonkeyPatch) -> None:
    """Django is set up and the Redis variables are unset unless a test sets them."""
    django_settings.setup()
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("REDIS_CONNECTION_CONFIG", raising=False)


def _messages(**overrides: Any) -> list[CheckMessage]:
    with override_settings(**overrides):
        return [*check_configuration(), *check_deployment()]


def _ids(**overrides: Any) -> list[str]:
    return sorted(message.id for message in _messages(**overrides))


def test_sound_setup_passes() -> None:
    """Sentinel with auth everywhere, via channel_layers() and caches(), raises nothing."""
    assert _ids(**SOUND) == []


def test_ids_are_stable_and_documented_in_the_module() -> None:
    """CHECK_IDS lists E001-E004 and W001-W006, each named in the module docstring."""
    import channels_ha.checks

    assert (
        *(f"channels_ha.E00{n}" for n in range(1, 5)),
        *(f"channels_ha.W00{n}" for n in range(1, 7)),
    ) == CHECK_IDS
    for check_id in CHECK_IDS:
        assert check_id in (channels_ha.checks.__doc__ or "")


# -- errors ----------------------------------------------------------------------------------


def test_e001_invalid_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """An invalid REDIS_URL is E001, named and redacted, with a hint."""
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2@cache:notaport/0")
    (message,) = _messages(**SOUND)
    assert (message.id, message.obj) == ("channels_ha.E001", "REDIS_URL")
    assert "hunter2" not in f"{message.msg} {message.hint}"
    assert "channels-ha check" in message.hint


def test_e001_not_for_a_valid_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A valid REDIS_CONNECTION_CONFIG raises no error."""
    monkeypatch.setenv("REDIS_CONNECTION_CONFIG", '{"host": "cache", "port": 6380}')
    assert "channels_ha.E001" not in _ids(**SOUND)


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"config": parse_url(SAFE_SENTINELS), "capacity": 0}, "'capacity' must be"),
        ({"config": parse_url(SAFE_SENTINELS), "hots": ["redis://h"]}, "hots"),
        ({"config": {"host": "h"}}, "expected a configuration from channels_ha.load_config()"),
        ({"hosts": ["redis://h:99999"]}, "port number"),
        ({"config": parse_url("rediss://h?ssl_ca_certs=/nonexistent/ca.pem")}, "'ssl_ca_certs'"),
    ],
    ids=["bad-value", "unknown-option", "config-not-parsed", "bad-hosts", "missing-ca-file"],
)
def test_e002_channel_layer_cannot_be_built(options: dict[str, Any], fragment: str) -> None:
    """Options our layer rejects are E002, with the layer's own message."""
    layers = {"default": {"BACKEND": "channels_ha.RedisChannelLayer", "CONFIG": options}}
    errors = [m for m in _messages(CHANNEL_LAYERS=layers, CACHES=SOUND["CACHES"]) if m.is_serious()]
    assert [(e.id, e.obj) for e in errors] == [("channels_ha.E002", "CHANNEL_LAYERS['default']")]
    assert fragment in errors[0].msg
    assert "channels_ha.channel_layers()" in errors[0].hint


@pytest.mark.parametrize("backend", ["channels_ha.RedisChannelLayer", CHANNELS_REDIS])
@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        (["redis://h"], "['CONFIG']: expected a dict of layer options"),
        ({"hosts": 5}, "['CONFIG']['hosts'] must be a list of hosts"),
        (
            {"hosts": {"address": "redis://h"}},
            "['CONFIG']['hosts'] must be a list of hosts, got a single",
        ),
    ],
    ids=["config-list", "hosts-int", "hosts-dict"],
)
@pytest.mark.parametrize("bad_environment", [False, True])
def test_e002_malformed_entry_is_named_not_a_crash(
    monkeypatch: pytest.MonkeyPatch, backend: str, config: Any, fragment: str, bad_environment: bool
) -> None:
    """A CONFIG or hosts of the wrong shape is E002 naming the alias and setting, for
    channels_redis too, and --deploy runs past it instead of raising."""
    if bad_environment:
        monkeypatch.setenv("REDIS_URL", "redis://:hunter2@cache:notaport")
    layers = {"default": {"BACKEND": backend, "CONFIG": config}}
    messages = _messages(CHANNEL_LAYERS=layers, CACHES=SOUND["CACHES"])
    errors = [m for m in messages if m.id == "channels_ha.E002"]
    assert [e.obj for e in errors] == ["CHANNEL_LAYERS['default']"]
    assert f"CHANNEL_LAYERS['default']{fragment}" in errors[0].msg
    assert "hunter2" not in " ".join(f"{m.msg} {m.hint}" for m in messages)


def test_e002_defers_to_e001_for_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A layer that reads an invalid environment is reported once, as E001."""
    monkeypatch.setenv("REDIS_URL", "redis://cache:notaport")
    layers = {"default": {"BACKEND": "channels_ha.RedisChannelLayer"}}
    serious = [m.id for m in _messages(CHANNEL_LAYERS=layers) if m.is_serious()]
    assert serious == ["channels_ha.E001"]


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ({"OPTIONS": {"config": parse_url(SAFE_SENTINELS), "db": 1}}, "unknown key 'db'"),
        ({"LOCATION": ["redis://a", "redis://b"]}, "expected one Redis URL"),
        ({"LOCATION": "redis://a", "OPTIONS": {"config": parse_url("redis://b")}}, "not both"),
        ({"LOCATION": "redis://a", "OPTIONS": {"failover_timeout": -1}}, "positive number"),
        ({"LOCATION": "redis://a", "OPTIONS": ["failover_timeout"]}, "expected a dict"),
    ],
    ids=[
        "unknown-option",
        "several-locations",
        "location-and-config",
        "bad-failover-timeout",
        "options-not-a-dict",
    ],
)
def test_e003_cache_cannot_be_built(entry: dict[str, Any], fragment: str) -> None:
    """Options our cache rejects are E003, with the cache's own message."""
    cache = {"default": {"BACKEND": "channels_ha.cache.RedisCache", **entry}}
    errors = [m for m in _messages(CHANNEL_LAYERS=SOUND["CHANNEL_LAYERS"], CACHES=cache)]
    serious = [e for e in errors if e.is_serious()]
    assert [(e.id, e.obj) for e in serious] == [("channels_ha.E003", "CACHES['default']")]
    assert fragment in serious[0].msg


def test_e004_metrics_without_prometheus_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """CHANNELS_HA_METRICS without prometheus_client is E004; with it, nothing."""
    assert _ids(**SOUND, CHANNELS_HA_METRICS=True) == []
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    assert _ids(**SOUND, CHANNELS_HA_METRICS=True) == ["channels_ha.E004"]


# -- warnings --------------------------------------------------------------------------------


def check_deployment_with(**overrides: Any) -> list[CheckMessage]:
    with override_settings(**overrides):
        return check_deployment()


def _deploy_ids(config: RedisConfig | str) -> list[str]:
    """The deploy warnings when channels and cache both use ``config``."""
    config = parse_url(config) if isinstance(config, str) else config
    overrides = {"CHANNEL_LAYERS": channel_layers(config), "CACHES": caches(config)}
    return [message.id for message in check_deployment_with(**overrides)]


def test_w001_sentinels_without_auth() -> None:
    """Data nodes with a password behind password-less sentinels is W001."""
    assert _deploy_ids(SENTINELS) == ["channels_ha.W001"]
    assert _deploy_ids(SAFE_SENTINELS) == []


TLS_SENTINELS = "rediss+sentinel://:pw@s1,s2,s3/mymaster?sentinel_password=pw&ssl_ca_certs=/ca"


@pytest.mark.parametrize(
    "config",
    [
        parse_url(f"{TLS_SENTINELS}&ssl_cert_reqs=none"),
        parse_url(f"{TLS_SENTINELS}&ssl_check_hostname=false"),
        parse_connection_config(
            {
                "sentinels": ["s1", "s2", "s3"],
                "master_name": "mymaster",
                "ssl": True,
                "sentinel_kwargs": {"ssl_cert_reqs": "none"},
            }
        ),
    ],
    ids=["no-certificate-check", "no-hostname-check", "sentinel-hop"],
)
def test_w002_tls_without_verification(config: RedisConfig) -> None:
    """TLS that skips certificate or host name checks, on either hop, is W002 (once per hop)."""
    assert set(_deploy_ids(config)) == {"channels_ha.W002"}


def test_w002_not_for_verified_tls() -> None:
    """TLS with the default verification raises no W002."""
    assert _deploy_ids(TLS_SENTINELS) == []


def test_w003_single_node() -> None:
    """A single Redis node is W003, whose hint says how to silence it for managed services."""
    config = parse_url("redis://cache:6379/0")
    overrides = {"CHANNEL_LAYERS": channel_layers(config), "CACHES": caches(config)}
    (message,) = check_deployment_with(**overrides)
    assert message.id == "channels_ha.W003"
    assert "SILENCED_SYSTEM_CHECKS" in message.hint


def test_w004_fewer_than_three_sentinels() -> None:
    """Two sentinels are W004; three are not."""
    assert _deploy_ids("redis+sentinel://s1,s2/mymaster") == ["channels_ha.W004"]
    assert _deploy_ids("redis+sentinel://s1,s2,s3/mymaster") == []


def test_w005_our_layer_with_raw_hosts() -> None:
    """Our layer given raw 'hosts' instead of 'config' is W005."""
    hosts = {"hosts": [{"sentinels": [["s1", 26379]] * 3, "master_name": "m"}]}
    layers = {"default": {"BACKEND": "channels_ha.RedisChannelLayer", "CONFIG": hosts}}
    cache = caches(parse_url("redis+sentinel://s1,s2,s3/m"))
    assert [m.id for m in check_deployment_with(CHANNEL_LAYERS=layers, CACHES=cache)] == [
        "channels_ha.W005"
    ]


def test_w005_channels_redis_with_hand_written_hosts() -> None:
    """channels_redis with hosts that channel_layers() did not build is W005."""
    layers = {"default": {"BACKEND": CHANNELS_REDIS, "CONFIG": {"hosts": ["redis://a:6379"]}}}
    ids = [m.id for m in check_deployment_with(CHANNEL_LAYERS=layers, CACHES=caches())]
    assert "channels_ha.W005" in ids


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://:pw@s1,s2,s3/m?sentinel_password=pw",
        "rediss+sentinel://:pw@s1,s2,s3/m?sentinel_password=pw&ssl_ca_certs=/ca.pem",
    ],
    ids=["plain", "tls"],
)
def test_w005_not_for_channels_redis_built_by_channel_layers(url: str) -> None:
    """channels_redis hosts from channel_layers(backend=...) are recognised as validated."""
    config = parse_url(url)
    layers = channel_layers(config, backend=CHANNELS_REDIS)
    assert check_deployment_with(CHANNEL_LAYERS=layers, CACHES=caches(config)) == []


def test_w005_django_redis_cache() -> None:
    """Django's own RedisCache, with its hand-written LOCATION, is W005."""
    cache = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://a",
        }
    }
    layers = channel_layers(parse_url(SAFE_SENTINELS))
    messages = check_deployment_with(CHANNEL_LAYERS=layers, CACHES=cache)
    assert [(m.id, m.obj) for m in messages] == [("channels_ha.W005", "CACHES['default']")]


def test_w006_per_process_cache_next_to_redis() -> None:
    """Django's default LocMemCache beside a Redis channel layer is W006."""
    layers = channel_layers(parse_url(SAFE_SENTINELS))
    messages = check_deployment_with(CHANNEL_LAYERS=layers, CACHES=LOCMEM)
    assert [(m.id, m.obj) for m in messages] == [("channels_ha.W006", "CACHES['default']")]


def test_w006_not_without_redis() -> None:
    """A LocMemCache in a project that does not use Redis at all is fine."""
    in_memory = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    assert check_deployment_with(CHANNEL_LAYERS=in_memory, CACHES=LOCMEM) == []


def test_w006_when_only_the_environment_names_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    """REDIS_URL set while the cache is per-process is W006 too (the issue's silent fallback)."""
    monkeypatch.setenv("REDIS_URL", SAFE_SENTINELS)
    in_memory = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    ids = [m.id for m in check_deployment_with(CHANNEL_LAYERS=in_memory, CACHES=LOCMEM)]
    assert ids == ["channels_ha.W006"]


def test_manage_py_check_runs_them() -> None:
    """The app registers the checks: `check --deploy --tag channels_ha` prints their ids."""
    out = StringIO()
    config = parse_url("redis://cache:6379/0")
    with override_settings(CHANNEL_LAYERS=channel_layers(config), CACHES=caches(config)):
        call_command("check", "--deploy", "--tag", "channels_ha", stdout=out, stderr=out)
    assert "(channels_ha.W003)" in out.getvalue()
    assert "1 issue" in out.getvalue()


def test_checks_never_connect(redis_standalone: StandaloneTopology) -> None:
    """Running every check against a live server opens no connection to it."""
    config = parse_url(redis_standalone.url)
    client = redis_standalone.node.client()
    before = client.info("stats")["total_connections_received"]
    with override_settings(CHANNEL_LAYERS=channel_layers(config), CACHES=caches(config)):
        assert [m.id for m in [*check_configuration(), *check_deployment()]] == ["channels_ha.W003"]
    assert client.info("stats")["total_connections_received"] == before
    client.close()
