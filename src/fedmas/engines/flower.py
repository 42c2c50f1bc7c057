"""Flower engine, server side: the same fedmas messages carried by Flower's Message API (flwr 1.41).

The ServerApp runs fedmas's own round loop and plans unchanged; only the engine
differs. Each Flower node hosts one or more fedmas clients: client k (in sorted
order) lives on the node whose ``partition-id`` is k mod ``num-partitions``.
The ClientApp (:mod:`fedmas.engines.flower_client`) runs :func:`fedmas.client.handle_train`;
nothing here imports training code. ``engine: flower-sim`` is :func:`launch` (Ray
simulation in this process); ``engine: flower`` is :mod:`fedmas.engines.flower_deploy`.

A round sends each node one message carrying all of that node's jobs, so Flower's per-message
cost (a ``flwr-clientapp`` process per message, its polling) is paid once per node, not once
per client. Replies are matched by ``metadata.reply_to_message_id``. Three things end a wait for
a node's reply, and each makes its clients dropouts that the round loop rejects like any other
failed client: the node left the SuperLink (checked every ``flower.liveness_s``;
death is found within seconds, whatever the deadlines); the node is a straggler
(half the round's node replies are in and it has taken more than
``flower.straggler_multiple`` × the round's median reply time, and at least
``flower.straggler_min_s``: a busy machine slows every client alike, so the pace
rather than a fixed number of seconds sets the limit); or the round's hard
deadline passed. The question each node is asked first (which partition it holds) is waited
for under the same rules; a node still silent keeps its question, and its clients join at the
first round after it answers.
"""

from __future__ import annotations

import logging
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict
from flwr.app import Message as FlMessage
from flwr.serverapp import Grid, ServerApp

from fedmas.config import Config
from fedmas.engines import Drive, EngineFactory
from fedmas.engines.flower_pack import pack_torch, unpack_torch
from fedmas.engines.flower_wire import KEY, LAYOUT, QUERY, TRAIN, config_record, part
from fedmas.messages import Job, Message, Reply

log = logging.getLogger("fedmas")


def _payload(rd: RecordDict, k: int) -> int:
    """Bytes of the ``k``-th job's part of a bundle (its arrays and the text of its config and metrics)."""
    n, mine = 0, {part(kind, k) for kind in ("arrays", "config", "metrics", "error")}
    for key, v in rd.items():
        if key not in mine:
            continue
        if isinstance(v, ArrayRecord):
            n += v.count_bytes()
        else:
            n += len(repr(dict(v)))
    return n


