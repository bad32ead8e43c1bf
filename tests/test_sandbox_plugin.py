"""The pytest plugin parametrizes ``redis_topology`` over the kinds a test allows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import channels_ha.sandbox.pytest_plugin as plugin

_TESTS = """
import pytest

def test_all(redis_topology): pass

@pytest.mark.redis_topologies("sentinel", "cluster")
def test_marked(redis_topology): pass

@pytest.mark.parametrize("redis_topology", ["tls"], indirect=True)
def test_indirect(redis_topology): pass

@pytest.mark.redis_topologies("standalone")
class TestClass:
    def test_inherits(self, redis_topology): pass
"""


def _collect(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    """Collect ``source`` in a separate pytest run that loads the plugin as users get it."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_user.py").write_text(source)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_marker_and_indirect_parametrize_narrow_the_kinds(tmp_path: Path) -> None:
    """Unmarked tests get all four kinds; a marker or an indirect parametrize narrows them."""
    result = _collect(tmp_path, _TESTS)
    ids = sorted(line for line in result.stdout.splitlines() if "::" in line)
    assert ids == sorted(
        [
            *(f"test_user.py::test_all[{kind}]" for kind in plugin.KINDS),
            "test_user.py::test_marked[sentinel]",
            "test_user.py::test_marked[cluster]",
            "test_user.py::test_indirect[tls]",
            "test_user.py::TestClass::test_inherits[standalone]",
        ]
    )


def test_unknown_kind_in_marker_is_a_usage_error(tmp_path: Path) -> None:
    """A marker naming an unknown kind fails collection with a message listing the kinds."""
    source = (
        'import pytest\n@pytest.mark.redis_topologies("galaxy")\ndef test_x(redis_topology): pass\n'
    )
    result = _collect(tmp_path, source)
    assert result.returncode != 0
    assert "redis_topologies marker needs kinds among" in result.stdout + result.stderr


def test_loading_the_plugin_loads_no_sandbox_module() -> None:
    """Importing the plugin (every pytest run does) loads none of the sandbox's machinery."""
    code = (
        "import sys, channels_ha.sandbox.pytest_plugin\n"
        "print(sorted(m for m in sys.modules if m.startswith('channels_ha.sandbox._')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
