"""The sweep file: W&B sweep configuration parsing and its points (used by :mod:`seminar_zoo.sweep`).

``method: grid``: the Cartesian product of the parameters' values (first parameter outermost),
in file order. ``method: random``: points drawn from W&B's distributions with a numpy
generator seeded by ``--seed``. ``bayes`` needs W&B's server and is refused. Nested
``parameters`` are flattened to dotted names.
"""
from __future__ import annotations

import itertools
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]


class SweepError(ValueError):
    """A sweep file or sweep command line is wrong; the message names what and where."""


# --------------------------------------------------------------------------- the sweep file
def _flatten(params: dict, prefix: str, src: str) -> Dict[str, dict]:
    out: Dict[str, dict] = {}
    for key, spec in params.items():
        name = f"{prefix}{key}"
        if not isinstance(spec, dict):
            raise SweepError(f"{src}: parameters.{name} must be a mapping (values:/value:/distribution:), "
                             f"got {spec!r}")
        if "parameters" in spec:  # W&B nested parameters
            out.update(_flatten(spec["parameters"], f"{name}.", src))
        else:
            out[name] = spec
    return out


def load_spec(path: os.PathLike) -> dict:
    """Read and check a W&B sweep file; parameters come back flattened (dotted names) in file order."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise SweepError(f"sweep file {p} not found")
    try:
        spec = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise SweepError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(spec, dict):
        raise SweepError(f"{p}: expected a mapping with method/metric/parameters/command")
    method = spec.get("method")
    if method not in ("grid", "random", "bayes"):
        raise SweepError(f"{p}: method must be grid or random (got {method!r})")
    if method == "bayes":
        raise SweepError(f"{p}: method bayes needs a W&B server (wandb sweep {p}); "
                         "the offline runner supports grid and random")
    params = spec.get("parameters")
    if not isinstance(params, dict) or not params:
        raise SweepError(f"{p}: 'parameters' must be a non-empty mapping")
    flat = _flatten(params, "", str(p))
    for name, ps in flat.items():
        _check_param(name, ps, method, str(p))
    metric = spec.get("metric") or {}
    if metric and (not isinstance(metric, dict) or "name" not in metric):
        raise SweepError(f"{p}: metric must be a mapping with a 'name' (and goal: maximize|minimize)")
    if metric.get("goal", "maximize") not in ("maximize", "minimize"):
        raise SweepError(f"{p}: metric.goal must be maximize or minimize (got {metric.get('goal')!r})")
    command = spec.get("command", DEFAULT_COMMAND)
    if not isinstance(command, list) or not command:
        raise SweepError(f"{p}: command must be a non-empty list")
    out = dict(spec)
    out.update(parameters=flat, metric=metric, command=[str(c) for c in command],
               name=str(spec.get("name") or p.stem), file=str(p))
    return out


def _check_param(name: str, ps: dict, method: str, src: str) -> None:
    dist = _distribution(ps)
    where = f"{src}: parameters.{name}"
    if dist == "categorical":
        if not isinstance(ps["values"], list) or not ps["values"]:
            raise SweepError(f"{where}.values must be a non-empty list")
        probs = ps.get("probabilities")
        if probs is not None and (len(probs) != len(ps["values"]) or abs(sum(probs) - 1) > 1e-6):
            raise SweepError(f"{where}.probabilities must have one entry per value and sum to 1")
        return
    if dist == "constant":
        return
    need = {"normal": ("mu", "sigma"), "q_normal": ("mu", "sigma"), "log_normal": ("mu", "sigma")}.get(dist, ("min", "max"))
    missing = [k for k in need if k not in ps]
    if missing:
        raise SweepError(f"{where}: distribution {dist} needs {', '.join(need)} (missing {', '.join(missing)})")
    if "min" in ps and ps["min"] > ps["max"]:
        raise SweepError(f"{where}: min {ps['min']} > max {ps['max']}")
    if dist in ("log_uniform_values", "q_log_uniform_values") and ps["min"] <= 0:
        raise SweepError(f"{where}: {dist} needs min > 0")
    if method == "grid" and dist not in ("int_uniform", "q_uniform"):
        raise SweepError(f"{where}: grid search needs discrete parameters (values, value, int_uniform, "
                         f"q_uniform), got distribution {dist}")


def _distribution(ps: dict) -> str:
    if "distribution" in ps:
        d = ps["distribution"]
        known = ("categorical", "constant", "uniform", "int_uniform", "q_uniform", "log_uniform",
                 "log_uniform_values", "q_log_uniform_values", "normal", "q_normal", "log_normal")
        if d not in known:
            raise SweepError(f"unknown distribution {d!r} (known: {', '.join(known)})")
        if d == "categorical" and "values" not in ps:
            raise SweepError("distribution categorical needs 'values'")
        if d == "constant" and "value" not in ps:
            raise SweepError("distribution constant needs 'value'")
        return d
    if "values" in ps:
        return "categorical"
    if "value" in ps:
        return "constant"
    if "min" in ps and "max" in ps:  # W&B infers int_uniform / uniform from the bounds' types
        return "int_uniform" if isinstance(ps["min"], int) and isinstance(ps["max"], int) else "uniform"
    raise SweepError(f"parameter spec {ps!r}: give values, value, or min/max (or a distribution)")


# --------------------------------------------------------------------------- points
def grid_values(ps: dict) -> list:
    d = _distribution(ps)
    if d == "categorical":
        return list(ps["values"])
    if d == "constant":
        return [ps["value"]]
    if d == "int_uniform":
        return list(range(int(ps["min"]), int(ps["max"]) + 1))
    if d == "q_uniform":
        q = ps.get("q", 1.0)
        n = int(math.floor((ps["max"] - ps["min"]) / q + 1e-9)) + 1
        return [round(ps["min"] + i * q, 12) for i in range(n)]
    raise SweepError(f"distribution {d} is not discrete: use method random")


def grid_points(parameters: Dict[str, dict]) -> List[Dict[str, Any]]:
    names = list(parameters)
    return [dict(zip(names, combo)) for combo in itertools.product(*(grid_values(parameters[n]) for n in names))]


def sample_value(ps: dict, rng) -> Any:
    d = _distribution(ps)
    if d == "categorical":
        i = rng.choice(len(ps["values"]), p=ps.get("probabilities"))
        return ps["values"][int(i)]
    if d == "constant":
        return ps["value"]
    q = ps.get("q", 1.0)
    if d == "uniform":
        return float(rng.uniform(ps["min"], ps["max"]))
    if d == "int_uniform":
        return int(rng.integers(int(ps["min"]), int(ps["max"]) + 1))
    if d == "q_uniform":
        return float(round(rng.uniform(ps["min"], ps["max"]) / q) * q)
    if d == "log_uniform":  # bounds are natural logs (W&B)
        return float(math.exp(rng.uniform(ps["min"], ps["max"])))
    if d == "log_uniform_values":
        return float(math.exp(rng.uniform(math.log(ps["min"]), math.log(ps["max"]))))
    if d == "q_log_uniform_values":
        v = math.exp(rng.uniform(math.log(ps["min"]), math.log(ps["max"])))
        return float(round(v / q) * q)
    if d == "normal":
        return float(rng.normal(ps["mu"], ps["sigma"]))
    if d == "q_normal":
        return float(round(rng.normal(ps["mu"], ps["sigma"]) / q) * q)
    if d == "log_normal":
        return float(math.exp(rng.normal(ps["mu"], ps["sigma"])))
    raise SweepError(f"cannot sample distribution {d}")


def random_points(parameters: Dict[str, dict], n: int, seed: int = 0) -> List[Dict[str, Any]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [{name: sample_value(ps, rng) for name, ps in parameters.items()} for _ in range(n)]


def sweep_points(spec: dict, max_runs: Optional[int] = None, seed: int = 0) -> List[Dict[str, Any]]:
    if spec["method"] == "grid":
        pts = grid_points(spec["parameters"])
        return pts[:max_runs] if max_runs is not None else pts
    n = max_runs if max_runs is not None else spec.get("run_cap")
    if n is None:
        raise SweepError(f"{spec['file']}: a random sweep needs --max-runs N (or run_cap in the file)")
    return random_points(spec["parameters"], int(n), seed)
