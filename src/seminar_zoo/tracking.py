"""W&B logging that works with no network.

``ZooWandbLogger`` is Lightning's ``WandbLogger`` with:

* **Mode** from ``WANDB_MODE``: default ``offline`` (runs land under
  ``<save_dir>/wandb/offline-run-*``; upload later with ``wandb sync``), ``online``
  when started by a W&B sweep agent (``WANDB_SWEEP_ID`` set and ``WANDB_MODE`` unset:
  the agent needs the run's results), ``disabled`` turns logging off.
* **Group** from the ``group`` argument, else ``WANDB_RUN_GROUP`` (``seminar-zoo sweep``
  sets it to the sweep name, so a sweep's runs are grouped in the W&B UI).
* **Name** from the ``name`` argument, else ``WANDB_NAME``, else the run directory's name.
* **Extra config**, logged once with the model/datamodule hyperparameters
  (:meth:`log_hyperparams`, which Lightning calls at the start of fit/test, after the
  ``setup`` hooks, so LightningCLI's ``config.yaml`` is already written):

  - ``cli``: the full LightningCLI config (``<save_dir>/config.yaml``, written by
    LightningCLI's ``SaveConfigCallback`` into ``trainer.log_dir`` = this logger's save_dir);
  - ``git``: ``{"commit", "dirty"}`` of the source tree (``git rev-parse HEAD``), if any;
  - ``dataset_meta``: the dataset's ``meta.json`` without long lists (``cold_items``,
    ``item_topic``: per-item arrays; their lengths go to ``dataset_meta_skipped``).

* **Summary**: :meth:`log_summary` writes a dict (``seminar-zoo experiment`` passes the
  final ``metrics.json``) into the run summary.
* **One run per logger**: a process that trains several stages (e.g. a pretraining
  stage built with ``ExperimentContext.make_trainer``, then the main fit) gets one W&B
  run per stage: a run left open by an earlier ``ZooWandbLogger`` is finished before the
  next logger starts its own (plain ``WandbLogger`` would silently reuse it).
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any, Dict, Optional

from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only

MAX_META_LIST = 64  # meta.json lists longer than this are per-item arrays, not facts: skipped
_ZOO_RUNS: list = []  # W&B runs (also disabled ones) started by a ZooWandbLogger in this process


def wandb_mode() -> str:
    """``WANDB_MODE`` normalised; default ``offline`` (``online`` under a W&B sweep agent)."""
    mode = os.environ.get("WANDB_MODE")
    if not mode:
        return "online" if os.environ.get("WANDB_SWEEP_ID") else "offline"
    mode = mode.strip().lower()
    if mode in ("dryrun", "offline"):  # Lightning sets WANDB_MODE=dryrun for offline loggers
        return "offline"
    if mode in ("disabled", "online", "run", "shared"):
        return "online" if mode == "run" else mode
    raise ValueError(f"WANDB_MODE={mode!r}: expected offline, online or disabled")


def git_info(*where: Optional[os.PathLike]) -> Optional[Dict[str, Any]]:
    """``{"commit": sha, "dirty": bool}`` of the first git work tree among ``where``
    (default: this package's source, then the current directory); None without git."""
    places = [p for p in where if p] or [Path(__file__).resolve().parent, Path.cwd()]
    for place in places:
        try:
            sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=place, capture_output=True,
                                 text=True, timeout=10)
            if sha.returncode != 0:
                continue
            st = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=place,
                                capture_output=True, text=True, timeout=10)
            return {"commit": sha.stdout.strip(), "dirty": bool(st.stdout.strip())}
        except (OSError, subprocess.SubprocessError):
            continue
    return None


def dataset_meta_for_logging(data_path: os.PathLike, max_list: int = MAX_META_LIST):
    """(meta without long lists, {skipped key: length}) from ``data_path/meta.json``; (None, {}) if absent."""
    p = Path(data_path) / "meta.json"
    if not p.is_file():
        return None, {}
    meta = json.loads(p.read_text())
    skipped: Dict[str, int] = {}

    def prune(obj, key):
        if isinstance(obj, dict):
            return {k: prune(v, f"{key}.{k}" if key else k) for k, v in obj.items()
                    if not (isinstance(v, list) and len(v) > max_list and not skipped.update({f"{key}.{k}" if key else k: len(v)}))}
        return obj

    return prune(meta, ""), skipped


def _read_cli_config(save_dir: Optional[str]) -> Optional[dict]:
    if not save_dir:
        return None
    p = Path(save_dir) / "config.yaml"
    if not p.is_file():
        return None
    import yaml

    try:
        cfg = yaml.safe_load(p.read_text())
    except yaml.YAMLError:
        return None
    return cfg if isinstance(cfg, dict) else None


