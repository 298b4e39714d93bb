"""The shipped overlays (experiments/ablations/*.yaml, experiments/seminar_pq.yaml) on experiments/seminar.yaml:
each holds only what it changes, and the config LightningCLI merges from ``--config seminar.yaml --config
OVERLAY`` differs from seminar.yaml's in exactly that (an ablation that silently trains on other data
positions, or a PQ config that silently pretrains differently, is what this guards against)."""
from pathlib import Path

import pytest
import yaml

from seminar_zoo.cli import lightning_main
from seminar_zoo.runguard import UsageError, preflight

ROOT = Path(__file__).resolve().parents[1]
SEMINAR = ROOT / "experiments" / "seminar.yaml"
M = "model.init_args."
# overlay -> the merged settings it changes (flattened keys); seminar_pq: every change under retrieval/pq
OVERLAYS = {
    "ablations/no_align.yaml": {M + "pretrain.w_align": 0.0},
    "ablations/no_gsu.yaml": {M + "use_gsu": False},
    "ablations/no_pretrain.yaml": {M + "pretrain.epochs": 0},
    "ablations/no_query.yaml": {M + "lambda_q": 0.0},
    "ablations/time_aware.yaml": {M + "time_embedding": True},
    "seminar_pq.yaml": None,
}


def _flat(d, pre=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{pre}{k}."))
        else:
            out[f"{pre}{k}"] = v
    return out


def _merged(capsys, *configs):
    args = ["fit"] + [a for c in configs for a in ("--config", str(c))] + ["--print_config"]
    with pytest.raises(SystemExit) as e:
        lightning_main(args)
    assert e.value.code in (0, None)
    return _flat(yaml.safe_load(capsys.readouterr().out))


def test_every_ablation_is_listed():
    shipped = {f"ablations/{p.name}" for p in (ROOT / "experiments" / "ablations").glob("*.yaml")}
    assert shipped == {k for k in OVERLAYS if k.startswith("ablations/")}


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_overlay_holds_only_model_settings(overlay):
    cfg = yaml.safe_load((ROOT / "experiments" / overlay).read_text())
    assert set(cfg) == {"model"} and set(cfg["model"]) == {"init_args"}, "an overlay names no class, data or trainer"
    # pretrain/pq are typed (PretrainConfig, PQConfig): an overlay's fields merge into seminar.yaml's, which
    # the merged-config test below checks; an overlay therefore holds one pretraining field, not the block
    if "pretrain" in cfg["model"]["init_args"]:
        assert len(cfg["model"]["init_args"]["pretrain"]) == 1


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_merged_config_differs_from_seminar_yaml_only_in_the_overlay(overlay, capsys):
    base = _merged(capsys, SEMINAR)
    merged = _merged(capsys, SEMINAR, ROOT / "experiments" / overlay)
    changed = {k: merged.get(k) for k in set(base) | set(merged) if base.get(k) != merged.get(k)}
    assert merged["data.train_window"] == base["data.train_window"] == 20
    assert merged["model.class_path"] == base["model.class_path"]
    expected = OVERLAYS[overlay]
    if expected is None:  # seminar_pq: retrieval only; pretraining, model, data and trainer as seminar.yaml
        assert changed and all(k == M + "retrieval" or k.startswith(M + "pq") for k in changed), changed
        assert changed[M + "retrieval"] == "pq"
    else:
        assert changed == expected


def test_an_overlay_alone_is_refused_with_the_command_that_works(tiny_data):
    with pytest.raises(UsageError, match="--config experiments/seminar.yaml --config experiments/ablations"):
        preflight(["--config", str(ROOT / "experiments" / "ablations" / "no_gsu.yaml"), "--data.path", str(tiny_data)])
    preflight(["--config", str(SEMINAR), "--config", str(ROOT / "experiments" / "ablations" / "no_gsu.yaml"),
               "--data.path", str(tiny_data), "--data.max_len", "20"], warn=lambda *a, **k: None)
