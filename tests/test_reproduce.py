"""Run options behind the baselines (backprop, random BN, block overrides, bf16) and the reproduction runner."""

import csv
import json
from pathlib import Path

import pytest
import torch

import softhebb.run as run_module
from softhebb import extract_features, hebbian_phase, reproduce, reproduce_tables
from softhebb.cli import main
from softhebb.network import build_model
from softhebb.reproduce import Cell, Experiment
from softhebb.config import RunConfig
from softhebb.run import RunError, load_run, run

SLICE = dict(dataset="mnist", train_limit=200, test_limit=200, probe_epochs=1, eval_every=1)


def test_backprop_preset_trains_end_to_end(data_root, tmp_path):
    res = run(RunConfig(preset="2CnnCIFAR", **{**SLICE, "probe_epochs": 2}), tmp_path / "bp", data_root,
              progress=False, echo=False)
    assert res["method"] == "backprop" and res["test_acc"] > 60  # 200 images, 2 epochs: far above chance
    model, config = load_run(tmp_path / "bp")
    assert config["run"]["bp_mode"] == "end-to-end"


def test_random_baseline_bn_variants(data_root, tmp_path):
    ident = run(RunConfig(preset="2SoftHebbCnnCIFAR", hebb_epochs=0, **SLICE), tmp_path / "id", data_root, progress=False, echo=False)
    data = run(RunConfig(preset="2SoftHebbCnnCIFAR", hebb_epochs=0, random_bn="data", **SLICE), tmp_path / "data", data_root,
               progress=False, echo=False)
    assert ident["method"] == data["method"] == "random"
    m_id, _ = load_run(tmp_path / "id")
    m_data, _ = load_run(tmp_path / "data")
    bn_id, bn_data = m_id.blocks[0].pre[0], m_data.blocks[0].pre[0]
    assert torch.equal(bn_id.running_mean, torch.zeros(1)) and torch.equal(bn_id.running_var, torch.ones(1))
    assert 0.05 < float(bn_data.running_mean) < 0.3  # MNIST's mean pixel is about 0.13
    assert torch.equal(m_id.blocks[0].layer.weight, m_data.blocks[0].layer.weight)  # same untrained weights


def test_block_overrides_reach_every_hebbian_block_and_are_validated():
    cfg = RunConfig(preset="4SoftHebbCnnCIFAR", block_overrides={"rule": "soft", "t_invert": 0.5})
    blocks = cfg.resolved_preset()["blocks"]
    assert all(b["rule"] == "soft" and b["t_invert"] == 0.5 for b in blocks)
    with pytest.raises(Exception, match="t_invert"):
        RunConfig(preset="4SoftHebbCnnCIFAR", block_overrides={"t_invert": -1})
    with pytest.raises(Exception, match="unknown field"):
        RunConfig(preset="4SoftHebbCnnCIFAR", block_overrides={"t_inverted": 1})


def test_unknown_dataset_is_refused_clearly():
    with pytest.raises(RunError, match="dataset.*one of"):
        RunConfig(preset="5SoftHebbCnnSTL", dataset="stl-10")


