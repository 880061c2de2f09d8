"""Let the computer's own scheduler start oeleo every 5 minutes, logged on or not.

    python examples/platform_task.py [install|print] [EVERY]

``print`` (the default) shows what ``oeleo task install`` would write and run on this computer
(a Windows Task Scheduler task, a systemd user timer, or a launchd agent) and changes nothing;
``install`` installs it. The task runs ``oeleo run`` in this folder with its ``.env``; EVERY is
``5m`` unless given (``30s`` is refused on Windows, whose tasks repeat in whole minutes).
``oeleo task status`` and ``oeleo task remove`` show and undo it.
"""

from __future__ import annotations

import subprocess
import sys
from typing import List


def main(argv: List[str]) -> int:
    action = argv[1] if len(argv) > 1 else "print"
    every = argv[2] if len(argv) > 2 else "5m"
    if action not in ("install", "print"):
        print("usage: python examples/platform_task.py [install|print] [EVERY]", file=sys.stderr)
        return 2
    command = [sys.executable, "-m", "oeleo", "task", "install", "--every", every]
    if action == "print":
        command.append("--print")
    return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
