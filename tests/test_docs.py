"""The examples in README.md, docs/failover.md and docs/migrating.md run as shown, and every
Python block in the docs imports what it uses.

An example is the first fenced block after an ``<!-- example: NAME -->`` comment.
(docs/configuration.md and docs/operations.md have test modules of their own.)
"""

from __future__ import annotations

import builtins
import re
import shlex
import symtable
import textwrap
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from channels_ha import RedisChannelLayer, RedisUnavailable, parse_url
from channels_ha._keys import KeyLayout
from channels_ha.sandbox import Topology
from tests.startproject import manage_check, settings_of, startproject

ROOT = Path(__file__).resolve().parent.parent
_FENCE = re.compile(r"```(\w*)\n(.*?)\n[ ]*```", re.DOTALL)


def example(document: str, name: str) -> str:
    """The body of the block marked ``name`` in ``document``."""
    text = (ROOT / document).read_text()
    _, _, after = text.partition(f"<!-- example: {name} -->")
    match = _FENCE.search(after)
    assert match, f"no example {name!r} in {document}"
    return textwrap.dedent(match.group(2))


DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def undefined_names(code: str) -> set[str]:
    """Module-level names the code reads but never imports, assigns or defines (builtins
    aside), in any of its scopes."""
    top = symtable.symtable(code, "<example>", "exec")
    bound = {s.get_name() for s in top.get_symbols() if s.is_assigned() or s.is_imported()}
    missing: set[str] = set()
    tables = [top]
    while tables:  # each scope once
        table = tables.pop()
        tables += table.get_children()
        for symbol in table.get_symbols():
            name = symbol.get_name()
            if symbol.is_referenced() and (table is top or symbol.is_global()):
                missing |= {name} - bound - set(dir(builtins))
    return missing


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_python_blocks_import_what_they_use(document: Path) -> None:
    """Seen: failover.md's replica_acks example used channels_ha without importing it, and its
    test prepended the import, so the page showed code that fails with NameError when pasted.
    Every Python block is checked here, tested elsewhere or not."""
    for code in re.findall(r"```python\n(.*?)\n[ ]*```", document.read_text(), re.DOTALL):
        assert undefined_names(textwrap.dedent(code)) == set(), code


def settings_from(code: str) -> dict[str, Any]:
    """Runs a settings.py example and returns its module namespace."""
    namespace: dict[str, Any] = {}
    exec(compile(code, "<example>", "exec"), namespace)
    return namespace


async def roundtrip(layer_setting: dict[str, Any]) -> None:
    """Builds the layer the way Channels does and passes a message through it."""
    layer = _build(layer_setting)
    try:
        await layer.send("docs-example", {"type": "docs.example"})
        assert (await layer.receive("docs-example"))["type"] == "docs.example"
    finally:
        await layer.close()


def _build(layer_setting: dict[str, Any]) -> RedisChannelLayer:
    assert layer_setting["BACKEND"] == "channels_ha.RedisChannelLayer"
    return RedisChannelLayer(**layer_setting.get("CONFIG", {}))


async def test_readme_settings(
    redis_sentinel: Topology, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The README's settings, added to a startproject settings.py, pass ``manage.py check``
    (seen: they replaced startproject's INSTALLED_APPS, and the default urls.py failed with
    LookupError: No installed app with label 'admin') and build a working layer from
    REDIS_URL."""
    monkeypatch.setenv("REDIS_URL", redis_sentinel.url)
    project = startproject(tmp_path, example("README.md", "settings"))
    checked = manage_check(project, {"REDIS_URL": redis_sentinel.url})
    assert checked.returncode == 0, checked.stderr
    settings = settings_of(project)
    assert {"django.contrib.admin", "channels_ha"} <= set(settings["INSTALLED_APPS"])
    await roundtrip(settings["CHANNEL_LAYERS"]["default"])


def _brought_by(distributions: list[str]) -> set[str]:
    """The normalised names of ``distributions`` and of what they require here, extras aside."""
    names: set[str] = set()
    pending = list(distributions)
    while pending:  # each distribution once
        requirement = Requirement(pending.pop())
        name = canonicalize_name(requirement.name)
        if name in names:
            continue
        names.add(name)
        for needed in metadata.requires(name) or []:
            marker = Requirement(needed).marker
            if marker is None or marker.evaluate({"extra": ""}):
                pending.append(needed)
    return names


def test_readme_install_brings_every_app() -> None:
    """The README's pip install brings every app its settings install (seen: daphne came only
    with the [dev] extra, and ``manage.py check`` failed with ModuleNotFoundError)."""
    (install,) = re.findall(r"^pip install (.+)$", example("README.md", "install"), re.M)
    brought = _brought_by(shlex.split(install, comments=True))
    namespace = {"INSTALLED_APPS": ["django.contrib.admin"]}  # startproject's, in short
    exec(compile(example("README.md", "settings"), "<example>", "exec"), namespace)
    owners = metadata.packages_distributions()
    for app in namespace["INSTALLED_APPS"]:
        # A set: a checkout's egg-info beside the editable install names channels-ha twice.
        names = {canonicalize_name(owner) for owner in owners[app.partition(".")[0]]}
        assert names & brought, app


def test_readme_environment() -> None:
    """The README's REDIS_URL is a valid Sentinel URL with sentinel auth."""
    line = example("README.md", "environment")
    assignment = shlex.split(line)[1]
    config = parse_url(assignment.split("=", 1)[1])
    summary = config.summary_dict()
    assert summary["mode"] == "sentinel"
    assert summary["sentinels"]["auth"]
    assert summary["data_nodes"]["auth"]


