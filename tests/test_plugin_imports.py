"""The pytest plugin is lean: loading it registers fixtures and imports none of the heavy parts they run.

The ``pytest11`` entry point loads ``aiobatch.testing`` into every pytest run of every project that installs
aiobatch, so it must not import the emulator, aiohttp's server, the fault proxy, the Azurite manager or the
ffmpeg packager until a test asks for a fixture that needs them.
"""

from __future__ import annotations

import json
import subprocess
import sys

#: Modules (and their submodules) that loading the plugin must leave unimported.
HEAVY = (
    "aiobatch.emulator",
    "aiohttp.web",
    "aiobatch._faultproxy",
    "aiobatch._azurite",
    "aiobatch.demo",
    "aiobatch.local",
)

PROBE = f"""
import importlib.metadata, json, sys
HEAVY = {HEAVY!r}
points = [p for p in importlib.metadata.entry_points(group="pytest11") if p.name == "aiobatch"]
plugin = points[0].load() if points else __import__("aiobatch.testing", fromlist=["_"])
loaded = sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in HEAVY))
fixtures = sorted(n for n in plugin.__all__ if hasattr(getattr(plugin, n), "_fixture_function")
                  or type(getattr(plugin, n)).__name__ == "FixtureFunctionDefinition"
                  or hasattr(getattr(plugin, n), "_pytestfixturefunction"))
print(json.dumps({{"module": plugin.__name__, "loaded": loaded, "fixtures": fixtures}}))
"""


def test_loading_the_plugin_imports_none_of_the_heavy_parts() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout
    found = json.loads(out)
    assert found["module"] == "aiobatch.testing"
    assert found["loaded"] == [], f"loading the pytest plugin imported {found['loaded']}"
    # And it still registers its fixtures.
    assert {"azurite", "batch_emulator", "local_services", "storage_faults", "ffmpeg_apps_dir"} <= set(
        found["fixtures"]
    ), found["fixtures"]
