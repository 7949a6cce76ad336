"""Make every Python of this venv see the colcon install tree, as sourcing install/setup.bash would.

Writes `_sop_ros_workspace.pth` into the venv's site-packages. The name sorts before
`ros_wheels_bootstrapper.pth`, whose re-exec of the interpreter keeps the LD_LIBRARY_PATH set here
(the generated typesupport libraries are found through LD_LIBRARY_PATH, as on a robot).
Usage: python tools/write_workspace_pth.py INSTALL_PREFIX
"""

import sys
import sysconfig
from pathlib import Path

PREPEND = (
    "import os; "
    "_v = os.environ.get({var!r}, ''); "
    "os.environ[{var!r}] = _v if {path!r} in _v.split(os.pathsep) else os.pathsep.join(filter(None, [{path!r}, _v]))"
)


def main() -> None:
    prefix = Path(sys.argv[1]).resolve()
    site = Path(sysconfig.get_paths()["purelib"])
    python_dir = f"python{sys.version_info.major}.{sys.version_info.minor}"
    lines = [
        str(prefix / "lib" / python_dir / "site-packages"),
        PREPEND.format(var="LD_LIBRARY_PATH", path=str(prefix / "lib")),
        PREPEND.format(var="AMENT_PREFIX_PATH", path=sys.prefix),
        PREPEND.format(var="AMENT_PREFIX_PATH", path=str(prefix)),
    ]
    (site / "_sop_ros_workspace.pth").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
