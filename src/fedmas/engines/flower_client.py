"""Flower engine, client side: the ClientApp that runs :func:`fedmas.client.handle_train` on a node."""

from __future__ import annotations

import functools

import yaml
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.app import Message as FlMessage
from flwr.clientapp import ClientApp

from fedmas.client import handle_train
from fedmas.config import Config
from fedmas.engines.flower import config_record
from fedmas.messages import Message
from fedmas.models import ModelCache, ModelSpec
from fedmas.runtime import configure_cpu


@functools.lru_cache(maxsize=4)
def _client_data(cfg_yaml: str, client: str):
    """A client's config, data and models (with their FLOP counts), kept while this process lives."""
    from fedmas.data import load_client

    cfg = Config.model_validate(yaml.safe_load(cfg_yaml))
    configure_cpu(cfg.threads)
    return cfg, load_client(cfg.data, cfg.task_list, client), ModelCache(ModelSpec(cfg.model.encoder, cfg.model.width))


def make_client_app() -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: FlMessage, context: Context) -> FlMessage:
        c = msg.content["config"]
        _cfg, data, models = _client_data(str(c["fedmas_config"]), str(c["client"]))
        config = {k: v for k, v in dict(c).items() if k not in ("fedmas_config", "client")}
        fm = Message(arrays=msg.content["arrays"].to_torch_state_dict(), config=config)
        out = handle_train(fm, data, models)
        rd = RecordDict({"arrays": ArrayRecord(torch_state_dict=out.arrays), "config": config_record(out.config),
                         "metrics": MetricRecord(out.metrics)})
        return FlMessage(content=rd, reply_to=msg)

    @app.query()
    def query(msg: FlMessage, context: Context) -> FlMessage:
        nc = context.node_config
        info = ConfigRecord({"partition_id": int(nc.get("partition-id", 0)),
                             "num_partitions": int(nc.get("num-partitions", 1))})
        return FlMessage(content=RecordDict({"info": info}), reply_to=msg)

    return app
