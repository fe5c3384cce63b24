"""Every random stream derives from the manifest seed through numpy's SeedSequence, spawned
by name (source, block, purpose), so a stream does not move when another source, stratum or
checkpoint is added, and the same bundle and seed give byte-identical output."""

from __future__ import annotations

import hashlib

import numpy as np


def _key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:4], "little")


def seed_sequence(seed: int, *names: str) -> np.random.SeedSequence:
    """The SeedSequence of the stream called `names` under the master `seed`."""
    return np.random.SeedSequence(entropy=int(seed), spawn_key=tuple(_key(n) for n in names))


def rng(seed: int, *names: str) -> np.random.Generator:
    """A PCG64 generator for the stream called `names`."""
    return np.random.Generator(np.random.PCG64(seed_sequence(seed, *names)))