class FlowerEngine:
    """Carries jobs over a Flower ``Grid`` (deployment or simulation)."""

    clock = staticmethod(time.monotonic)  # replaceable in tests, with sleep
    sleep = staticmethod(time.sleep)

    def __init__(self, grid: Grid, cfg: Config, clients: list[str]):
        self.grid, self.cfg = grid, cfg
        self.cfg_yaml = yaml.safe_dump(cfg.model_dump(), sort_keys=False)
        self.clients = sorted(clients)
        self.node_of: dict[str, int] = {}
        self.parts: dict[int, tuple[int, int]] = {}  # node → (partition-id, num-partitions), as it answered
        self.asked: dict[int, str] = {}  # node → id of its unanswered partition question
        self._wait_for_nodes()

    @property
    def known_nodes(self) -> set[int]:
        """Nodes that said their partition or were asked it."""
        return set(self.parts) | set(self.asked)

    def _wait_for_nodes(self) -> None:
        want, end = self.cfg.flower.nodes, self.clock() + self.cfg.flower.connect_timeout_s
        while True:
            nodes = list(self.grid.get_node_ids())
            if len(nodes) >= want or self.clock() > end:
                break
            self.sleep(0.5)
        if not nodes:
            raise RuntimeError("no Flower SuperNode connected to the SuperLink")
        self._map_nodes(nodes)

    def _map_nodes(self, nodes: list[int]) -> None:
        """Ask the nodes not asked yet which partition they hold, wait for their answers under the rules of a
        round's replies, and map the clients to the connected nodes. Slow is not dead: the wait for a node
        ends when it answers, when it leaves the SuperLink (checked every ``flower.liveness_s``), when it is a
        straggler (once half the answers are in, ``flower.straggler_multiple`` × their median time, and at
        least ``flower.straggler_min_s``), or at the hard deadline ``flower.round_deadline_s``. A node still
        silent then keeps its question: its answer is collected whenever it comes, without waiting again."""
        fc = self.cfg.flower
        new = [n for n in nodes if n not in self.known_nodes]
        msgs = [FlMessage(content=RecordDict({"q": ConfigRecord({"what": "partition"})}), dst_node_id=n,
                          message_type=QUERY, group_id="map") for n in new]
        self.asked.update({n: mid for n, mid in zip(new, self.grid.push_messages(msgs) if msgs else []) if mid})
        start = next_check = self.clock()
        took: list[float] = []
        waiting = {n for n in new if n in self.asked}
        while waiting and self.clock() - start < fc.round_deadline_s:
            for node in self._collect():
                if node in waiting:
                    waiting.discard(node)
                    took.append(self.clock() - start)
            if waiting and self.clock() >= next_check:
                next_check = self.clock() + fc.liveness_s
                left = waiting - set(self.grid.get_node_ids())
                waiting -= left
                for n in left:
                    self.asked.pop(n, None)
            limit = self._straggler_limit(took, len(new))
            if waiting and limit is not None and self.clock() - start > limit:
                break
            if waiting:
                self.sleep(fc.poll_s)
        if waiting:
            log.warning("Flower nodes that have not said their partition yet: %d (their clients are offline "
                        "until they do)", len(waiting))
        self._assign(nodes)

    def _straggler_limit(self, took: list[float], asked: int) -> float | None:
        """Seconds after which a node still owing its reply is a straggler, given the reply times ``took`` of
        the ``asked`` nodes so far: None until half have replied (or with ``straggler_multiple`` null)."""
        fc = self.cfg.flower
        if not fc.straggler_multiple or len(took) < (asked + 1) // 2:
            return None
        return max(fc.straggler_min_s, fc.straggler_multiple * statistics.median(took))

    def _collect(self) -> list[int]:
        """The nodes whose answer to the partition question has come (recorded in ``parts``)."""
        if not self.asked:
            return []
        node_of_mid = {mid: n for n, mid in self.asked.items()}
        got = []
        for r in self.grid.pull_messages(list(node_of_mid)):
            node = node_of_mid.get(r.metadata.reply_to_message_id)
            if node is None or node not in self.asked:
                continue
            del self.asked[node]
            got.append(node)
            if not r.has_error():
                info = r.content["info"]
                self.parts[node] = (int(info["partition_id"]), int(info["num_partitions"]))
        return got

    def _assign(self, nodes: list[int]) -> None:
        """Each client to the connected node (of ``nodes``) that holds its partition."""
        self.node_of = {}
        for node in nodes:
            if node in self.parts:
                pid, npart = self.parts[node]
                for k, c in enumerate(self.clients):
                    if k % npart == pid:
                        self.node_of[c] = node
        log.info("Flower nodes: %d; clients mapped: %d/%d", len([n for n in nodes if n in self.parts]),
                 len(self.node_of), len(self.clients))

    def run(self, jobs: list[Job], deadline_s: float | None) -> list[Reply]:
        """One Flower message per node, carrying all of that node's jobs (a *bundle*: ``arrays-k`` and
        ``config-k`` for its k-th job, named by :func:`~fedmas.engines.flower_shim.part`); its reply
        carries ``arrays-k``, ``config-k``, ``metrics-k`` (or ``error-k``) per job. The waiting rules
        apply to the node's message as a whole."""
        deadline = deadline_s or self.cfg.flower.round_deadline_s
        alive = set(self.grid.get_node_ids())
        if not alive <= self.known_nodes:
            self._map_nodes(list(alive))  # a node joined or came back
        elif self._collect() or not set(self.node_of.values()) <= alive:
            self._assign(list(alive))  # a late answer came, or a node left
        out: dict[int, Reply] = {}
        by_node: dict[int, list[int]] = {}
        for i, job in enumerate(jobs):
            node = self.node_of.get(job.client)
            if node is None or node not in alive:
                out[i] = Reply(job.client, job.fl_task, None, "node offline: its Flower SuperNode is not connected")
                continue
            by_node.setdefault(node, []).append(i)
        msgs, packed = [], {}  # the clients of one FL task share its weights and state: packed once
        for node, idx in by_node.items():
            rd = RecordDict({"bundle": ConfigRecord({"jobs": len(idx)})})
            for k, i in enumerate(idx):
                job = jobs[i]
                same = (id(job.message.arrays), id(job.message.state))
                if same not in packed:
                    flat, layout = pack_torch(job.message.wire_arrays())
                    packed[same] = Array(flat), layout
                array, layout = packed[same]
                cfg = {**job.message.config, "client": job.client, "fedmas_config": self.cfg_yaml,
                       "fedmas_client_work": self.cfg.flower.client_work,
                       "fedmas_worker_idle_s": self.cfg.flower.worker_idle_s, LAYOUT: layout}
                rd[part("arrays", k)] = ArrayRecord({KEY: array})
                rd[part("config", k)] = config_record(cfg)
            msgs.append((idx, rd, node))
        group = f"round-{jobs[0].message.config.get('round', 0)}" if jobs else "round"
        ids = self.grid.push_messages([FlMessage(content=rd, dst_node_id=node, message_type=TRAIN, group_id=group)
                                       for _, rd, node in msgs])
        sent: dict[str, list[int]] = {}
        for (idx, rd, _), mid in zip(msgs, ids):
            sent[mid] = idx
            for k, i in enumerate(idx):
                out[i] = Reply(jobs[i].client, jobs[i].fl_task, None, f"timeout: no reply within {deadline:g} s",
                               bytes_down=_payload(rd, k))
        node_of_msg = {mid: node for (_, _, node), mid in zip(msgs, ids)}
        fc = self.cfg.flower
        pending, start = set(sent), self.clock()
        end, next_check, took = start + deadline, start + fc.liveness_s, []

        def fail(mid: str, why: str) -> None:
            for i in sent[mid]:
                out[i] = Reply(jobs[i].client, jobs[i].fl_task, None, why, out[i].bytes_down)

        while pending and self.clock() < end:
            now = self.clock()
            if now >= next_check:  # death is the node leaving, not the deadline: slow is not dead
                next_check = now + fc.liveness_s
                alive = set(self.grid.get_node_ids())
                for mid in [m for m in pending if node_of_msg[m] not in alive]:
                    pending.discard(mid)
                    fail(mid, "node offline: its Flower SuperNode left during the round")
            for r in self.grid.pull_messages(list(pending)):
                mid = r.metadata.reply_to_message_id
                if mid not in pending:
                    continue
                pending.discard(mid)
                took.append(self.clock() - start)
                for k, i in enumerate(sent[mid]):
                    out[i] = self._reply(jobs[i], r, k, out[i].bytes_down)
            limit = self._straggler_limit(took, len(sent))
            if pending and limit is not None:
                if self.clock() - start > limit:
                    for mid in pending:
                        fail(mid, f"straggler: no reply within {limit:.0f} s ({fc.straggler_multiple:g}x the "
                                  "round's median reply time)")
                    pending.clear()
            if pending:
                self.sleep(fc.poll_s)
        return [out[i] for i in range(len(jobs))]

    @staticmethod
    def _reply(job: Job, r: FlMessage, k: int, down: int) -> Reply:
        """The reply to the ``k``-th job of a node's bundle."""
        if r.has_error():
            return Reply(job.client, job.fl_task, None, f"Flower error {r.error.code}: {r.error.reason}", down)
        try:
            c = r.content
            if part("error", k) in c:
                return Reply(job.client, job.fl_task, None, f"node failed: {c[part('error', k)]['error']}", down,
                             _payload(c, k))
            config = dict(c[part("config", k)])
            arrays = unpack_torch(c[part("arrays", k)][KEY].numpy(), str(config.pop(LAYOUT)))
            msg = Message.from_wire(arrays, config, {m: float(v) for m, v in c[part("metrics", k)].items()})
        except Exception as e:  # noqa: BLE001 - an unreadable reply is a rejected client
            return Reply(job.client, job.fl_task, None, f"malformed Flower reply: {type(e).__name__}", down)
        return Reply(job.client, job.fl_task, msg, None, down, _payload(c, k))


