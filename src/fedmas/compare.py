"""``fedmas compare``: run several methods on one config and draw the paper's comparison.

Each method runs in its own folder under the output folder; a finished method is
not run again and an interrupted one is resumed, so the command itself is
resumable. Writes ``comparison.json``, ``comparison.md``, ``comparison.png``
(total test loss against training compute) and ``energy.png``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from concurrent.futures import Future, as_completed
from pathlib import Path
from typing import Any

from fedmas.checks import check_config
from fedmas.compare_summary import (
    dataset_name,
    learned_text,
    results_table,
    summarise,
    unlearned,
    wins,
    wins_text,
)
from fedmas.config import Config, ConfigError, as_saved, read_yaml_mapping
from fedmas.data import FederatedData, load_federated
from fedmas.methods import PLANS
from fedmas.report import comparison_figure, energy_figure, short
from fedmas.run import RunFailed, execute
from fedmas.runfolder import holds_run


def _names() -> tuple[dict[str, tuple[str, dict[str, Any]]], list[str]]:
    """From the method registry: plain names (a method or one of its variants) → (method, overrides),
    and the methods that take a split count (``name:K``)."""
    plain: dict[str, tuple[str, dict[str, Any]]] = {}
    splitting = []
    for name, plan in PLANS.items():
        if plan.splits:
            splitting.append(name)
        else:
            plain[name] = (name, {})
        for variant, over in plan.variants.items():
            plain[variant] = (name, over)
    return plain, splitting


def parse_methods(spec: str, n_tasks: int) -> list[tuple[str, str, dict[str, Any]]]:
    """'mas:2,one-by-one,...' → [(key, method, config overrides)]."""
    plain, splitting = _names()
    out = []
    for item in [s.strip() for s in spec.split(",") if s.strip()]:
        name, _, k = item.partition(":")
        if name in plain and not k:
            method, over = plain[name]
            out.append((name, method, over))
        elif name in splitting:
            if k == "auto" and PLANS[name].auto_splits:
                out.append((item, name, {"mas": {"splits": "auto"}}))
                continue
            if not k.isdigit() or not 1 <= int(k) <= n_tasks:
                raise ConfigError(f"--methods {item!r}: {name} needs a split count 1..{n_tasks}, e.g. {name}:2")
            out.append((item, name, {"mas": {"splits": int(k)}}))
        else:
            autos = [f"{n}:auto" for n in splitting if PLANS[n].auto_splits]
            raise ConfigError(f"--methods: unknown method {item!r}; accepted: {', '.join(plain)}, "
                              f"{', '.join(s + ':K' for s in splitting)}, {', '.join(autos)}")
    if not out:
        raise ConfigError("--methods is empty")
    keys = [k for k, _, _ in out]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ConfigError(f"--methods names {', '.join(twice)} more than once; each method is run once per seed")
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _data_for(run_cfg: Config, cache: dict[str, FederatedData]) -> FederatedData:
    """The comparison's data, loaded once per distinct data config and task list."""
    key = json.dumps([run_cfg.data.model_dump(), list(run_cfg.task_list), run_cfg.plugins], sort_keys=True)
    if key not in cache:
        cache[key] = load_federated(run_cfg.data, run_cfg.task_list, run_cfg.arrival_tasks)
    return cache[key]


def _run_dir(out: Path, folder: str, seed: int, by_seed: bool) -> Path:
    """A run's folder: ``<out>/seed-<s>/<method>`` when the seeds were given, ``<out>/<method>`` when the
    config's seed was used. A one-seed comparison with ``--seeds`` made before this rule put its runs in
    ``<out>/<method>``: such a run of this seed is used where it is (reused or resumed, not run again)."""
    nested, flat = out / f"seed-{seed}" / folder, out / folder
    if not by_seed:
        return flat
    if not nested.exists() and (flat / "config.yaml").is_file():
        saved = read_yaml_mapping(flat / "config.yaml", "run config")
        if saved.get("seed") == seed:
            return flat
    return nested


def config_changes(run_dir: Path, run_cfg: Config) -> list[str]:
    """How the run saved in ``run_dir`` differs from ``run_cfg`` (``"key.path: old → new"``; empty when the
    folder holds no run or a run of this config). Torch threads are left out: they change float order only."""
    saved = run_dir / "config.yaml"
    if not saved.exists():
        return []
    old = read_yaml_mapping(saved, "run config")
    try:  # as this version reads it: a key added since then takes its default, like --resume does
        old = Config.model_validate(as_saved(old)).model_dump()
    except ValueError:
        pass  # not a valid config any more: compared as written, so the difference is named
    return [d for d in _diff(old, run_cfg.model_dump()) if not d.startswith("threads:")]


