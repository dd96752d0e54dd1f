"""Small event files of the three shapes, written by the tests themselves (seeded, a few seconds of
work at most): an e-commerce behaviour log (b), an ad-impression CSV (a), a click stream (c).

Each has a learnable signal: users prefer items of their own taste group, so online training
beats a frozen model once the tastes drift halfway through."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
T0 = 1_700_000_000


def _taste(
    rng: np.random.Generator, n: int, users: np.ndarray, items: np.ndarray, t: np.ndarray
) -> np.ndarray:
    """P(positive) per (user, item): high when item % 4 == the user's group, which shifts at t's midpoint."""
    mid = np.median(t)
    group = (users + (t > mid)) % 4
    return np.where(items % 4 == group, 0.6, 0.05)


def write_behaviour(folder: Path, *, n: int = 6000, seed: int = 0) -> Path:
    """Shape (b): `user,item,category,behavior,ts` without a header (the Taobao layout), pv rows
    with carts and buys following some of them; a few broken rows (no ts, no user)."""
    rng = np.random.default_rng(seed)
    users = rng.integers(1, 60, n)
    items = rng.integers(1, 80, n)
    t = np.sort(rng.integers(T0, T0 + 4 * 86400, n))
    p = _taste(rng, n, users, items, t)
    lines = []
    for u, i, ts, pi in zip(users.tolist(), items.tolist(), t.tolist(), p.tolist(), strict=True):
        cat = f"cat-{i % 7}"
        lines.append(f"{u},{i},{cat},pv,{ts}")
        if rng.random() < pi:
            lines.append(f"{u},{i},{cat},cart,{ts + int(rng.integers(5, 600))}")
            if rng.random() < 0.5:
                lines.append(f"{u},{i},{cat},buy,{ts + int(rng.integers(700, 3000))}")
        if rng.random() < 0.05:
            lines.append(f"{u},{i},{cat},fav,{ts + 30}")
    lines += ["7,3,cat-3,pv,", ",3,cat-3,pv,1700000100"]  # refused: no ts, no user
    path = folder / "UserBehavior.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_ads(folder: Path, *, n: int = 6000, seed: int = 1) -> Path:
    """Shape (a): an ad-impression CSV (gzip) with a header and its own columns: string ids,
    categoricals, a multi-valued keywords column, a numeric bid, an ISO hour, a 0/1 click."""
    rng = np.random.default_rng(seed)
    users = rng.integers(1, 50, n)
    items = rng.integers(1, 40, n)
    t = np.sort(rng.integers(T0, T0 + 2 * 86400, n))
    p = _taste(rng, n, users, items, t)
    click = (rng.random(n) < p).astype(int)
    rows = ["click,hour,device_id,ad_id,site_category,app_category,banner_pos,device_type,keywords,bid"]
    for k in range(n):
        hour = np.datetime64(int(t[k]), "s").astype(str).replace("T", " ")
        kw = "|".join(f"kw{(items[k] * j) % 11}" for j in range(1, 1 + items[k] % 3))
        rows.append(
            f"{click[k]},{hour},d{users[k]:05x},ad-{items[k]},s{items[k] % 5},a{users[k] % 3},"
            f"{k % 2},{1 + users[k] % 2},{kw},{rng.exponential(50):.3f}"
        )
    path = folder / "ads-day1.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write("\n".join(rows) + "\n")
    return path


def write_clicks(folder: Path, *, n: int = 5000, seed: int = 2) -> Path:
    """Shape (c): clicks only, as gzip JSON lines `{"user", "item", "device", "ts" (ms)}`."""
    rng = np.random.default_rng(seed)
    users = rng.integers(1, 60, n)
    t = np.sort(rng.integers(T0 * 1000, (T0 + 86400) * 1000, n))
    mid = np.median(t)
    group = (users + (t > mid)) % 4
    items = np.where(rng.random(n) < 0.8, 4 * rng.integers(0, 15, n) + group, rng.integers(0, 60, n))
    path = folder / "clicks-0.jsonl.gz"
    with gzip.open(path, "wt") as f:
        for u, i, ts in zip(users.tolist(), items.tolist(), t.tolist(), strict=True):
            f.write(json.dumps({"user": u, "item": i, "device": ["ios", "android"][u % 2], "ts": ts}) + "\n")
    return path
