"""conftest.npm_modules in parallel test workers: one ``npm ci`` per folder, the other workers wait for it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

#: A stand-in for npm: refuses to run while another copy runs in the same folder (as two real ``npm ci``
#: deleting and writing one node_modules/ break each other), takes a while, then installs and counts itself.
FAKE_NPM = """#!/bin/sh
mkdir running 2>/dev/null || { echo "two npm ci at once" >&2; exit 1; }
sleep 1
mkdir -p node_modules/pkg && echo installed > node_modules/.package-lock.json
echo x >> installs
rmdir running
"""

#: One test worker: asks for the folder's npm packages, as a test does.
WORKER = """
import sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from conftest import npm_modules
npm_modules(Path(sys.argv[2]), "pkg")
"""


def test_workers_that_need_the_same_npm_packages_at_once_install_them_once(tmp_path: Path) -> None:
    bin_dir, folder = tmp_path / "bin", tmp_path / "pkgs"
    bin_dir.mkdir()
    folder.mkdir()
    for tool, script in (("npm", FAKE_NPM), ("node", "#!/bin/sh\n")):
        (bin_dir / tool).write_text(script)
        (bin_dir / tool).chmod(0o755)
    (folder / "package-lock.json").write_text("{}")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    tests = str(Path(__file__).resolve().parent)
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, tests, str(folder)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(3)]
    outputs = [w.communicate(timeout=120)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0], outputs
    assert (folder / "installs").read_text() == "x\n"  # the first installed; the others found it installed