async def test_failover_replica_acks(
    redis_sentinel: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/failover.md's replica_acks setting builds a layer whose sends are acknowledged."""
    monkeypatch.setenv("REDIS_URL", redis_sentinel.url)
    code = example("docs/failover.md", "replica-acks")  # as shown: its imports included
    setting = settings_from(code)["CHANNEL_LAYERS"]["default"]
    assert setting["CONFIG"]["replica_acks"] == 1
    await roundtrip(setting)
    layer = _build(setting)
    await layer.send("acked", {"type": "x"})
    assert layer.statistics().replica_ack_shortfalls == 0
    await layer.flush()
    await layer.close()


async def test_failover_unavailable_message() -> None:
    """The RedisUnavailable message shown in docs/failover.md has the shape of a real one."""
    shown = example("docs/failover.md", "unavailable")
    layer = RedisChannelLayer(hosts=["redis://127.0.0.1:1"], failover_timeout=0.2)
    with pytest.raises(RedisUnavailable) as raised:
        await layer.send("nowhere", {"type": "x"})
    await layer.close()
    shape = (
        r"No usable Redis master for \S+ s \(failover_timeout; waited \S+ s\) on .+; last error: .+"
    )
    assert re.fullmatch(shape, shown)
    assert re.fullmatch(shape, str(raised.value))


@pytest.mark.parametrize("name", ["before", "after"])
def test_migrating_settings_shapes(name: str) -> None:
    """Before and after differ only in BACKEND."""
    settings = settings_from(example("docs/migrating.md", name))["CHANNEL_LAYERS"]["default"]
    other = "after" if name == "before" else "before"
    twin = settings_from(example("docs/migrating.md", other))["CHANNEL_LAYERS"]["default"]
    assert settings["CONFIG"] == twin["CONFIG"]
    assert {settings["BACKEND"], twin["BACKEND"]} == {
        "channels_redis.core.RedisChannelLayer",
        "channels_ha.RedisChannelLayer",
    }


async def test_migrating_after_works(redis_standalone: Topology) -> None:
    """The migrated setting, pointed at a real Redis, works unchanged."""
    code = example("docs/migrating.md", "after").replace(
        "redis://127.0.0.1:6379/0", redis_standalone.url
    )
    setting = settings_from(code)["CHANNEL_LAYERS"]["default"]
    assert setting["CONFIG"]["capacity"] == 1500
    await roundtrip(setting)


async def test_migrating_validated(
    redis_standalone: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    """channel_layers(capacity=1500, expiry=30) reads the environment and keeps the options."""
    monkeypatch.setenv("REDIS_URL", redis_standalone.url)
    setting = settings_from(example("docs/migrating.md", "validated"))["CHANNEL_LAYERS"]["default"]
    assert setting["CONFIG"]["capacity"] == 1500
    assert setting["CONFIG"]["expiry"] == 30
    await roundtrip(setting)


def test_documented_keys_are_the_real_ones() -> None:
    """Every ``<prefix>:`` key form in migrating.md and scaling.md is one the layer writes
    (seen: migrating.md showed ``<prefix>:c:{channel}`` and ``<prefix>:i:{inbox}``, which
    carry neither the real hash tags nor the name after them)."""
    keys = KeyLayout(prefix="<prefix>")
    inbox = "specific.<client>!"
    real = {
        keys.channel("<channel>"),
        keys.inbox(inbox),
        keys.inbox_limit(inbox),
        keys.dedupe("<channel>", "<sender>"),
        *keys.membership_keys("<group>"),
    }
    for page in ("docs/migrating.md", "docs/scaling.md"):
        shown = set(re.findall(r"`(<prefix>:[^`]*)`", (ROOT / page).read_text()))
        checked = {
            form for form in shown if form.split(":")[1] in {"c", "i", "l", "s", "g", "t", "x"}
        }
        assert checked, page
        assert checked <= real, (page, checked - real)
