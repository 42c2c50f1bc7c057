"""The ServerApp that `flwr run` starts on the SuperLink machine: it drives a fedmas run folder."""

from pathlib import Path

from fedmas.engines.flower import make_server_app
from fedmas.run import serve_run_folder


def _serve(context, engine_factory):
    rc = context.run_config
    serve_run_folder(Path(str(rc["out"])), engine_factory, str(rc.get("config", "")) or None,
                     [s for s in str(rc.get("set", "")).split() if s])


server_app = make_server_app(_serve)
