"""Flower engine, client side: fedmas local training for one Flower message.

:func:`train_here` is the work itself, run by the warm node worker
(:mod:`fedmas.engines.flower_worker`) in a deployment and directly by the simulation's ClientApp
(:func:`make_client_app`; Ray's actors stay warm by themselves).
"""

from __future__ import annotations

import functools
from typing import Any

import yaml
from flwr.app import Array, ArrayRecord, Context
from flwr.app import Message as FlMessage
from flwr.clientapp import ClientApp

from fedmas.client import handle_train
from fedmas.config import Config
from fedmas.engines.flower_pack import pack_torch, unpack_torch
from fedmas.engines.flower_wire import (
    DEVICE_KEY,
    ENGINE_KEYS,
    KEY,
    LAYOUT,
    bundle_reply,
    config_record,
    on_node_device,
    partition_reply,
)
from fedmas.messages import Message
from fedmas.models import ModelCache, ModelSpec, model_spec
from fedmas.runtime import configure_cpu, resolve_device


@functools.lru_cache(maxsize=64)
def _client_data(cfg_yaml: str, client: str):
    """A client's config and data, kept while this process lives."""
    from fedmas.data import load_client

    cfg = Config.model_validate(yaml.safe_load(cfg_yaml))
    configure_cpu(cfg.flower.node_threads or cfg.cpu_threads)
    return cfg, load_client(cfg.data, cfg.task_list, client)


@functools.lru_cache(maxsize=4)
def _models(spec: ModelSpec) -> ModelCache:
    """One model cache per architecture, shared by the clients this process serves (``device: auto`` is this
    node's own GPU when it has one)."""
    return ModelCache(spec)


def train_here(arrays: ArrayRecord, config: dict[str, Any]) -> tuple[ArrayRecord, dict[str, Any], dict[str, float]]:
    """Train the message's client on the message's weights; the reply's arrays, config and metrics."""
    cfg, data = _client_data(str(config["fedmas_config"]), str(config["client"]))
    # the node's own device (its node config's fedmas-device) before the run's; auto: this node's GPU if any
    models = _models(model_spec(cfg, resolve_device(str(config.get(DEVICE_KEY) or cfg.device))))
    local = {k: v for k, v in config.items() if k not in ENGINE_KEYS}
    weights = unpack_torch(arrays[KEY].numpy(), str(config[LAYOUT]))
    out = handle_train(Message.from_wire(weights, local), data, models)
    flat, layout = pack_torch(out.wire_arrays())
    return ArrayRecord({KEY: Array(flat)}), {**config_record(out.config), LAYOUT: layout}, dict(out.metrics)


def make_client_app() -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: FlMessage, context: Context) -> FlMessage:
        return bundle_reply(msg, on_node_device(train_here, context))

    app.query()(partition_reply)
    return app