def test_bf16_hebbian_phase_stays_close_to_fp32():
    images = torch.randint(0, 256, (60, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    weights = {}
    for precision in ("fp32", "bf16"):
        model = build_model("4SoftHebbCnnCIFAR_quarterNeurons", (3, 32, 32), 10, seed=0)
        hebbian_phase(model, images, batch_size=10, progress=False, precision=precision)
        weights[precision] = [model.blocks[i].layer.weight for i in model.hebbian_block_indices()]
        assert all(w.dtype == torch.float32 for w in weights[precision])
        feats = extract_features(model, images[:20], precision=precision)
        assert feats.dtype == torch.float32 and torch.isfinite(feats).all()
    for a, b in zip(weights["fp32"], weights["bf16"]):
        rel = float((a - b).norm() / a.norm())
        assert 0 < rel < 0.02, rel  # bf16 really ran (not bit-identical) and stayed close


def test_reproduce_runs_a_grid_resumes_and_writes_tables(data_root, tmp_path, monkeypatch):
    cells = lambda dataset: [  # noqa: E731
        Cell("softhebb", 1, {"preset": "2SoftHebbCnnCIFAR"}, 71.1),
        Cell("random", 1, {"preset": "2SoftHebbCnnCIFAR", "hebb_epochs": 0}, 64.0),
        Cell("bp", 1, {"preset": "2CnnCIFAR"}, None),
    ]
    monkeypatch.setitem(reproduce.EXPERIMENTS, "tiny", Experiment("tiny", "tiny grid", "hidden layers", ("mnist",), cells))
    opts = {k: v for k, v in SLICE.items() if k != "dataset"}
    rows = reproduce.reproduce("tiny", tmp_path, ["mnist"], 2, str(data_root), opts, progress=False, echo=lambda s: None)
    assert len(rows) == 6 and {r["method"] for r in rows} == {"softhebb", "random", "bp"}
    root = tmp_path / "tiny"
    with open(root / "runs.csv") as f:
        assert len(list(csv.DictReader(f))) == 6
    table = (root / "tiny.md").read_text()
    assert "| mnist | softhebb | 1 | 2 |" in table and "71.10" in table
    assert (root / "tiny.png").exists() or (root / "tiny.png.missing").exists()
    stamp = {p: p.stat().st_mtime_ns for p in root.glob("*/result.json")}
    reproduce.reproduce("tiny", tmp_path, ["mnist"], 2, str(data_root), opts, progress=False, echo=lambda s: None)
    assert stamp == {p: p.stat().st_mtime_ns for p in root.glob("*/result.json")}  # finished runs are skipped
    assert len(reproduce.reproduce("tiny", tmp_path, ["mnist"], 3, None, opts, echo=lambda s: None, summary_only=True)) == 6
    only = reproduce.reproduce("tiny", tmp_path, ["mnist"], 2, None, opts, echo=lambda s: None, summary_only=True,
                               methods=["random"])
    assert {r["method"] for r in only} == {"random"} and len(only) == 2
    with pytest.raises(RunError, match="no method 'hebb'"):
        reproduce.reproduce("tiny", tmp_path, ["mnist"], 2, None, opts, echo=lambda s: None, methods=["hebb"])


def test_reproduce_cli_lists_and_rejects_unknown(capsys):
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("fig1", "fig3", "fig4", "figB1", "figB3a", "figB4", "table1"))
    assert main(["reproduce", "fig9"]) == 2
    assert "unknown experiment" in capsys.readouterr().err
    assert main(["reproduce", "fig1", "--dataset", "stl10"]) == 2
    assert main(["reproduce", "fig3", "--dataset", "stl10", "--data-dir", "/nonexistent"]) == 2
    assert "stl10_binary.tar.gz" in capsys.readouterr().err  # no data: says which file to put where
    assert main(["reproduce", "fig1", "--option", "probe_epoch=3"]) == 2
    assert "run options are" in capsys.readouterr().err
    assert main(["reproduce", "fig3", "--option", "preset=2SoftHebbCnnCIFAR"]) == 2  # the grid's own axis
    assert "would replace what experiment fig3 itself varies" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["reproduce", "fig1", "--seeds", "0"])
    assert "expected an integer >= 1" in capsys.readouterr().err
    with pytest.raises(RunError, match="seeds must be"):
        reproduce.reproduce("fig1", "unused", seeds=0)


def test_every_experiment_cell_is_a_valid_run_config():
    for exp in reproduce.EXPERIMENTS.values():
        for dataset in exp.datasets:
            for cell in exp.cells(dataset):
                RunConfig(dataset=dataset, **cell.config)  # presets, overrides and input shapes are checked


