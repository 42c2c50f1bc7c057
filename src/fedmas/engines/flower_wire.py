"""Flower's wire format for fedmas, in one place: the record names of a node's bundle, the packed weights'
array name and layout key, the config record, the keys the engine adds to a job's config, and the two
replies every ClientApp gives (a bundle's results; the node's partition). The server engine, the deployment
shim, the simulation's ClientApp and the worker all import it; it needs only the standard library and
``flwr.app`` (the shim must start fast).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.app import Message as FlMessage

TRAIN, QUERY = "train", "query"  # the message types the engine sends
KEY = "packed"  # the packed array's name in its ArrayRecord (see flower_pack)
LAYOUT = "fedmas_layout"  # the layout's key in the job's (or reply's) config
DEVICE_KEY = "fedmas_device"  # a node's own device (its node config's fedmas-device), added by its ClientApp
# what the engine (or the node's ClientApp) adds to a job's config (the client's own training settings are the rest)
ENGINE_KEYS = ("fedmas_config", "client", "fedmas_client_work", "fedmas_worker_idle_s", LAYOUT, DEVICE_KEY)


def part(kind: str, k: int) -> str:
    """The record name of the ``k``-th job's ``kind`` (arrays, config, metrics, error) in a node's bundle."""
    return f"{kind}-{k}"


def config_record(d: dict[str, Any]) -> ConfigRecord:
    """The plain values of ``d`` (str, int, float, bool) as a Flower ConfigRecord."""
    return ConfigRecord({k: v for k, v in d.items() if isinstance(v, (str, int, float, bool))})


Work = Callable[[ArrayRecord, dict[str, Any]], tuple[ArrayRecord, dict[str, Any], dict[str, float]]]


def bundle_reply(msg: FlMessage, work: Work) -> FlMessage:
    """Do each job of a node's bundle (``arrays-k``, ``config-k``) in turn; the reply holds ``arrays-k``,
    ``config-k`` and ``metrics-k`` per job, or ``error-k`` for a job that failed (the others still count)."""
    c = msg.content
    rd = RecordDict()
    for k in range(int(c["bundle"]["jobs"])):
        try:
            out, reply_config, metrics = work(c[part("arrays", k)], dict(c[part("config", k)]))
        except Exception as e:  # noqa: BLE001 - one job's failure is that client's, reported to the server
            rd[part("error", k)] = ConfigRecord({"error": f"{type(e).__name__}: {e}"[:2000]})
            continue
        rd[part("arrays", k)] = out
        rd[part("config", k)] = ConfigRecord(reply_config)
        rd[part("metrics", k)] = MetricRecord(metrics)
    return FlMessage(content=rd, reply_to=msg)


def partition_reply(msg: FlMessage, context: Context) -> FlMessage:
    """The engine's question at the start of a run: which partition of the clients this node serves."""
    nc = context.node_config
    info = ConfigRecord({"partition_id": int(nc.get("partition-id", 0)),
                         "num_partitions": int(nc.get("num-partitions", 1))})
    return FlMessage(content=RecordDict({"info": info}), reply_to=msg)


def on_node_device(work: Work, context: Context) -> Work:
    """``work`` told the device the node's config names (``--node-config "... fedmas-device=cuda:1"``), if any."""
    device = str(context.node_config.get("fedmas-device", "") or "")
    if not device:
        return work
    return lambda arrays, config: work(arrays, {**config, DEVICE_KEY: device})
