"""``fedmas`` command line: run, compare, split, data preview/export."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import math
import os
import sys
from pathlib import Path

EXIT_USAGE = 2
EXIT_INTERNAL = 70


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fedmas")
    except PackageNotFoundError:
        return "(not installed)"


def _fail(msg: str) -> int:
    print(f"fedmas: error: {msg}", file=sys.stderr)
    return EXIT_USAGE


def cmd_run(a: argparse.Namespace) -> int:
    from fedmas.checks import check_config
    from fedmas.config import load_config
    from fedmas.run import execute

    if a.add_task and not a.resume:
        return _fail("--add-task adds a task to a run in progress: use it with --resume RUN_DIR "
                     "(in a config, name arriving tasks under arrival.tasks)")
    if a.resume:
        if a.config or a.set or a.force:
            return _fail("--resume takes the run folder only; its config.yaml is used as saved")
        try:
            summary = execute(None, Path(a.resume), resume=True, progress=not a.quiet,
                              allow_plugins=tuple(a.allow_plugin), add_tasks=tuple(a.add_task))
        except KeyboardInterrupt:
            print(f"fedmas: interrupted; continue with fedmas run --resume {a.resume}", file=sys.stderr)
            return 130
    else:
        if not a.config:
            return _fail("give a CONFIG file, or --resume RUN_DIR")
        cfg = check_config(load_config(a.config, a.set), a.config)
        out = Path(a.out) if a.out else Path("runs") / f"{cfg.name}-{cfg.method}"
        try:
            summary = execute(cfg, out, progress=not a.quiet, force=a.force)
        except KeyboardInterrupt:
            if (out / "config.yaml").exists():
                print(f"fedmas: interrupted; continue with fedmas run --resume {out}", file=sys.stderr)
                return 130
            raise
    return 0 if summary is not None else 1


def cmd_compare(a: argparse.Namespace) -> int:
    from fedmas.compare import compare
    from fedmas.config import load_config

    cfg = load_config(a.config, a.set)
    out = Path(a.out) if a.out else Path("runs") / f"{cfg.name}-compare"
    seeds = _seeds(a.seeds) if a.seeds else None
    compare(cfg, a.methods, out, progress=not a.quiet, seeds=seeds, jobs=a.jobs)
    return 0


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds {text!r}: expected a comma list of integers, e.g. 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0 or max(seeds) > 2**31 - 1 or len(seeds) > 100:
        raise ValueError(f"--seeds {text!r}: expected 1 to 100 distinct integers in [0, 2^31 − 1], e.g. 0,1,2")
    return seeds


def cmd_split(a: argparse.Namespace) -> int:
    from fedmas.grouping import EXACT_LIMIT, best_partition, partitions_up_to, smallest_within
    from fedmas.text import read_affinity

    tasks, z = read_affinity(Path(a.affinity))
    auto = a.splits == "auto"
    if not auto and not (a.splits.isdigit() and 1 <= int(a.splits) <= len(tasks)):
        return _fail(f"--splits {a.splits}: expected auto or an integer between 1 and the number of tasks "
                     f"({len(tasks)})")
    if len(tasks) > EXACT_LIMIT:
        print(f"fedmas: {len(tasks)} tasks: heuristic search (exact up to {EXACT_LIMIT} tasks); "
              f"this can take a few seconds", file=sys.stderr)
    if auto and not (math.isfinite(a.epsilon) and 0 <= a.epsilon <= 10):
        return _fail(f"--epsilon {a.epsilon}: expected a tolerance between 0 and 10 (a fraction of |best objective|)")
    if auto and a.max_splits < 1:
        return _fail(f"--max-splits {a.max_splits}: expected an integer ≥ 1 (more than the {len(tasks)} tasks "
                     f"counts as {len(tasks)})")
    rule = ""
    if auto:  # as the config's mas.splits: auto — the fewest groups within ε of the best objective
        cands = [{"k": k, "score": g.score, "part": g}
                 for k, g in enumerate(partitions_up_to(z, min(a.max_splits, len(tasks))), 1)]
        g = smallest_within(cands, a.epsilon)["part"]
        rule = f"auto: the fewest groups within ε={a.epsilon} × |best| of the best objective"
    else:
        g = best_partition(z, int(a.splits), exactly=a.exact)
    doc = {"groups": [[tasks[i] for i in grp] for grp in g.groups], "score": g.score}
    if a.json:
        print(json.dumps(doc))
    else:
        for i, grp in enumerate(doc["groups"]):
            print(f"group {i + 1}: {', '.join(grp)}")
        print(f"objective (mean task score): {g.score:.6g}{'' if g.exact else ' (heuristic)'}")
        if rule:
            print(rule)
    return 0


def cmd_show(a: argparse.Namespace) -> int:
    from fedmas.console import render_summary
    from fedmas.summaryfile import read_summary

    run_dir = Path(a.run)
    summary = run_dir / "summary.json"
    if summary.exists():
        doc = read_summary(summary)
        try:
            text = render_summary(doc, run_dir)
        except (KeyError, TypeError, ValueError, AttributeError) as e:  # a field missing or of the wrong kind
            return _fail(f"{summary}: not a complete fedmas summary ({type(e).__name__}: {e})")
        print(text)
        if doc.get("failed"):
            return _fail(f"{run_dir}: the run did not succeed: " + "; ".join(map(str, doc["failed"])))
        return 0
    if (run_dir / "comparison.md").is_file():
        print((run_dir / "comparison.md").read_text())
        return 0
    state = run_dir / "checkpoint" / "state.json"
    if state.is_file():
        rounds = json.loads(state.read_text()).get("round", "?")
        print(f"{run_dir}: not finished, {rounds} rounds done; continue with fedmas run --resume {run_dir}")
        return 0
    return _fail(f"{run_dir} holds no fedmas run or comparison (no summary.json, comparison.md or checkpoint)")


def _scene_spec(a: argparse.Namespace):
    from fedmas.config import load_config
    from fedmas.data.scenes import SceneSpec

    cfg = load_config(a.config, a.set)
    d = cfg.data
    if d.dataset != "scenes":
        raise ValueError(f"data.dataset is {d.dataset!r}; preview and export work on the built-in 'scenes'")
    return SceneSpec(buildings=d.buildings, train_images=d.train_images, test_images=d.test_images,
                     resolution=d.resolution, views_per_room=d.views_per_room, seed=d.seed), d


def cmd_data(a: argparse.Namespace) -> int:
    from fedmas.data.scenes import load_or_render

    spec, d = _scene_spec(a)
    cache = Path(d.cache_dir) if d.cache_dir else None
    if a.data_cmd == "preview":
        from dataclasses import replace

        from fedmas.data.preview import contact_sheet

        if a.buildings < 1:
            return _fail(f"--buildings {a.buildings}: expected a number of buildings ≥ 1")
        spec = replace(spec, buildings=min(spec.buildings, a.buildings))
        raw = load_or_render(spec, cache)
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        contact_sheet({b: raw[b]["train"] for b in raw}, out, a.per_building)
        print(f"wrote {out}")
        return 0
    from fedmas.data.taskonomy import export

    out = Path(a.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        return _fail(f"--out {out} {'is not a folder' if not out.is_dir() else 'is not empty'}; export writes a "
                     f"Taskonomy tree into a new or empty folder")
    raw = load_or_render(spec, cache)
    by_building = {}
    for b, splits in raw.items():
        import numpy as np

        by_building[f"building_{b:03d}"] = {k: np.concatenate([splits["train"][k], splits["test"][k]])
                                            for k in splits["train"]}
    n = export(by_building, Path(a.out))
    print(f"wrote {n} images of {len(by_building)} buildings in Taskonomy layout to {a.out} "
          f"(per building: first {spec.train_images} points = train, last {spec.test_images} = test)")
    return 0


def cmd_worker(a: argparse.Namespace) -> int:
    from fedmas.engines.flower_worker import serve

    if not a.idle_s > 0:
        raise ValueError(f"--idle-s must be > 0 seconds, got {a.idle_s:g}")
    n = len(os.fsencode(a.socket))
    if n > 100:
        raise ValueError(f"--socket: a Unix socket path must be under 100 bytes, got {n}")
    serve(Path(a.socket), None, a.idle_s)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedmas", description="Merge-and-Split federated multi-task learning")
    p.add_argument("--version", action="version", version=f"fedmas {_version()}")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run one method from a YAML config")
    r.add_argument("config", nargs="?", help="YAML config (commented example: configs/quickstart.yaml)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    r.add_argument("--out", help="run folder (default runs/<name>-<method>)")
    r.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    r.add_argument("--allow-plugin", action="append", default=[], metavar="MODULE",
                   help="with --resume: import this plugin module named in the run's config.yaml although it is "
                        "neither installed nor inside the run folder")
    r.add_argument("--add-task", action="append", default=[], metavar="TASK",
                   help="with --resume (method mas): this task arrives now, at the next round, and is placed "
                        "by arrival.policy (probe: joins the group it helps most, or a group of its own)")
    r.add_argument("--force", action="store_true",
                   help="start over in a --out folder that is not empty: replaces fedmas's own files there "
                        "(config.yaml, checkpoint/, metrics.jsonl, ...), keeps every other file")
    r.add_argument("--quiet", action="store_true", help="no progress lines and no final table")
    r.set_defaults(fn=cmd_run)

    c = sub.add_parser("compare", help="run several methods and draw the comparison")
    c.add_argument("config", help="YAML config shared by every method (each method overrides its own keys)")
    c.add_argument("--methods", default="mas:2,one-by-one,all-in-one,tag:2,random:2",
                   help="comma list of method[:splits], e.g. mas:2,mas:3,one-by-one,all-in-one-fedprox,hoa:3")
    c.add_argument("--seeds", help="run every method under each of these training seeds (e.g. 0,1,2) and report "
                                    "means with 95%% confidence intervals; runs go to OUT/seed-<s>/<method>, reused "
                                    "when the same --out is run again with other seeds")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    c.add_argument("--out", help="comparison folder (default runs/<name>-compare); resumable")
    c.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="run N runs at once, each in its own process with threads/N torch threads (default 1)")
    c.add_argument("--quiet", action="store_true", help="no progress lines")
    c.set_defaults(fn=cmd_compare)

    s = sub.add_parser("split", help="split tasks into groups from an affinity file")
    s.add_argument("--affinity", required=True, help="affinity.json of a run (or {tasks, affinity} JSON)")
    s.add_argument("--splits", required=True, help="number of groups K, or auto (the fewest groups within "
                                                  "--epsilon of the best objective)")
    s.add_argument("--exact", action="store_true", help="exactly K groups (default: at most K)")
    s.add_argument("--epsilon", type=float, default=0.05, help="with --splits auto: tolerance (default 0.05)")
    s.add_argument("--max-splits", type=int, default=4, help="with --splits auto: most groups tried (default 4)")
    s.add_argument("--json", action="store_true", help="print the groups as JSON")
    s.set_defaults(fn=cmd_split)

    w = sub.add_parser("show", help="print a finished run's table (or a comparison's) again")
    w.add_argument("run", help="a run folder (or a comparison folder)")
    w.set_defaults(fn=cmd_show)

    k = sub.add_parser("worker", help="engine flower: start a SuperNode's warm training worker yourself",
                       description="Start the fedmas worker that trains a Flower SuperNode's messages (torch, the "
                                   "clients' data and models stay loaded between messages). Give the SuperNode "
                                   "--node-config \"... fedmas-worker=SOCKET\" so its messages go to this worker. "
                                   "Without this command the node's first message starts one.")
    k.add_argument("--socket", required=True, help="Unix socket path to listen on (short: under ~100 characters)")
    k.add_argument("--idle-s", type=float, default=1800.0, help="stop after this many seconds without a message "
                                                                "(default 1800)")
    k.set_defaults(fn=cmd_worker)

    d = sub.add_parser("data", help="look at or export the built-in scenes dataset")
    dsub = d.add_subparsers(dest="data_cmd", required=True)
    pv = dsub.add_parser("preview", help="write a PNG contact sheet")
    pv.add_argument("--out", default="scenes_preview.png", help="PNG to write (default scenes_preview.png)")
    pv.add_argument("--buildings", type=int, default=3, help="buildings shown (default 3)")
    pv.add_argument("--per-building", type=int, default=2, help="images per building (default 2)")
    ex = dsub.add_parser("export", help="write the dataset in Taskonomy's layout")
    ex.add_argument("--format", choices=["taskonomy"], required=True, help="on-disk layout (taskonomy)")
    ex.add_argument("--out", required=True, help="folder to write")
    for q in (pv, ex):
        q.add_argument("--config", help="take data settings from this config")
        q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    d.set_defaults(fn=cmd_data)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="[fedmas] %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ValueError as e:  # ConfigError, DataError, CheckpointError, RunFailed: one line, exit 2
        return _fail(str(e))
    except KeyboardInterrupt:
        print("fedmas: interrupted (a comparison continues where it stopped when run again with the same "
              "--out)" if args.cmd == "compare" else "fedmas: interrupted", file=sys.stderr)
        return 130
    except RecursionError:
        return _fail("input nested too deeply")
    except (OSError, MemoryError) as e:  # the user's paths, permissions or disk: theirs to fix, not a fedmas bug
        why = _os_problem(e)
        if why is None:
            raise
        return _fail(why)
    except Exception as e:  # noqa: BLE001 - a disk full inside a library (safetensors) is still the disk
        why = _os_problem(e)
        if why is not None:
            return _fail(why)
        if os.environ.get("FEDMAS_DEBUG"):
            raise
        print(f"fedmas: internal error ({type(e).__name__}: {e}); this is a bug in fedmas — rerun with "
              f"FEDMAS_DEBUG=1 for the traceback", file=sys.stderr)
        return EXIT_INTERNAL


_OS_WHY = {
    errno.ENOSPC: "no space left on the disk", errno.EDQUOT: "disk quota exceeded",
    errno.ENAMETOOLONG: "a file name or path is too long", errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted", errno.EROFS: "read-only file system",
    errno.ENOTDIR: "a part of the path is a file, not a folder", errno.EISDIR: "is a folder, not a file",
    errno.ENOENT: "no such file or folder", errno.EEXIST: "already exists", errno.ELOOP: "too many symbolic links",
    errno.EINVAL: "not a valid path here", errno.ENXIO: "not a regular file",
}


def _os_problem(e: BaseException) -> str | None:
    """One line for an error of the user's files or disk (a full disk, a path too long, no permission), or None."""
    if isinstance(e, MemoryError):
        return "out of memory (a file or dataset far larger than expected?)"
    if isinstance(e, OSError) and e.errno in _OS_WHY:
        where = f": {e.filename}" if e.filename else ""
        return f"{_OS_WHY[e.errno]}{where}" + (" — free some space; a run continues with --resume"
                                                  if e.errno in (errno.ENOSPC, errno.EDQUOT) else "")
    text = str(e)
    if "No space left on device" in text or "Disk quota exceeded" in text:
        return "no space left on the disk — free some space; a run continues with --resume"
    return None


if __name__ == "__main__":
    sys.exit(main())
