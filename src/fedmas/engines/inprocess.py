"""The default engine: clients run in this process, one after another.

Messages are handed over as tensors (no serialisation); the bytes they would
take on the wire (safetensors) are computed exactly and accounted. With a
per-round deadline, each job runs in a worker thread with its own model and gets
the deadline from its own start (clients run one after another here, in
parallel on real devices); a job that has not replied in time is reported as a
timeout (its thread is abandoned, its result ignored).
"""

from __future__ import annotations

import threading
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from torch.utils.data import Dataset

from fedmas.client import handle_train
from fedmas.data.taskonomy import DataError
from fedmas.messages import Job, Reply, message_nbytes
from fedmas.models import ModelCache, ModelSpec

if TYPE_CHECKING:
    from fedmas.config import Config
    from fedmas.engines import Drive


class InProcessEngine:
    def __init__(self, clients: dict[str, Dataset], spec: ModelSpec):
        self.clients = clients
        self.spec = spec
        self.models = ModelCache(spec)
        self.abandoned: list[threading.Thread] = []

    def run(self, jobs: list[Job], deadline_s: float | None) -> list[Reply]:
        if deadline_s is None:
            return [self._one(job, self.models) for job in jobs]
        return self._with_deadline(jobs, deadline_s)

    def _one(self, job: Job, models: ModelCache) -> Reply:
        down = message_nbytes(job.message)
        try:
            out = handle_train(job.message, self.clients[job.client], models)
        except DataError:
            raise  # the user's data on this machine is broken: stop with a message naming the file
        except Exception as e:  # noqa: BLE001 - a failing client is a dropout, not a crash
            last = traceback.extract_tb(e.__traceback__)[-1]
            return Reply(job.client, job.fl_task, None, f"{type(e).__name__}: {e} (at {last.name})", down, 0)
        return Reply(job.client, job.fl_task, out, None, down, message_nbytes(out))

    def _with_deadline(self, jobs: list[Job], deadline_s: float) -> list[Reply]:
        replies: list[Reply] = []
        for job in jobs:
            box: list[Reply | BaseException] = []

            def work(j: Job = job, b: list = box) -> None:
                try:
                    b.append(self._one(j, ModelCache(self.spec, self.models.flops)))  # own models, shared counts
                except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                    b.append(e)

            worker = threading.Thread(target=work, daemon=True)
            worker.start()
            worker.join(deadline_s)
            if box and isinstance(box[0], BaseException):
                raise box[0]
            if box:
                replies.append(box[0])
            else:
                self.abandoned.append(worker)
                replies.append(Reply(job.client, job.fl_task, None, f"timeout: no reply within {deadline_s:g} s",
                                     message_nbytes(job.message), 0))
        return replies

    def close(self) -> None:
        """Wait for the jobs abandoned at a deadline (their results are ignored): a thread still running
        torch when the interpreter shuts down would abort the process."""
        for worker in self.abandoned:
            worker.join()
        self.abandoned.clear()


def launch(cfg: Config, run_dir: Path, drive: Drive, device: str) -> None:
    """Clients run in this process, beside the server."""
    drive(lambda _cfg, data, spec: InProcessEngine(data.clients, spec))
