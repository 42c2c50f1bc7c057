"""The ClientApp that `flwr run` starts on each SuperNode: fedmas local training."""

from fedmas.engines.flower_client import make_client_app

client_app = make_client_app()
