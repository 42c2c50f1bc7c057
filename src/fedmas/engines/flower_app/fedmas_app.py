"""Flower components of fedmas (see fedmas.engines.flower)."""

from fedmas.engines.flower import make_client_app, make_server_app

server_app = make_server_app()
client_app = make_client_app()
