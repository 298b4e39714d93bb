"""The embedded default dataset: a seeded generator of lifelong search+recommendation logs.

It plants the mechanisms SEMINAR claims to address (arXiv 2407.10714, Sec. 1):

* **Latent interests.** Items belong to one of ``n_topics`` topics; each user has a
  handful of topics, and a *phase* structure: an early phase (first 30% of the
  history) mixes the user's two *deep* topics (sparse, 10% of early events each)
  with two other topics; a middle and a late phase each use three other topics.
* **Multi-modal views.** Every item has a latent vector (topic centre + noise); its
  text (32-d), image (64-d) and attribute views are derived from it with independent
  noise. The image view's norm is ~10x the text view's: the modality imbalance.
* **Search queries.** ``p_search`` of events carry a query that names the topic the
  user is pursuing (query variants per topic, 10% noisy); the rest are pure
  recommendation events (``query_id = 0``).
* **Long-range dependence.** The validation (test) target is, with probability
  ``p_return``, a *return* to deep topic 1 (2), which otherwise appears only far back
  in the history. A model that attends only to the recent window cannot see it.
* **ID sparsity.** The 30% least popular ("cold") items of each topic are only drawn in
  the early phase and for the returns, so they never appear as training targets (the
  DataModule trains on the last ``train_window`` behaviours of each user).
* **CTR impressions.** The last ``train_window + 2`` behaviours of each user are shown
  in a request with ``n_impressions`` unclicked items from topics the user never
  engages with (label 0), for the ``ctr`` protocol.

Everything is vectorised numpy: 10k users x 1k behaviours takes seconds.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .schema import emb_array, write_dataset

N_TOPICS = 32
TEXT_DIM, IMAGE_DIM, QUERY_DIM, LATENT_DIM = 32, 64, 32, 16
QUERY_VARIANTS = 8
N_BRANDS_PER_TOPIC = 8
N_PRICE = 10
COLD_SHARE = 0.3
PHASES = (0.3, 0.65)  # early phase ends at 30%, middle phase at 65%


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def generate(out, users: int = 2000, items: int = 2000, seq_len: int = 200, seed: int = 0,
             n_topics: int = N_TOPICS, p_search: float = 0.7, p_return: float = 0.8,
             train_window: int = 20, n_impressions: int = 3, verbose: bool = False) -> Path:
    """Generate the synthetic dataset into folder ``out`` (atomically)."""
    if n_topics < 12:
        raise ValueError(f"need n_topics >= 12 (10 per user plus unengaged ones), got {n_topics}")
    if users < 1 or items < 2 * n_topics or seq_len < 10:
        raise ValueError(f"need users >= 1, items >= {2 * n_topics}, seq_len >= 10; got {users}, {items}, {seq_len}")
    t0 = time.time()
    rng = np.random.default_rng(seed)
    T, U, L = n_topics, users, seq_len

    # ---- items: topic, popularity rank within topic, multi-modal views
    item_topic = rng.permutation(np.arange(items) % T)
    order = np.argsort(item_topic, kind="stable")
    per_topic = np.bincount(item_topic, minlength=T)
    n_per = per_topic.min()
    # topic_items[t, r] = item index (0-based) with popularity rank r in topic t
    topic_items = np.stack([order[item_topic[order] == t][:n_per] for t in range(T)])
    n_warm = max(1, int(round(n_per * (1 - COLD_SHARE))))
    zipf = 1.0 / np.arange(1, n_per + 1) ** 0.8
    cdf = np.cumsum(zipf) / zipf.sum()

    centres = rng.normal(size=(T, LATENT_DIM))
    latent = centres[item_topic] + 0.6 * rng.normal(size=(items, LATENT_DIM))
    p_text, p_img, p_query = (rng.normal(size=(LATENT_DIM, d)) for d in (TEXT_DIM, IMAGE_DIM, QUERY_DIM))
    text = _unit_rows(latent @ p_text + 1.5 * rng.normal(size=(items, TEXT_DIM)))
    image = 10.0 * _unit_rows(latent @ p_img + 3.0 * rng.normal(size=(items, IMAGE_DIM)))
    category = np.where(rng.random(items) < 0.9, item_topic, rng.integers(0, T, items)) + 1
    brand = item_topic * N_BRANDS_PER_TOPIC + rng.integers(0, N_BRANDS_PER_TOPIC, items) + 1
    price = rng.integers(1, N_PRICE + 1, items)

    # ---- queries: QUERY_VARIANTS per topic, text near the topic centre
    n_queries = T * QUERY_VARIANTS
    q_topic = np.repeat(np.arange(T), QUERY_VARIANTS)
    query_text = _unit_rows(centres[q_topic] @ p_query + 1.0 * rng.normal(size=(n_queries, QUERY_DIM)))

    # ---- users: 10 distinct topics: [deep1, deep2, early1, early2, mid x3, late x3]
    n_user_topics = 10
    utopics = np.argsort(rng.random((U, T)), axis=1)[:, :n_user_topics]
    deep = utopics[:, :2]
    n_ev = L + 2  # history behaviours + val + test targets
    pos = np.arange(n_ev)
    phase = np.where(pos < PHASES[0] * L, 0, np.where(pos < PHASES[1] * L, 1, 2))
    phase[L:] = 2
    r = rng.random((U, n_ev))
    slot = rng.integers(0, 3, (U, n_ev))
    early_topic = np.where(r < 0.1, deep[:, :1], np.where(r < 0.2, deep[:, 1:],
                                                             np.take_along_axis(utopics, 2 + (slot % 2), 1)))
    mid_topic = np.take_along_axis(utopics, 4 + slot, 1)
    late_topic = np.take_along_axis(utopics, 7 + slot, 1)
    topic = np.where(phase == 0, early_topic, np.where(phase == 1, mid_topic, late_topic))
    ret = rng.random((U, 2)) < p_return
    # the validation target returns to deep topic 1, the test target to deep topic 2, so the
    # validation behaviour (recent in the test sample's history) does not reveal the test topic
    topic[:, L:] = np.where(ret, deep, topic[:, L:])
    # cold (tail) items only in the early phase and for returns
    allow_cold = (phase == 0)[None, :] | np.zeros((U, 1), bool)
    allow_cold[:, L:] = ret
    umax = np.where(allow_cold, 1.0, cdf[n_warm - 1])
    rank = np.minimum(np.searchsorted(cdf, rng.random((U, n_ev)) * umax), n_per - 1)
    item = topic_items[topic, rank] + 1

    # queries: the topic pursued (10% noisy), or 0 for pure recommendation events
    search = rng.random((U, n_ev)) < p_search
    q_t = np.where(rng.random((U, n_ev)) < 0.9, topic, rng.integers(0, T, (U, n_ev)))
    query = np.where(search, q_t * QUERY_VARIANTS + rng.integers(0, QUERY_VARIANTS, (U, n_ev)) + 1, 0)

    gaps = rng.integers(60, 86_400, (U, n_ev))
    gaps[:, L:] += 86_400  # val and test targets are each on a later day
    ts = 1_600_000_000 + rng.integers(0, 10_000_000, (U, 1)) + np.cumsum(gaps, axis=1)
    uid = np.broadcast_to(np.arange(1, U + 1)[:, None], (U, n_ev))

    # ---- impressions (label 0) for the last train_window + 2 behaviours
    W = min(train_window + 2, n_ev)
    imp_cols = np.arange(n_ev - W, n_ev)
    # topics the user never engages with: the columns after the first 9 of the permutation
    engaged = np.zeros((U, T), bool)
    np.put_along_axis(engaged, utopics, True, 1)
    other_topics = np.argsort(engaged, axis=1, kind="stable")  # unengaged topics first
    n_other = T - n_user_topics
    pick = rng.integers(0, n_other, (U, W, n_impressions))
    neg_topic = np.take_along_axis(other_topics[:, :n_other], pick.reshape(U, -1), 1).reshape(U, W, n_impressions)
    # training requests show warm items only (cold items are never training samples); the val/test
    # requests draw from all items like their positives do, so "an untrained id" is no label leak
    neg_umax = np.full((1, W, 1), cdf[n_warm - 1])
    neg_umax[:, -2:] = 1.0
    neg_rank = np.minimum(np.searchsorted(cdf, rng.random((U, W, n_impressions)) * neg_umax), n_per - 1)
    neg_item = topic_items[neg_topic, neg_rank] + 1

    # assemble: per user, each behaviour is one request; impressions share its ts/query/request
    req = np.arange(U * n_ev).reshape(U, n_ev) + 1
    pos_cols = dict(user_id=uid, ts=ts, query_id=query, item_id=item, request_id=req)
    neg_cols = {k: np.repeat(v[:, imp_cols, None], n_impressions, axis=2) for k, v in pos_cols.items()}
    neg_cols["item_id"] = neg_item
    # order key: (user, position, slot) with slot 0 = the clicked item
    key_pos = (uid * (n_ev + 1) + pos[None, :]).astype(np.int64) * (n_impressions + 1)
    key_neg = np.repeat(key_pos[:, imp_cols, None], n_impressions, 2) + np.arange(1, n_impressions + 1)
    keys = np.concatenate([key_pos.ravel(), key_neg.ravel()])
    srt = np.argsort(keys, kind="stable")
    events = {}
    for k in ("user_id", "ts", "query_id", "item_id"):
        events[k] = np.concatenate([pos_cols[k].ravel(), neg_cols[k].ravel()]).astype(np.int64)[srt]
    events["label"] = np.concatenate([np.ones(U * n_ev, np.int64), np.zeros(neg_item.size, np.int64)])[srt]
    events["request_id"] = np.concatenate([req.ravel(), neg_cols["request_id"].ravel()]).astype(np.int64)[srt]
    events = {k: events[k] for k in ("user_id", "ts", "query_id", "item_id", "label", "request_id")}

    cold = np.zeros(items, bool)
    cold[topic_items[:, n_warm:].ravel()] = True
    item_cols = {
        "item_id": np.arange(1, items + 1, dtype=np.int64),
        "attr_brand": brand.astype(np.int64),
        "attr_category": category.astype(np.int64),
        "attr_price": price.astype(np.int64),
        "text_emb": emb_array(text),
        "image_emb": emb_array(image),
    }
    meta = {
        "name": "synthetic",
        "source": "seminar_zoo.data.synthetic.generate (seeded generator, no external data)",
        "licence": "generated; no restrictions",
        "seed": seed,
        "n_users": U, "n_items": items, "n_queries": n_queries, "n_events": int(len(events["user_id"])),
        "modalities": ["id", "attr", "text", "image", "query"],
        "attr_cols": ["attr_brand", "attr_category", "attr_price"],
        "attr_cardinality": {"attr_brand": T * N_BRANDS_PER_TOPIC, "attr_category": T, "attr_price": N_PRICE},
        "dims": {"text": TEXT_DIM, "image": IMAGE_DIM, "query": QUERY_DIM},
        "protocols": ["ranking", "ctr"],
        "label_rule": "label 1 = the behaviour (click); label 0 = an impression shown in the same request, not clicked",
        "split_rule": "per user by time: last behaviour (ranking) / last request (ctr) = test, the one before = val",
        "recommended": {"train_window": train_window, "max_len": seq_len},
        "generator": {"n_topics": T, "p_search": p_search, "p_return": p_return, "seq_len": L,
                      "train_window": train_window, "n_impressions": n_impressions, "cold_share": COLD_SHARE},
        # the ID-sparsity mechanism: items that can never be a training target
        "cold_items": (np.flatnonzero(cold) + 1).tolist(),
        "item_topic": (item_topic).tolist(),
    }
    queries = {"query_id": np.arange(1, n_queries + 1, dtype=np.int64), "text_emb": emb_array(query_text)}
    path = write_dataset(out, item_cols, events, meta, queries)
    if verbose:
        print(f"synthetic: {U} users, {items} items, {meta['n_events']} events -> {path} ({time.time() - t0:.1f}s)")
    return path