class ZooWandbLogger(WandbLogger):
    def __init__(self, save_dir: Optional[str] = None, project: str = "seminar-zoo", name: Optional[str] = None,
                 group: Optional[str] = None, tags: Optional[list] = None, **kwargs):
        os.environ.setdefault("WANDB_SILENT", "true")
        mode = wandb_mode()
        if save_dir:
            os.makedirs(save_dir, exist_ok=True)
        group = group or os.environ.get("WANDB_RUN_GROUP") or None
        name = name or os.environ.get("WANDB_NAME") or (Path(save_dir).resolve().name if save_dir else None)
        super().__init__(save_dir=save_dir, project=project, name=name, group=group, tags=tags,
                         offline=(mode == "offline"), mode=mode, log_model=False, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)  # wandb warns that the setting is deprecated
        self._zoo_mode = mode
        self._extras_logged = False

    @property
    def mode(self) -> str:
        return self._zoo_mode

    # ------------------------------------------------------------------ the run
    @property
    def experiment(self):
        fresh = self._experiment is None
        if fresh:
            import wandb

            run = wandb.run
            if run is not None and any(r is run for r in _ZOO_RUNS):
                run.finish()  # an earlier stage's (or a disabled) run: this logger gets its own
        exp = WandbLogger.experiment.fget(self)
        if fresh and exp is not None and type(exp).__name__ != "DummyExperiment":
            _ZOO_RUNS.append(exp)
        return exp

    @property
    def run_dir(self) -> Optional[str]:
        """The W&B run's local folder (``.../wandb/offline-run-*``), once the run exists."""
        exp = self._experiment
        folder = getattr(exp, "dir", None) if exp is not None else None
        return str(Path(folder).parent) if folder else None

    # ------------------------------------------------------------------ config extras
    @rank_zero_only
    def log_hyperparams(self, params) -> None:
        super().log_hyperparams(params)
        if not self._extras_logged:
            self._extras_logged = True
            self.experiment.config.update(self.extra_config(params), allow_val_change=True)

    def extra_config(self, params=None) -> Dict[str, Any]:
        """The config extras described in the module docstring (missing pieces are left out)."""
        extra: Dict[str, Any] = {}
        cfg = _read_cli_config(self.save_dir)
        if cfg is not None:
            extra["cli"] = cfg
        git = git_info()
        if git is not None:
            extra["git"] = git
        data_path = None
        if cfg is not None and isinstance(cfg.get("data"), dict):
            data_path = cfg["data"].get("path")
        if data_path is None and params is not None:
            data_path = (params if isinstance(params, dict) else vars(params)).get("path")
        if data_path:
            meta, skipped = dataset_meta_for_logging(data_path)
            if meta is not None:
                extra["dataset_meta"] = meta
                if skipped:
                    extra["dataset_meta_skipped"] = skipped
        return extra

    # ------------------------------------------------------------------ summary
    @rank_zero_only
    def log_summary(self, values: Dict[str, Any]) -> None:
        """Write ``values`` (e.g. the final metrics.json) into the run summary; None values are dropped."""
        if self._zoo_mode == "disabled":
            return
        self.experiment.summary.update({k: v for k, v in values.items() if v is not None})


# ---------------------------------------------------------------------- offline run reader
_BLOCK, _HEADER = 32768, 7  # W&B's .wandb transaction log: LevelDB-style log blocks


def _wandb_records(path: os.PathLike):
    """Raw protobuf payloads of a ``run-*.wandb`` file (W&B's LevelDB-style log: a 7-byte file
    header ``:W&B`` + magic + version, then 32 KiB blocks of records ``crc32 | len u16 | type u8 | data``;
    type 1 = full, 2/3/4 = first/middle/last fragment)."""
    import struct
    import zlib

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B transaction log (no ':W&B' header)")
    pos, parts = _HEADER, []
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # block trailer padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        if kind == 0 and length == 0:  # zero padding / preallocated tail
            pos += left
            continue
        body = data[pos + _HEADER:pos + _HEADER + length]
        if len(body) < length:
            break  # truncated tail of a run that is still being written
        if zlib.crc32(bytes([kind]) + body) & 0xFFFFFFFF != crc:
            raise ValueError(f"{path}: corrupt record at byte {pos}")
        pos += _HEADER + length
        if kind == 1:
            yield body
        elif kind == 2:
            parts = [body]
        elif kind == 3:
            parts.append(body)
        elif kind == 4:
            parts.append(body)
            yield b"".join(parts)
            parts = []


def read_offline_run(run_folder: os.PathLike) -> Dict[str, Any]:
    """Config, summary and history of an offline W&B run folder (``.../wandb/offline-run-*``),
    read from its ``run-*.wandb`` log. Returns ``{"id", "config", "summary", "history"}``; values are
    decoded from JSON, nested keys joined with ``/``. ``wandb-summary.json`` in ``files/`` is used
    for the summary when the log holds none."""
    from wandb.proto import wandb_internal_pb2 as pb

    folder = Path(run_folder)
    logs = sorted(folder.glob("run-*.wandb"))
    if not logs:
        raise FileNotFoundError(f"{folder}: no run-*.wandb file (not a W&B offline run folder?)")
    out: Dict[str, Any] = {"id": logs[0].stem[len("run-"):], "config": {}, "summary": {}, "history": []}

    def key(item):
        return item.key or "/".join(item.nested_key)

    def val(item):
        try:
            return json.loads(item.value_json)
        except ValueError:
            return item.value_json

    for raw in _wandb_records(logs[0]):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "config":
            for it in rec.config.update:
                v = val(it)
                out["config"][key(it)] = v.get("value", v) if isinstance(v, dict) and set(v) <= {"value", "desc"} else v
            for it in rec.config.remove:
                out["config"].pop(key(it), None)
        elif kind == "summary":
            for it in rec.summary.update:
                out["summary"][key(it)] = val(it)
            for it in rec.summary.remove:
                out["summary"].pop(key(it), None)
        elif kind == "history":
            out["history"].append({key(it): val(it) for it in rec.history.item})
        elif kind == "run":
            for it in rec.run.config.update:
                out["config"].setdefault(key(it), val(it))
            if rec.run.run_group:
                out["group"] = rec.run.run_group
            if rec.run.git.commit:
                out["git_commit"] = rec.run.git.commit
            if rec.run.display_name:
                out["name"] = rec.run.display_name
    summary_file = folder / "files" / "wandb-summary.json"
    if not out["summary"] and summary_file.is_file():
        out["summary"] = json.loads(summary_file.read_text())
    return out


def offline_runs(root: os.PathLike):
    """Offline W&B run folders under ``root`` (recursively), oldest first."""
    return sorted((p for p in Path(root).rglob("offline-run-*") if p.is_dir()), key=lambda p: p.name)
