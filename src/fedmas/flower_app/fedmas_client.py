"""The ClientApp that `flwr run` starts on each SuperNode: a thin shim that hands each message to the
node's warm fedmas worker (see fedmas.engines.flower_shim)."""

from fedmas.engines.flower_shim import make_shim_app

client_app = make_shim_app()