def _run_one(run_cfg: Config, run_dir: Path, label: str, progress: bool,
             data: dict[str, FederatedData] | None = None) -> dict[str, Any]:
    """Run (or resume, or reuse) one method's run; refuses a folder that holds a run of another config."""
    changed = config_changes(run_dir, run_cfg)
    if changed:
        raise ConfigError(f"{run_dir} holds a run of {label} with another config ({'; '.join(changed[:3])}); "
                          f"choose another --out for this comparison")
    if (run_dir / "summary.json").exists():  # finished: its summary comes back at once
        return execute(None, run_dir, resume=True, progress=False)  # type: ignore[return-value]
    loaded = _data_for(run_cfg, data if data is not None else {})
    if holds_run(run_dir):  # interrupted
        summary = execute(None, run_dir, resume=True, progress=progress, data=loaded, threads=run_cfg.threads)
    else:  # new, or a run of this config that never checkpointed
        summary = execute(run_cfg, run_dir, progress=progress, force=(run_dir / "config.yaml").exists(), data=loaded)
    assert summary is not None
    return summary


def _diff(old: Any, new: Any, path: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new), key=str)
                for d in _diff(old.get(k), new.get(k), f"{path}.{k}" if path else str(k))]
    return [] if old == new else [f"{path}: {old!r} → {new!r}"]


def compare(cfg: Config, methods: str, out: Path, progress: bool = True,
            seeds: list[int] | None = None, jobs: int = 1) -> list[dict[str, Any]]:
    """Run every method (under every seed of ``seeds``; default: the config's seed) and report each
    method's mean with a 95% Student-t interval over the seeds. ``jobs`` > 1 runs that many runs at once,
    each in its own process with ``max(1, threads // jobs)`` torch threads (recorded in its config.yaml);
    a run's results do not depend on ``jobs`` at a given thread count."""
    plan = parse_methods(methods, len(cfg.task_list))
    by_seed = bool(seeds)  # runs in seed-<s>/ folders, so that a comparison run again with other seeds reuses them
    seeds = seeds or [cfg.seed]
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: expected a number of parallel runs ≥ 1")
    claim_comparison_dir(out)
    base = cfg.model_dump()
    threads = max(1, cfg.cpu_threads // jobs)
    todo = []
    for seed in seeds:
        for label, method, over in plan:
            run_cfg = check_config(Config.model_validate(_merge({**base, "method": method, "seed": seed,
                                                                 "threads": threads, "name": f"{cfg.name}-{label}"},
                                                                over)), f"--methods {label}")
            todo.append((label, seed, run_cfg, _run_dir(out, label.replace(":", "-"), seed, by_seed)))
    summaries = run_all(todo, progress, jobs)
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in plan}
    for (label, seed, _, _), summary in zip(todo, summaries):
        c = summary["costs"]
        runs[label].append({"seed": seed, "total_loss": summary["total_test_loss"],
                            "test_loss": summary["test_loss"], "groups": summary.get("groups"),
                            "train_tflop": c.get("train_flop", 0.0) / 1e12, "train_s": c["train_s"],
                            "energy_j": c["energy_j"], "bytes": c["bytes_down"] + c["bytes_up"],
                            "rounds": summary["rounds"], "energy_source": summary["energy_source"],
                            "skill": summary.get("test_skill", {}), "mean_skill": summary.get("mean_skill"),
                            "not_converged": summary.get("not_converged", [])})
    results = summarise(plan, runs, list(cfg.task_list))
    doc = {"config": base, "seeds": seeds, "results": results, "wins": wins(runs),
           "not_learned": unlearned(results, list(cfg.task_list))}
    (out / "comparison.json").write_text(json.dumps(doc, indent=1))
    md = (results_table(results, list(cfg.task_list), len(seeds)) + "\n\n"
          + learned_text(doc["not_learned"], results) + "\n\n" + wins_text(doc["wins"], len(seeds)))
    (out / "comparison.md").write_text(md)
    clients = f"{cfg.data.buildings} clients, " if cfg.data.dataset == "scenes" else ""  # others: unknown here
    title = (f"{len(cfg.task_list)} tasks on {dataset_name(cfg.data.dataset)} ({clients}"
             f"{cfg.federation.clients_per_round}/round, R={cfg.federation.rounds}, "
             f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''})")
    comparison_figure(results, out / "comparison.png", title,
                      [short(t) for t in doc["not_learned"]])
    energy_figure(results, out / "energy.png", results[0]["energy_source"])
    if progress:
        print(md)
    return results


COMPARE_MARKER = ".fedmas-compare"
COMPARE_FILES = ("comparison.json", "comparison.md", "comparison.png", "energy.png", COMPARE_MARKER)


