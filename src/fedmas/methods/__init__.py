"""Methods as plans on the shared round loop: which FL tasks exist and when they change.

Each plan's ``update`` runs before every round and after a resume; it decides
only from the server state (and writes its decisions into ``state.plan``), so a
resumed run takes the same decisions as an uninterrupted one.

- ``all-in-one``  the merged model for R rounds (FedAvg / FedProx / GradNorm by config)
- ``one-by-one``  one single-task FL task per task, one after another, R rounds each
- ``mas``         merge R0 rounds measuring affinity → exact split → continue R − R0 rounds
- ``tag``         affinity from R0 merged rounds → TAG's overlapping groups, retrained from scratch R rounds
- ``hoa``         every single task and pair trained ``hoa.pair_rounds`` rounds (default R) → higher-order
                  estimate → best partition, retrained from scratch R rounds
- ``exhaustive``  every non-empty subset trained (from scratch, from the merged weights, or both) → the best
                  partition on validation skill, reported as trained (2^n − 1 FL tasks: the ground truth)
- ``random``      merge R0 rounds (no affinity) → a seeded random partition into k groups → continue
"""

# isort: off
from fedmas.methods import mas, tag, hoa, exhaustive  # noqa: F401  (each registers its plans, in this order)
from fedmas.methods.base import (MERGED, PLANS, AllInOne, OneByOne, Plan, affinity_rounds, affinity_skip,
                                 make_plan, mas_schedule, merge_rounds, pair_rounds, register, split_count,
                                 split_rounds)
from fedmas.methods.exhaustive import Exhaustive
from fedmas.methods.hoa import HOA
from fedmas.methods.mas import MAS, RandomSplit
from fedmas.methods.tag import TAG
# isort: on

__all__ = ["HOA", "Exhaustive", "MAS", "MERGED", "PLANS", "TAG", "AllInOne", "OneByOne", "Plan", "RandomSplit",
           "affinity_rounds", "affinity_skip", "make_plan", "mas_schedule", "merge_rounds", "pair_rounds", "register",
           "split_count",
           "split_rounds"]
