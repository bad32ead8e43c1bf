"""A bad Redis configuration met while Django imports settings.py: ConfigurationError, as
anywhere, which settings may catch; uncaught, one clear message and status 1, never a
traceback or a password."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import channels_ha
from channels_ha.cache import RedisCache

PASSWORD = "hunter2secret"
BAD_URL = f"redis://:{PASSWORD}@redis.example.com:6379/0?socket_timout=5"
SETTINGS_HEAD = """\
import channels_ha

SECRET_KEY = "x"
INSTALLED_APPS = ["django.contrib.contenttypes", "channels", "channels_ha"]
"""


def _manage(
    project: Path, settings: str, *args: str, **environ: str
) -> subprocess.CompletedProcess[str]:
    """``python -m django <args>`` in a fresh process on ``project``'s settings module."""
    root = Path(__file__).resolve().parents[1]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": os.pathsep.join([str(project), str(root)]),
        "DJANGO_SETTINGS_MODULE": settings,
        **environ,
    }
    return subprocess.run(
        [sys.executable, "-m", "django", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=project,
        timeout=60,
        check=False,
    )


def _clean_failure(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    assert PASSWORD not in output, output
    for fragment in fragments:
        assert fragment in result.stderr, output


@pytest.mark.parametrize(
    "body",
    [
        "CHANNEL_LAYERS = channels_ha.channel_layers()\n",
        "REDIS = channels_ha.load_config()\nCHANNEL_LAYERS = channels_ha.channel_layers(REDIS)\n",
        "CACHES = channels_ha.caches()\n",
    ],
    ids=["channel_layers", "load_config", "caches"],
)
def test_a_bad_variable_stops_settings_with_the_message_alone(tmp_path: Path, body: str) -> None:
    """Seen: ~40 lines of traceback from manage.py, the message on the last line."""
    (tmp_path / "mysite_settings.py").write_text(SETTINGS_HEAD + body)
    result = _manage(tmp_path, "mysite_settings", "check", REDIS_URL=BAD_URL)
    _clean_failure(
        result,
        "Invalid Redis configuration in REDIS_URL",
        "'socket_timout': unknown query parameter (did you mean 'socket_timeout'?)",
        "in the settings module mysite_settings",
    )


def test_settings_split_over_modules_are_recognised(tmp_path: Path) -> None:
    """DJANGO_SETTINGS_MODULE=mysite.settings.production, the call in settings/base.py."""
    package = tmp_path / "mysite" / "settings"
    package.mkdir(parents=True)
    (tmp_path / "mysite" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "base.py").write_text(
        SETTINGS_HEAD + "CHANNEL_LAYERS = channels_ha.channel_layers()\n"
    )
    (package / "production.py").write_text("from .base import *  # noqa: F403\n")
    result = _manage(tmp_path, "mysite.settings.production", "check", REDIS_URL=BAD_URL)
    _clean_failure(result, "unknown query parameter", "mysite.settings.production")


def test_settings_can_catch_the_error_and_fall_back(tmp_path: Path) -> None:
    """A settings module may catch it (a fallback layer for a Docker build): it is the
    ConfigurationError it is anywhere, not an exit (seen with an earlier SystemExit: the
    settings never loaded, status 1)."""
    body = (
        "try:\n"
        "    CHANNEL_LAYERS = channels_ha.channel_layers()\n"
        "except channels_ha.ConfigurationError as err:\n"
        '    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}\n'
        "    print('falling back from', type(err).__module__, type(err).__qualname__)\n"
    )
    (tmp_path / "mysite_settings.py").write_text(SETTINGS_HEAD + body)
    show = "from django.conf import settings; print(settings.CHANNEL_LAYERS['default']['BACKEND'])"
    result = _manage(tmp_path, "mysite_settings", "shell", "-c", show, REDIS_URL=BAD_URL)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    # (By its public name: a traceback printed without the hook, in a uvicorn worker, says so.)
    expected = "falling back from channels_ha.exceptions ConfigurationError"
    assert lines[0] == expected, result.stdout
    assert lines[-1] == "channels.layers.InMemoryChannelLayer", result.stdout


def test_caches_leaves_a_custom_backend_unimported(tmp_path: Path) -> None:
    """A backend of the project's own may import models, which the app registry cannot give
    while settings load: caches() leaves importing it to Django (seen: AppRegistryNotReady
    at settings import)."""
    (tmp_path / "mycache.py").write_text(
        "from django.contrib.contenttypes.models import ContentType  # noqa: F401\n"
        "from channels_ha.cache import RedisCache\n\n\n"
        "class MyCache(RedisCache):\n"
        "    pass\n"
    )
    (tmp_path / "mysite_settings.py").write_text(
        SETTINGS_HEAD + 'CACHES = channels_ha.caches(backend="mycache.MyCache")\n'
    )
    result = _manage(tmp_path, "mysite_settings", "check", REDIS_URL="redis://127.0.0.1:9/0")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_sound_variable_passes(tmp_path: Path) -> None:
    """Guard: the same settings with a good URL pass ``check`` (nothing connects)."""
    (tmp_path / "mysite_settings.py").write_text(
        SETTINGS_HEAD + "CHANNEL_LAYERS = channels_ha.channel_layers()\n"
        "CACHES = channels_ha.caches()\n"
    )
    result = _manage(tmp_path, "mysite_settings", "check", REDIS_URL="redis://127.0.0.1:9/0")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("caches", "fragment"),
    [
        ('{"BACKEND": "channels_ha.cache.RedisCache", "OPTIONS": {"db": 1}}', "'db'"),
        (
            '{"BACKEND": "channels_ha.cache.RedisCache", '
            '"LOCATION": "rediss://127.0.0.1:9?ssl_ca_certs=/nonexistent/ca.pem"}',
            "ssl_ca_certs",
        ),
    ],
    ids=["unknown-option", "unreadable-tls-file"],
)
def test_a_hand_written_cache_entry_is_e003_in_a_plain_check(
    tmp_path: Path, caches: str, fragment: str
) -> None:
    """Seen: Django's own cache check builds every cache, and ours raised there: plain
    ``manage.py check`` ended in a traceback before channels_ha.E003 was reported."""
    (tmp_path / "mysite_settings.py").write_text(
        SETTINGS_HEAD + f'REDIS_URL = "x"\nCACHES = {{"default": {caches}}}\n'
    )
    result = _manage(tmp_path, "mysite_settings", "check", REDIS_URL="redis://127.0.0.1:9/0")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    assert "channels_ha.E003" in result.stderr, output
    assert fragment in result.stderr, output


def test_outside_settings_the_functions_raise_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A test or a script calling them gets the exception, not an exit."""
    monkeypatch.setenv("REDIS_URL", BAD_URL)
    for function in (channels_ha.load_config, channels_ha.channel_layers, channels_ha.caches):
        with pytest.raises(channels_ha.ConfigurationError, match="socket_timout"):
            function()


def test_caches_checks_its_options_at_once() -> None:
    """caches() builds the entry as Django would: an unknown OPTIONS key is an error now,
    not at the first cache call."""
    config = channels_ha.load_config(url="redis://127.0.0.1:9/0")
    with pytest.raises(channels_ha.ConfigurationError, match="'db'"):
        channels_ha.caches(config, OPTIONS={"db": 1})


def test_a_cache_that_cannot_work_raises_at_its_first_call() -> None:
    """Built by hand with a bad option, it is built (Django's checks build every cache) and
    raises the ConfigurationError at its first call."""
    cache = RedisCache("redis://127.0.0.1:9/0", {"OPTIONS": {"db": 1}})
    assert isinstance(cache.configuration_error, channels_ha.ConfigurationError)
    with pytest.raises(channels_ha.ConfigurationError, match="'db'"):
        cache.get("key")