def claim_comparison_dir(out: Path) -> None:
    """Use ``out`` for a comparison: a new or empty folder, or one a comparison made (resumed); a folder
    holding anything else is refused, so no file of the user's is overwritten."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    if out.exists() and not (out / COMPARE_MARKER).is_file():
        made = (out / "comparison.json").is_file()  # a comparison made before the marker file existed
        foreign = [p.name for p in sorted(out.iterdir()) if not _from_a_comparison(p, made)]
        if foreign:
            raise ConfigError(f"--out {out} is not empty and not a fedmas comparison folder (it holds "
                              f"{', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / COMPARE_MARKER).write_text("this folder holds a fedmas comparison; fedmas may replace its files here\n")


def _from_a_comparison(p: Path, made: bool) -> bool:
    """A comparison's own file (where ``made``: comparison.json is there), a run folder, or a seed folder of
    run folders (comparisons made before the marker file existed are recognised by these)."""
    if p.name in COMPARE_FILES:
        return made and p.is_file()
    if not p.is_dir() or p.is_symlink():
        return False
    if holds_run(p) or (p / "config.yaml").is_file():
        return True
    return p.name.startswith("seed-") and all(q.is_dir() and (holds_run(q) or (q / "config.yaml").is_file())
                                              for q in p.iterdir())


def run_all(todo: list[tuple[str, int, Config, Path]], progress: bool, jobs: int) -> list[dict[str, Any]]:
    """Every run's summary, in ``todo``'s order: one after another, or ``jobs`` at a time in worker processes."""
    total = len(todo)
    if jobs == 1:
        data: dict[str, FederatedData] = {}
        out = []
        for i, (label, seed, run_cfg, run_dir) in enumerate(todo):
            if progress:
                print(f"[fedmas compare] {i + 1}/{total} {label} seed {seed} → {run_dir}", file=sys.stderr, flush=True)
            out.append(_run_one(run_cfg, run_dir, label, progress, data))
        return out
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    def done(i: int, summary: dict[str, Any], finished: int) -> None:
        if progress:
            label, seed, _, run_dir = todo[i]
            print(f"[fedmas compare] {finished}/{total} done: {label} seed {seed} → {run_dir} "
                  f"(total test loss {summary['total_test_loss']:.4f})", file=sys.stderr, flush=True)

    def failed(i: int, running: int, error: BaseException) -> None:
        label, seed, _, run_dir = todo[i]
        if isinstance(error, BrokenProcessPool):  # every worker is gone: this one message instead
            raise RunFailed(f"a worker process of --jobs {jobs} ended abruptly during {label} seed {seed} "
                            f"({run_dir}): killed from outside, or out of memory? Every finished run and "
                            f"every run's last checkpoint are kept: the same command resumes") from None
        print(f"[fedmas compare] {label} seed {seed} ({run_dir}) failed; runs not yet started will not start"
              + (f", the {running} running ones stop at their end (the same command resumes the comparison)"
                 if running else ""), file=sys.stderr, flush=True)

    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=watch_parent,
                             initargs=(os.getpid(),)) as pool:
        futures = {pool.submit(_run_in_worker, run_cfg.model_dump(), str(run_dir), label, progress,
                               f"{i + 1}/{total} {label} seed {seed} → {run_dir}"): i
                   for i, (label, seed, run_cfg, run_dir) in enumerate(todo)}
        results = gather(futures, done, failed)
    return [results[i] for i in range(total)]


def watch_parent(parent: int, every_s: float = 1.0) -> None:
    """In a worker of ``compare --jobs``: end this process when the one that started it is gone (killed, so
    it can no longer hand out work or collect results); the run it was training keeps its last checkpoint,
    and the same command resumes it."""
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        os._exit(70)

    threading.Thread(target=watch, name="fedmas-watch-parent", daemon=True).start()


def gather(futures: dict[Future[Any], int], done: Callable[[int, Any, int], None],
           failed: Callable[[int, int, BaseException], None] | None = None) -> dict[int, Any]:
    """The results of ``futures`` by index, ``done(index, result, how many so far)`` called as each one
    finishes (not when all have). When one fails, every future not yet started is cancelled, then
    ``failed(index, how many are still running, its exception)`` is called (it may raise another exception
    instead), and the exception is raised."""
    results: dict[int, Any] = {}
    try:
        for f in as_completed(futures):
            i = futures[f]
            try:
                results[i] = f.result()
            except BaseException as e:
                cancelled = [g.cancel() for g in futures if not g.done()]
                if failed is not None:
                    failed(i, cancelled.count(False), e)
                raise
            done(i, results[i], len(results))
    except BaseException:  # also Ctrl-C while waiting: nothing more starts
        for g in futures:
            g.cancel()
        raise
    return results


def _run_in_worker(raw_cfg: dict[str, Any], run_dir: str, label: str, progress: bool = False,
                   start: str = "") -> dict[str, Any]:
    """One run in a worker process of ``compare --jobs`` (its data loaded once per worker)."""
    if progress:
        print(f"[fedmas compare] {start}", file=sys.stderr, flush=True)
    return _run_one(Config.model_validate(raw_cfg), Path(run_dir), label, False, _WORKER_DATA)


_WORKER_DATA: dict[str, FederatedData] = {}