# ---------------------------------------------------------------- server side


def make_server_app(serve: Callable[[Context, EngineFactory], Any]) -> ServerApp:
    """A ServerApp whose main calls ``serve(context, engine_factory)``: the factory builds a
    :class:`FlowerEngine` on this run's ``Grid`` for the data the server side loads."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        serve(context, lambda cfg, data, _spec: FlowerEngine(grid, cfg, data.client_ids))

    return app


def launch(cfg: Config, run_dir: Path, drive: Drive, device: str) -> None:
    """``engine: flower-sim``: Flower's Ray-backed simulation on this machine; its ServerApp drives this run."""
    from flwr.simulation import run_simulation as flwr_sim

    from fedmas.engines.flower_client import make_client_app

    # Ray's own folder: a temporary one (its unix-socket paths must stay under ~107 characters, and nothing is
    # written beside the run folder), removed after the simulation unless the user chose one (RAY_TMPDIR)
    own = "RAY_TMPDIR" not in os.environ
    ray_tmp = Path(tempfile.mkdtemp(prefix="fedmas-ray-")) if own else Path(os.environ["RAY_TMPDIR"])
    os.environ["RAY_TMPDIR"] = str(ray_tmp)
    try:
        _simulate(cfg, drive, flwr_sim, make_client_app, device)
    finally:
        if own:
            os.environ.pop("RAY_TMPDIR", None)
            shutil.rmtree(ray_tmp, ignore_errors=True)


def _simulate(cfg: Config, drive: Drive, flwr_sim: Callable[..., Any], make_client_app: Callable[[], Any],
              device: str) -> None:
    cpus = max(1, cfg.cpu_threads)
    # on a GPU, the clients Ray runs at once (one per CPU it is given) share it: each asks for its fraction
    gpus = 1.0 / cpus if device.startswith("cuda") else 0.0
    flwr_sim(server_app=make_server_app(lambda _ctx, factory: drive(factory)), client_app=make_client_app(),
             num_supernodes=cfg.flower.nodes,
             backend_config={"client_resources": {"num_cpus": 1, "num_gpus": gpus},
                             "init_args": {"num_cpus": cpus, **({"num_gpus": 1} if gpus else {})}})