def test_reproduce_jobs_run_in_processes_with_the_same_results(data_root, tmp_path, monkeypatch):
    cells = lambda dataset: [Cell("softhebb", 1, {"preset": "2SoftHebbCnnCIFAR"}, None),  # noqa: E731
                             Cell("random", 1, {"preset": "2SoftHebbCnnCIFAR", "hebb_epochs": 0}, None),
                             Cell("softhebb", 2, {"preset": "2SoftHebbCnnCIFAR"}, None)]  # the same runs as the first
    monkeypatch.setitem(reproduce.EXPERIMENTS, "tiny", Experiment("tiny", "tiny grid", "hidden layers", ("mnist",), cells))
    opts = {k: v for k, v in SLICE.items() if k != "dataset"}
    threads = torch.get_num_threads()
    lines: list[str] = []
    try:
        torch.set_num_threads(1)  # what each of 2 jobs gets out of 2 threads: the same arithmetic
        serial = reproduce.reproduce("tiny", tmp_path / "serial", ["mnist"], 2, str(data_root), opts, progress=False,
                                     echo=lambda s: None)
        torch.set_num_threads(2)
        parallel = reproduce.reproduce("tiny", tmp_path / "jobs", ["mnist"], 2, str(data_root), opts, progress=False,
                                       echo=lines.append, jobs=2)
        with pytest.raises(Exception, match="train-images-idx3-ubyte"):  # a failing run stops the grid, and says why
            reproduce.reproduce("tiny", tmp_path / "fail", ["mnist"], 2, str(tmp_path / "no-data"), opts,
                                progress=False, echo=lambda s: None, jobs=2)
    finally:
        torch.set_num_threads(threads)
    assert len(parallel) == 6 and sum(line.endswith("%") for line in lines) == 4  # shared runs ran once
    for a, b in zip(serial, parallel):
        assert (a["method"], a["seed"]) == (b["method"], b["seed"])
        ra, rb = (json.loads((Path(r["run_dir"]) / "result.json").read_text()) for r in (a, b))
        assert (ra["test_acc"], ra["test_loss"]) == (rb["test_acc"], rb["test_loss"])
    with pytest.raises(RunError, match="use device=cuda"):
        reproduce.reproduce("tiny", tmp_path / "x", ["mnist"], 1, str(data_root), {**opts, "device": "cuda:1"}, jobs=2)
    with pytest.raises(RunError, match="jobs must be"):
        reproduce.reproduce("tiny", tmp_path / "x", ["mnist"], 1, str(data_root), opts, jobs=0)


def test_an_interrupted_reproduction_continues_each_run_from_its_checkpoint(data_root, tmp_path, monkeypatch):
    cells = lambda dataset: [Cell("softhebb", 1, {"preset": "2SoftHebbCnnCIFAR"}, None),  # noqa: E731
                             Cell("bp", 1, {"preset": "2CnnCIFAR"}, None)]
    monkeypatch.setitem(reproduce.EXPERIMENTS, "tiny", Experiment("tiny", "tiny grid", "hidden layers", ("mnist",), cells))
    opts = {**{k: v for k, v in SLICE.items() if k != "dataset"}, "probe_epochs": 3}
    whole = reproduce.reproduce("tiny", tmp_path / "whole", ["mnist"], 1, str(data_root), opts, progress=False,
                                echo=lambda s: None)
    save = run_module.save_checkpoint

    class Stop(Exception):
        pass

    def save_then_stop(path, state):  # the machine goes down after each run's second epoch
        save(path, state)
        if state["phase"] != "hebbian" and state[state["phase"]]["epoch"] == 2:
            raise Stop

    monkeypatch.setattr(run_module, "save_checkpoint", save_then_stop)
    for _ in cells("mnist"):
        with pytest.raises(Stop):
            reproduce.reproduce("tiny", tmp_path / "cut", ["mnist"], 1, str(data_root), opts, progress=False,
                                echo=lambda s: None)
    monkeypatch.setattr(run_module, "save_checkpoint", save)
    cut = reproduce.reproduce("tiny", tmp_path / "cut", ["mnist"], 1, str(data_root), opts, progress=False,
                              echo=lambda s: None)
    assert [r["test_acc"] for r in cut] == [r["test_acc"] for r in whole]
    for r in cut:
        result = json.loads((Path(r["run_dir"]) / "result.json").read_text())
        assert result["resumed_from"]["epoch"] == 2, result.get("resumed_from")


def test_curve_experiments_plot_every_runs_per_batch_column(tmp_path):
    pytest.importorskip("matplotlib")
    rows = []
    for method in ("norm-dependent", "linear decay"):
        run_dir = tmp_path / method
        run_dir.mkdir()
        per_batch = [json.dumps({"phase": "hybrid", "seen": 50 * (b + 1), "r1_0": b % 7}) for b in range(120)]
        (run_dir / "metrics.jsonl").write_text("\n".join(per_batch + [json.dumps({"phase": "hybrid", "test_acc": 50.0})]))
        rows.append({"method": method, "seed": 0, "run_dir": str(run_dir)})
    reproduce_tables.plot_curves(reproduce.EXPERIMENTS["figB3b"], tmp_path, rows)
    assert (tmp_path / "figB3b-curves.png").read_bytes()[:4] == b"\x89PNG"
