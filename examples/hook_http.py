"""Post an archive record to an HTTP API for each file oeleo copied (an OELEO_HOOK_COMMAND).

oeleo runs this program once per copied file, with the file's JSON document on its standard
input (docs/hooks.md); it POSTs a record to the archive and exits 0 when the archive took it:

    OELEO_HOOK_COMMAND="python examples/hook_http.py https://archive.example.org/api/frames/"

``ARCHIVE_TOKEN`` in the environment, when set, is sent as ``Authorization: Token ...`` (and
never printed). Any other answer than 2xx, or no answer, exits 1 with one line on stderr: oeleo
books it for that file and runs this again next pass, without copying the file again.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any, Dict, List

USAGE = "usage: python examples/hook_http.py URL  (oeleo gives the file's JSON on stdin)"


def archive_record(arrival: Dict[str, Any]) -> Dict[str, Any]:
    """What the archive is told about one frame: where it is, its checksum and its header."""
    header = arrival.get("metadata") or {}
    return {
        "filename": os.path.basename(arrival["local_name"]),
        "path": arrival["external_name"],
        "checksum": arrival["checksum"],
        "checksum_algorithm": arrival["algorithm"],
        "size": arrival["size"],
        "object": header.get("OBJECT"),
        "date_obs": header.get("DATE-OBS"),
        "header": header,
    }


def post(url: str, record: Dict[str, Any], timeout: float = 30) -> int:
    request = urllib.request.Request(
        url, data=json.dumps(record).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    token = os.environ.get("ARCHIVE_TOKEN")
    if token:
        request.add_header("Authorization", f"Token {token}")
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return int(answer.status)


def main(argv: List[str]) -> int:
    if len(argv) != 2:
        print(USAGE, file=sys.stderr)
        return 2
    arrival = json.load(sys.stdin)
    try:
        status = post(argv[1], archive_record(arrival))
    except urllib.error.HTTPError as exc:
        print(f"{argv[1]} answered {exc.code} {exc.reason} for {arrival['local_name']}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"{argv[1]}: no answer ({getattr(exc, 'reason', exc)})", file=sys.stderr)
        return 1
    print(f"{arrival['local_name']}: archived ({status})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
