"""The warm fedmas worker beside a Flower SuperNode: it trains what the node's ClientApp shim hands it.

``python -m fedmas.engines.flower_worker --socket PATH [--watch-pid PID] [--idle-s 1800]``
(or ``fedmas worker --socket PATH``, to start it yourself before the SuperNode).

The shim (:mod:`fedmas.engines.flower_shim`) starts it on the node's first message unless one
listens already. It listens on
a Unix socket (only this user can reach it), serves one message at a time (a SuperNode handles one
at a time too), and keeps torch, each client's data and the models between messages. It exits when
the process ``--watch-pid`` (the SuperNode side that started the shim) is gone, or after
``--idle-s`` seconds without a message; either way it removes its socket.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path

import torch  # noqa: F401 - imported first: ArrayRecord.to_torch_state_dict needs it loaded

from fedmas.engines.flower_client import train_here
from fedmas.engines.flower_shim import IDLE_S, record_from_wire, record_to_wire, recv_frame, send_frame, try_connect

CHECK_S = 2.0  # how often an idle worker checks that its SuperNode is still there


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def serve(path: Path, watch_pid: int | None, idle_s: float) -> None:
    if path.exists():
        live = try_connect(path)
        if live is not None:
            live.close()
            raise ValueError(f"a worker already listens on {path}")
        path.unlink()  # a socket left by a worker that died
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    os.chmod(path, 0o600)
    srv.listen(8)
    srv.settimeout(CHECK_S)
    last = time.monotonic()
    print(f"fedmas worker {os.getpid()} listening on {path}", flush=True)
    try:
        while True:
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                if watch_pid and not _alive(watch_pid):
                    print(f"process {watch_pid} is gone: stopping", flush=True)
                    return
                if time.monotonic() - last > idle_s:
                    print(f"idle for {idle_s:g} s: stopping", flush=True)
                    return
                continue
            with conn:
                conn.settimeout(None)
                handle(conn)
            last = time.monotonic()
    finally:
        srv.close()
        if path.exists():
            path.unlink()


def handle(conn: socket.socket) -> None:
    try:
        header, blobs = recv_frame(conn)
    except (ConnectionError, ValueError, OSError) as e:
        print(f"unreadable request: {type(e).__name__}: {e}", flush=True)
        return
    t0 = time.perf_counter()
    try:
        arrays, config, metrics = train_here(record_from_wire(header["arrays"], blobs), header["config"])
        meta, out = record_to_wire(arrays)
        send_frame(conn, {"arrays": meta, "config": config, "metrics": metrics}, out)
        print(f"{time.strftime('%H:%M:%S')} client {header['config'].get('client')} round "
              f"{header['config'].get('round')}: {time.perf_counter() - t0:.2f} s (training "
              f"{metrics.get('compute_s', 0):.2f} s)", flush=True)
    except Exception as e:  # noqa: BLE001 - the error goes back to the shim, which fails the message
        print(f"training failed: {type(e).__name__}: {e}", flush=True)
        try:
            send_frame(conn, {"error": f"{type(e).__name__}: {e}"}, [])
        except OSError:
            pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--socket", required=True)
    ap.add_argument("--watch-pid", type=int, default=None)
    ap.add_argument("--idle-s", type=float, default=IDLE_S)
    a = ap.parse_args(argv)
    serve(Path(a.socket), a.watch_pid, a.idle_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
