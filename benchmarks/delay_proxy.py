"""A TCP proxy on 127.0.0.1 that delays every byte by half a round trip in each direction:
a network link with latency, where ``tc netem`` is not available (this machine's kernel has
no sch_netem). The SSH scenario puts it in front of its sshd with ``--rtt-ms`` so that what
a round trip costs shows: on loopback a round trip takes microseconds and hides it.

    python -m benchmarks.delay_proxy --to 127.0.0.1:2222 --rtt-ms 10

prints ``listening on PORT`` and forwards until killed. Bytes keep their order (each chunk
is written at the time it was read plus the delay); bandwidth is what this process can
forward (hundreds of MiB/s here), not limited on purpose.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any, List, Optional, Tuple

CHUNK = 256 * 1024


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    # Chunks wait in order in a queue and are written once their time has come.
    queue: asyncio.Queue[Tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                writer.close()
                return
            writer.write(data)
            await writer.drain()

    sender = asyncio.ensure_future(send())
    try:
        while True:
            data = await reader.read(CHUNK)
            queue.put_nowait((loop.time() + delay, data))
            if not data:
                break
        await sender
    except (ConnectionError, OSError):
        sender.cancel()
        writer.close()


async def _serve(target_host: str, target_port: int, rtt: float) -> None:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(target_host, target_port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(_pipe(client_r, server_w, rtt / 2), _pipe(server_r, client_w, rtt / 2))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(f"listening on {port}", flush=True)
    async with server:
        await server.serve_forever()


def start(target_port: int, rtt_ms: float, target_host: str = "127.0.0.1") -> Tuple[int, subprocess.Popen]:
    """Start the proxy in a process of its own; its port and process (kill it to stop it)."""
    argv = [sys.executable, "-m", "benchmarks.delay_proxy", "--to", f"{target_host}:{target_port}"]
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(argv + ["--rtt-ms", str(rtt_ms)], stdout=subprocess.PIPE, text=True, cwd=repo)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("listening on "):
        proc.kill()
        raise RuntimeError(f"the delay proxy did not start: {line!r}")
    return int(line.split()[-1]), proc


def behind_delay(server: Any, rtt_ms: float, work: Path) -> Tuple[Any, subprocess.Popen]:
    """An SSH server of tests/servers.py (``SSHServer``) as clients see it through a proxy
    started here: a copy with the proxy's port and a known_hosts file naming the server's
    key under that port; and the proxy's process (kill it to stop it)."""
    port, proc = start(server.port, rtt_ms, server.host)
    key = server.host_key_line.split(" ", 1)[1]
    known = Path(work) / f"known_hosts-{port}"
    known.write_text(f"[{server.host}]:{port} {key}\n")
    return dataclasses.replace(server, port=port, known_hosts=str(known)), proc


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--to", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--rtt-ms", type=float, required=True, help="the round trip it adds, in ms")
    args = parser.parse_args(argv)
    host, _, port = args.to.rpartition(":")
    try:
        asyncio.run(_serve(host, int(port), args.rtt_ms / 1000))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
