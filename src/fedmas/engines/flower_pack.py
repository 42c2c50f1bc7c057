"""A job's weights as one compact Flower array: every tensor's bytes back to back, and their layout.

Flower stores each ``Array`` of a message as its own objects (the array and its chunks of up to
5 MB), and a SuperNode and the server move every object with its own request. A model with 67
tensors thus cost 71 objects per job each way (tensors with equal content share them). Packed, a
job's weights are one ``uint8`` array (3 objects for that model, one more per 5 MB) and a JSON
*layout*: ``[[name, dtype, shape, offset, nbytes], ...]``, each
tensor starting on an 8-byte boundary. ``dtype`` is torch's name without ``torch.`` (``float32``,
``int64``, ``bfloat16``, ...).

:func:`pack` and :func:`perturbed` need only numpy (the ClientApp shim uses them without torch);
:func:`pack_torch` and :func:`unpack_torch` import torch when called.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from fedmas.engines.flower_wire import KEY, LAYOUT  # noqa: F401 - the names this format uses

if TYPE_CHECKING:
    import torch

ALIGN = 8


def pack(items: Iterable[tuple[str, str, tuple[int, ...], np.ndarray]]) -> tuple[np.ndarray, str]:
    """``(name, dtype, shape, raw uint8 bytes)`` entries as one ``uint8`` array and its JSON layout."""
    entries, raws, total = [], [], 0
    for name, dtype, shape, raw in items:
        raw = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
        entries.append([name, dtype, [int(s) for s in shape], total, int(raw.size)])
        raws.append(raw)
        total += -(-raw.size // ALIGN) * ALIGN
    flat = np.zeros(total, dtype=np.uint8)
    for (_, _, _, off, n), raw in zip(entries, raws):
        flat[off:off + n] = raw
    return flat, json.dumps(entries, separators=(",", ":"))


def entries(layout: str) -> list[list[Any]]:
    """The layout's entries, checked: a malformed layout raises ``ValueError``."""
    got = json.loads(layout)
    if not isinstance(got, list) or any(not isinstance(e, list) or len(e) != 5 for e in got):
        raise ValueError("a packed layout is a list of [name, dtype, shape, offset, nbytes] entries")
    return got


def extend(flat: np.ndarray, layout: str, name: str, arr: np.ndarray) -> tuple[np.ndarray, str]:
    """The packed weights with one more numpy array appended (``arr``'s dtype must be a numpy one)."""
    old = entries(layout)
    items = [(e[0], e[1], tuple(e[2]), flat[e[3]:e[3] + e[4]]) for e in old]
    items.append((name, np.dtype(arr.dtype).name, arr.shape, arr.view(np.uint8)))
    return pack(items)


def perturbed(flat: np.ndarray) -> np.ndarray:
    """A copy whose first byte of every 8 has its lowest bit flipped: a float changes in its last place,
    an integer by one. Nothing is computed, yet every byte range differs from the original, so Flower,
    which skips an object it already holds (objects are named by their content's hash), moves all of it."""
    out = flat.copy()
    out[::ALIGN] ^= 1
    return out


def pack_torch(state: Mapping[str, torch.Tensor]) -> tuple[np.ndarray, str]:
    """A state dict (any dtype torch has, bfloat16 included) packed."""
    import torch

    def raw(t: torch.Tensor) -> np.ndarray:
        return t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()

    return pack((k, str(t.dtype).removeprefix("torch."), tuple(t.shape), raw(t)) for k, t in state.items())


def unpack_torch(flat: np.ndarray, layout: str) -> dict[str, torch.Tensor]:
    """The tensors of :func:`pack_torch`'s output (they share ``flat``'s memory: pass a writable copy)."""
    import torch

    base = torch.from_numpy(np.ascontiguousarray(flat, dtype=np.uint8))
    out = {}
    for name, dtype, shape, off, n in entries(layout):
        dt = getattr(torch, str(dtype), None)
        if not isinstance(dt, torch.dtype):
            raise ValueError(f"packed tensor {name!r} has unknown dtype {dtype!r}")
        if off % ALIGN or off < 0 or off + n > base.numel():
            raise ValueError(f"packed tensor {name!r} lies outside the packed bytes or off an 8-byte boundary")
        out[name] = base[off:off + n].view(dt).reshape(shape)
    return out
