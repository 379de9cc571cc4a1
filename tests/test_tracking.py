"""Experiment tracking: ``--logger mlflow`` read back with MLflow's own client, ``--logger wandb`` offline read back
from W&B's transaction log, resume continuing the same tracked run, and the one-line errors."""

from __future__ import annotations

import builtins
import hashlib
import json
from pathlib import Path

import pytest

from pyro_vae.cli import main
from tests.helpers import power_cut_at_step

COMMON = ["--threads", "1", "--hidden", "16", "--no-progress"]


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_mlflow_run_has_the_config_every_epoch_once_and_the_figures_across_a_resume(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    run = tmp_path / "run"
    args = ["train", "--out", str(run), *COMMON, "--logger", "mlflow"]
    assert main([*args, "--epochs", "2", "--z-dim", "3"]) == 0
    first_id = json.loads((run / "mlflow_run.json").read_text())["run_id"]
    assert main([*args, "--epochs", "3", "--resume"]) == 0
    recorded = json.loads((run / "mlflow_run.json").read_text())
    assert recorded["run_id"] == first_id  # the resume continued the MLflow run, not a new one
    assert recorded["tracking_uri"] == (run / "mlruns").resolve().as_uri()  # the default store: DIR/mlruns

    client = _client(recorded["tracking_uri"])
    experiment = client.get_experiment_by_name("pyro-vae")
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == [first_id]
    logged = client.get_run(first_id)
    assert logged.info.status == "FINISHED"
    # params: config.json's values, read independently of the logger's flattening.
    config = json.loads((run / "config.json").read_text())
    params = logged.data.params
    assert params["model.z_dim"] == "3" and params["model.prior"] == config["model"]["prior"] == "standard"
    assert params["lr"] == str(config["lr"]) and params["batch_size"] == str(config["batch_size"])
    assert params["epochs"] == "2" and logged.data.tags["resumed.epochs"] == "3"  # params are immutable in MLflow
    # metrics: every epoch once, equal to metrics.jsonl.
    records = _records(run)
    for key in ("train_loss", "test_elbo", "test_recon", "test_kl", "beta"):
        history = sorted(client.get_metric_history(first_id, key), key=lambda m: m.step)
        assert [m.step for m in history] == [1, 2, 3], key
        assert [m.value for m in history] == pytest.approx([r[key] for r in records], rel=1e-12), key
    # artifacts: the figures the run wrote.
    artifacts = {Path(a.path).name for a in client.list_artifacts(first_id, "figures")}
    assert artifacts == {p.name for p in run.glob("*.png")} and "curves.png" in artifacts


def test_mlflow_goes_to_the_tracking_uri_given(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    store = (tmp_path / "store").resolve().as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from-env")
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *COMMON, "--logger", "mlflow", "--epochs", "1"]) == 0
    assert not (run / "mlruns").exists()
    run_id = json.loads((run / "mlflow_run.json").read_text())["run_id"]
    client = _client(store)
    runs = client.search_runs([client.get_experiment_by_name("from-env").experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]
    assert runs[0].data.metrics["test_elbo"] == pytest.approx(_records(run)[-1]["test_elbo"], rel=1e-12)
    # --mlflow-uri wins over the environment variable; a folder's plain path is a file store too.
    other = str(tmp_path / "other")
    argv = ["train", "--out", str(tmp_path / "run2"), *COMMON, "--logger", "mlflow", "--mlflow-uri", other]
    assert main([*argv, "--epochs", "1"]) == 0
    assert json.loads((tmp_path / "run2" / "mlflow_run.json").read_text())["tracking_uri"] == other
    assert len(_client(other).search_runs([_client(other).get_experiment_by_name("from-env").experiment_id])) == 1


def test_mlflow_epochs_trained_again_after_a_crash_are_logged_once(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from pyro_vae.mlflow_logger import MLflowLogger

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = MLflowLogger(tmp_path, {"model": {"z_dim": 2}, "epochs": 3})
    for epoch in (1, 2, 3):
        first.log({"epoch": epoch, "train_loss": float(epoch)})
    first.close("KILLED")  # killed after epoch 3, but the checkpoint had epoch 1 only
    second = MLflowLogger(tmp_path, {"model": {"z_dim": 2}, "epochs": 4}, resume=True)
    assert second.run_id == first.run_id
    assert first.client.get_run(first.run_id).info.status == "RUNNING"
    for epoch in (2, 3, 4):  # the resumed process trains epochs 2 and 3 again
        second.log({"epoch": epoch, "train_loss": float(epoch)})
    second.close()
    history = first.client.get_metric_history(first.run_id, "train_loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)]


def test_mlflow_run_after_a_crash_is_failed_then_resumed_with_each_epoch_once(tmp_path, monkeypatch):
    """A real crash between two checkpoints: epoch 2 was logged but not checkpointed; the resume trains it again."""
    pytest.importorskip("mlflow")
    from pyro_vae import TrainConfig, train
    from pyro_vae.data import load_data
    from pyro_vae.training import Trainer

    data = load_data("digits")
    cfg = TrainConfig.for_data(data, epochs=4, threads=1, batch_size=512)
    steps = -(-data.train_x.shape[0] // cfg.batch_size)
    # checkpoints after epoch 1 and the last only, whatever the clock says
    monkeypatch.setattr(Trainer, "_checkpoint_due", lambda self, done: done in (1, cfg.epochs))
    store, out = (tmp_path / "store").resolve().as_uri(), tmp_path / "run"
    options = dict(progress=False, figures=False, logger="mlflow", mlflow_uri=store, data=data)
    with power_cut_at_step(monkeypatch, 2 * steps + 1):  # the first step of epoch 3
        train(cfg, out, **options)
    client = _client(store)
    run_id = json.loads((out / "mlflow_run.json").read_text())["run_id"]
    assert client.get_run(run_id).info.status == "FAILED"
    assert sorted(m.step for m in client.get_metric_history(run_id, "train_loss")) == [1, 2]
    train(cfg, out, resume=True, **options)
    assert client.get_run(run_id).info.status == "FINISHED"
    records = _records(out)
    for key in ("train_loss", "test_elbo"):
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        assert [m.step for m in history] == [1, 2, 3, 4], key
        # epoch 2's value logged before the crash equals the resumed run's (resume is exact on CPU)
        assert [m.value for m in history] == pytest.approx([r[key] for r in records], rel=1e-12), key


def _wandb_records(path: Path):
    """The protobuf records of a W&B transaction log (``run-ID.wandb``). wandb 0.31 has no Python reader (its core
    is in Go), so this reads the LevelDB log layout it uses: a 7-byte file header, then in 32 KiB blocks records of
    (crc32c: 4 bytes, length: 2, type: 1; FULL 1, FIRST 2, MIDDLE 3, LAST 4) and their data."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, parts = 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        parts += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


def _key(item) -> str:
    return "/".join(item.nested_key) or item.key


def _wandb_logged(run_dir: Path) -> tuple[set[str], dict[int, dict], dict[str, object]]:
    """(run ids, the history by step, the last summary) of every offline run folder of ``run_dir``."""
    ids, history, summary = set(), {}, {}
    for log in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        for record in _wandb_records(log):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                ids.add(record.run.run_id)
            elif kind == "history":
                items = {_key(i): json.loads(i.value_json) for i in record.history.item}
                history[items["_step"]] = items
            elif kind == "summary":
                summary.update({_key(u): json.loads(u.value_json) for u in record.summary.update})
    return ids, history, summary


def test_wandb_offline_run_has_every_epoch_and_the_summary_across_a_resume(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # no login: offline without being told
    run = tmp_path / "run"
    args = ["train", "--out", str(run), *COMMON, "--logger", "wandb"]
    assert main([*args, "--epochs", "2"]) == 0
    assert main([*args, "--epochs", "3", "--resume"]) == 0
    run_id = json.loads((run / "wandb_run.json").read_text())["run_id"]
    ids, history, summary = _wandb_logged(run)
    assert ids == {run_id} and len(list(run.glob("wandb/offline-run-*"))) == 2  # one run, resumed
    records = _records(run)
    assert sorted(s for s in history if any(k.startswith("test_") for k in history[s])) == [1, 2, 3]
    for record in records:
        for key in ("train_loss", "test_elbo", "test_kl", "beta"):
            assert history[record["epoch"]][key] == pytest.approx(record[key], rel=1e-12)
    assert summary["test_elbo"] == pytest.approx(records[-1]["test_elbo"], rel=1e-12)
    for name in ("curves", "samples", "reconstructions"):  # the figures, as images of the run's own files
        assert summary[f"figures/{name}/_type"] == "image-file"
        assert summary[f"figures/{name}/sha256"] == hashlib.sha256((run / f"{name}.png").read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("logger", "module", "command"),
    [("mlflow", "mlflow", 'pip install "pyro-vae[mlflow]"'), ("wandb", "wandb", 'pip install "pyro-vae[wandb]"')],
)
def test_a_missing_extra_is_one_line_naming_the_pip_command(logger, module, command, tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def without(name, *args, **kwargs):
        if name == module or name.startswith(module + "."):
            raise ImportError(f"No module named {module!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without)
    assert main(["train", "--out", str(tmp_path / "r"), "--logger", logger]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"pyro-vae: error: --logger {logger} needs") and command in err
    assert not (tmp_path / "r").exists()


def test_mlflow_uri_without_the_mlflow_logger_is_one_line(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "r"), "--mlflow-uri", "file:/x"]) == 2
    assert capsys.readouterr().err == (
        "pyro-vae: error: --mlflow-uri is for --logger mlflow (the logger is 'none'); add --logger mlflow\n"
    )
    assert not (tmp_path / "r").exists()


def test_an_unsupported_mlflow_uri_is_one_line_and_the_run_directory_can_be_used_again(tmp_path, capsys):
    pytest.importorskip("mlflow")
    argv = ["train", "--out", str(tmp_path / "r"), *COMMON, "--epochs", "1", "--logger", "mlflow"]
    assert main([*argv, "--mlflow-uri", "bogus://x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pyro-vae: error: MLflow at bogus://x: ") and "bogus" in err
    assert main([*argv, "--mlflow-uri", str(tmp_path / "store")]) == 0  # no --overwrite needed: nothing was trained
