"""Only ``drivegpt`` is installed as a top-level import name (issue 13).

The product's folders (``data/``, ``sim/``, ``rl/``, ``export/``, ``configs/``) install as
``drivegpt.data`` etc. through setuptools ``package-dir``; a generic ``data`` or ``export``
package of another project must not collide with them.
"""

import json
import subprocess
import sys

GENERIC = ("data", "sim", "rl", "export", "configs")

PROBE = """
import importlib.util, json
names = {names!r}
print(json.dumps({{n: importlib.util.find_spec(n) is not None for n in names}}))
"""


def test_only_drivegpt_is_a_top_level_name(tmp_path):
    names = [*GENERIC, "drivegpt", "drivegpt.data", "drivegpt.sim", "drivegpt.rl", "drivegpt.export",
             "drivegpt.configs"]
    out = subprocess.run([sys.executable, "-c", PROBE.format(names=names)], cwd=tmp_path,
                         capture_output=True, text=True, check=True)
    found = json.loads(out.stdout)
    assert {n: found[n] for n in GENERIC} == {n: False for n in GENERIC}
    assert all(found[n] for n in names if n.startswith("drivegpt"))


def test_configs_are_package_data(tmp_path):
    probe = ("import importlib.resources as r; "
             "print(r.files('drivegpt.configs').joinpath('sim/default.yaml').is_file())")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "True"
