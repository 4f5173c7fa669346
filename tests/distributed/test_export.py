"""Export and predict (dlrm_dist.serving.export, dlrm_dist.serving.predict, dlrm_dist.serving.program).

One 2-rank training run on a tiny Criteo npy folder (``dlrm-dist synth`` +
``dlrm-dist preprocess``) with tables pinned to every sharding type that runs
on CPU gloo: cat_0 row_wise, cat_1 table_row_wise, cat_2 column_wise, cat_3
data_parallel, the rest table_wise. Then:

* the exported single-process model scores the validation rows exactly as the
  sharded model does: a 2-rank helper loads the same checkpoint into a
  DistributedModelParallel with the saved plan and writes its probabilities;
* ``predict`` reproduces the val_auc the training run wrote to summary.json
  (its validation split fills whole batches on both ranks, so both read the same rows);
* fp16 / int8 exports: their AUC change is printed, bounded only loosely;
* the torch.export program runs in a Python that cannot import dlrm_dist;
* bad checkpoints, configs, model files and data folders stop with exit 2, a
  message naming the path, and no output file.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dlrm_dist import cli
from dlrm_dist.config import load_config, to_yaml
from dlrm_dist.data.criteo import CriteoDataset, split_parts
from dlrm_dist.data.npy_days import open_days
from dlrm_dist.model import EBC_PATH, table_name
from dlrm_dist.serving.program import serving_inputs
from tests.conftest import ROOT, run_cmd
from tests.distributed.spawn import run_on_ranks

ROWS_PER_DAY = 4096  # 2 training days: 16 steps of 256 x 2 ranks; validation 2048 rows = 4 batches per rank
PINNED = {"cat_0": "row_wise", "cat_1": "table_row_wise", "cat_2": "column_wise",
          "cat_3": "data_parallel", "cat_4": "table_wise"}


def _table_key(feature: str) -> str:
    """The DCP key of a feature's table weight (checkpoint app state "model", then DLRMTrain's key)."""
    return f"model.{EBC_PATH}.embedding_bags.{table_name(feature)}.weight"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """Synthetic Criteo days -> npy -> 2-rank training with a checkpoint at the end."""
    tmp = tmp_path_factory.mktemp("export")
    raw, npy, run_dir, config = tmp / "raw", tmp / "npy", tmp / "run", tmp / "config.yaml"
    config.write_text(to_yaml(load_config(ROOT / "configs" / "smoke.yaml", ["train.eval_every=0"])))
    tables = "{" + ", ".join(f"{f}: {{sharding_types: [{t}]}}" for f, t in PINNED.items()) + "}"
    steps = [
        [sys.executable, "-m", "dlrm_dist.cli", "synth", "--format", "tsv", "--days", "3",
         "--rows-per-day", str(ROWS_PER_DAY), "--output", str(raw), "--config", str(config)],
        [sys.executable, "-m", "dlrm_dist.cli", "preprocess", "--dataset", "criteo_1tb", "--input", str(raw),
         "--output", str(npy), "--workers", "1", "--no-progress"],
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "dlrm_dist.train", "--config", str(config), "--run-dir", str(run_dir),
         "data.source=criteo", f"data.path={npy}", "metrics.progress_bar=false", "metrics.auroc_thresholds=0",
         "train.checkpoint_at_end=true", f"sharding.tables={tables}", "dist.device=cpu"],
    ]
    for cmd in steps:
        proc = run_cmd(cmd, timeout=600)
        assert proc.returncode == 0, f"{cmd[3:5]}\n" + proc.stdout[-3000:] + proc.stderr[-3000:]
    step = run_dir / "checkpoints" / (run_dir / "checkpoints/latest").read_text().strip()
    return {"tmp": tmp, "npy": npy, "run": run_dir, "step": step,
            "summary": json.loads((run_dir / "summary.json").read_text())}


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run a dlrm-dist subcommand in this process (the CLI's exit code is main's return)."""
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _predict(capsys, model: Path, npy: Path, out: Path) -> dict:
    code, stdout, stderr = _cli(capsys, "predict", "--model", str(model), "--data", str(npy), "--output", str(out))
    assert code == 0, stderr
    m = re.search(r"val: (\d+) rows, .* AUC ([\d.]+), logloss ([\d.]+)", stdout)
    assert m, stdout
    return {"rows": int(m.group(1)), "auc": float(m.group(2)), "logloss": float(m.group(3)), "probs": np.load(out)}


def _sharded_val_probs(step: Path, run_dir: Path, out: Path) -> None:
    """On each rank: the training recipe's sharded model (saved sharding types pinned),
    the checkpoint loaded into it, then its probabilities on this rank's validation
    batches, gathered in rank order (= row order) and saved by rank 0."""
    import torch.distributed as dist

    from dlrm_dist.training import checkpoint as ckpt
    from dlrm_dist.data.build import build_data
    from dlrm_dist.training.distributed import init_distributed
    from dlrm_dist.training.recipe import build_sharded_model

    cfg = load_config(step / "config.yaml")
    env = init_distributed(cfg.dist)
    sharding = ckpt.pin_sharding_types(cfg.sharding, ckpt.read_meta(step)["sharding_types"])
    dmp, _plan, optimizer, lr_scheduler = build_sharded_model(cfg, sharding, env, run_dir)
    ckpt.load_checkpoint(step, dmp, optimizer, lr_scheduler, env)
    val = build_data(cfg.data, cfg.train.batch_size, cfg.model.table_sizes(), env).val
    dmp.eval()
    with torch.no_grad():
        local = torch.cat([torch.sigmoid(dmp(batch)[1][1].reshape(-1)) for batch in val])
    gathered = [torch.zeros_like(local) for _ in range(env.world_size)]
    dist.all_gather(gathered, local)
    if env.is_main:
        np.save(out, torch.cat(gathered).numpy())


def test_checkpoint_holds_every_sharding_type(trained):
    """What export reads: meta.json's sharding types, the config beside the DCP
    files, and each table as shards whose offsets say how it was split."""
    from torch.distributed.checkpoint import FileSystemReader

    step = trained["step"]
    meta = json.loads((step / "meta.json").read_text())
    assert {table_name(f): t for f, t in PINNED.items()}.items() <= meta["sharding_types"].items()
    assert load_config(step / "config.yaml").data.path == str(trained["npy"])
    tensors = FileSystemReader(str(step)).read_metadata().state_dict_metadata
    offsets = {f: sorted(tuple(c.offsets) for c in tensors[_table_key(f)].chunks) for f in PINNED}
    assert offsets["cat_0"] == offsets["cat_1"] == [(0, 0), (50, 0)]  # rows split over 2 ranks
    assert offsets["cat_2"] == [(0, 0), (0, 8)]  # columns split
    assert offsets["cat_3"] == offsets["cat_4"] == [(0, 0)]  # whole (replicated / on one rank)
    assert all(tuple(tensors[_table_key(f"cat_{i}")].size) == (100, 16) for i in range(26))
    assert any(k.startswith("optim.state.embedding.") for k in tensors)  # there, and export skips it


def test_export_equals_sharded_model_and_reproduces_val_auc(trained, capsys):
    tmp, step = trained["tmp"], trained["step"]
    code, stdout, stderr = _cli(capsys, "export", str(step), "--output", str(tmp / "model.pt"))
    assert code == 0, stderr
    assert "exported step 16" in stdout
    (tmp / "helper").mkdir()
    run_on_ranks(_sharded_val_probs, step, tmp / "helper", tmp / "sharded.npy", timeout_s=300)
    sharded = np.load(tmp / "sharded.npy")
    ours = _predict(capsys, tmp / "model.pt", trained["npy"], tmp / "preds.npy")
    assert ours["rows"] == trained["summary"]["val_rows"] == len(sharded) == ROWS_PER_DAY // 2
    np.testing.assert_allclose(ours["probs"], sharded, rtol=0, atol=1e-6)
    assert abs(ours["auc"] - trained["summary"]["val_auc"]) < 1e-4, (ours["auc"], trained["summary"])
    assert abs(ours["logloss"] - trained["summary"]["val_logloss"]) < 1e-4
    assert trained["summary"]["val_auc"] > 0.6  # a model that learned something, not a coin


def test_quantized_exports_report_their_auc_change(trained, capsys):
    tmp = trained["tmp"]
    fp32 = tmp / "fp32.pt"
    assert _cli(capsys, "export", str(trained["step"]), "--output", str(fp32))[0] == 0
    base = _predict(capsys, fp32, trained["npy"], tmp / "fp32.npy")
    sizes = {"fp32": fp32.stat().st_size}
    for dtype in ("fp16", "int8"):
        out = tmp / f"{dtype}.pt"
        code, _, stderr = _cli(capsys, "export", str(trained["step"]), "--output", str(out), "--dtype", dtype,
                               *(["--program", str(tmp / "int8.pt2")] if dtype == "int8" else []))
        assert code == 0, stderr
        q = _predict(capsys, out, trained["npy"], tmp / f"{dtype}.npy")
        sizes[dtype] = out.stat().st_size
        with capsys.disabled():
            print(f"\n{dtype}: val AUC {q['auc']:.6f} vs fp32 {base['auc']:.6f} (change {q['auc'] - base['auc']:+.6f}), "
                  f"max |dp| {np.abs(q['probs'] - base['probs']).max():.2e}, file {sizes[dtype]} vs {sizes['fp32']} B")
        assert abs(q["auc"] - base["auc"]) < 0.01  # a sanity bound, not a claim of zero change
        assert np.abs(q["probs"] - base["probs"]).max() < 0.05
    # the int8 program (fbgemm's quantized lookup inside) scores as the int8 model does
    program = torch.export.load(str(tmp / "int8.pt2")).module()
    cfg = load_config(trained["step"] / "config.yaml")
    reader = CriteoDataset(split_parts(open_days(trained["npy"]))["val"], 256, 0, 1, cfg.model.table_sizes())
    batch = reader.to_batch(*reader.read(0, 256))
    with torch.no_grad():
        served = program(*serving_inputs(batch.dense_features, batch.sparse_features)).numpy()
    np.testing.assert_allclose(served, q["probs"][:256], rtol=0, atol=1e-6)


_SERVE_WITHOUT_PACKAGE = """
import sys
class NoDlrmDist:  # the package must not be needed, even though it is installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "dlrm_dist":
            raise ImportError("dlrm_dist blocked")
sys.meta_path.insert(0, NoDlrmDist())
import numpy as np, torch
import fbgemm_gpu  # registers the fbgemm operators the program calls
program = torch.export.load(sys.argv[1])
dense, values, lengths = (torch.from_numpy(np.load(f"{sys.argv[2]}/{k}.npy")) for k in ("dense", "values", "lengths"))
with torch.no_grad():
    np.save(sys.argv[3], program.module()(dense, values, lengths).numpy())
assert not [m for m in sys.modules if m.startswith("dlrm_dist")]
"""


def test_serving_program_runs_without_the_package(trained, capsys):
    tmp, cfg = trained["tmp"], load_config(trained["step"] / "config.yaml")
    code, stdout, stderr = _cli(capsys, "export", str(trained["step"]), "--output", str(tmp / "serve.pt"),
                                "--program", str(tmp / "serve.pt2"))
    assert code == 0, stderr
    assert "serving program" in stdout
    reader = CriteoDataset(split_parts(open_days(trained["npy"]))["val"], 300, 0, 1, cfg.model.table_sizes())
    batch = reader.to_batch(*reader.read(0, 300))  # another batch size than the one traced (64)
    inputs = tmp / "inputs"
    inputs.mkdir()
    for name, t in zip(("dense", "values", "lengths"), serving_inputs(batch.dense_features, batch.sparse_features)):
        np.save(inputs / f"{name}.npy", t.numpy())
    proc = subprocess.run([sys.executable, "-c", _SERVE_WITHOUT_PACKAGE, str(tmp / "serve.pt2"), str(inputs),
                           str(tmp / "served.npy")], cwd=tmp, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = _predict(capsys, tmp / "serve.pt", trained["npy"], tmp / "serve.npy")["probs"][:300]
    np.testing.assert_allclose(np.load(tmp / "served.npy"), expected, rtol=0, atol=1e-6)


def _copy_step(trained, name: str) -> Path:
    dst = trained["tmp"] / "bad" / name / "checkpoints" / "step-16"
    shutil.copytree(trained["step"], dst)
    return dst


def _assert_refused(capsys, argv: list, *needles: str) -> None:
    out = Path(argv[argv.index("--output") + 1])
    code, _, stderr = _cli(capsys, *argv)
    assert code == 2, stderr
    for needle in needles:
        assert needle in stderr, stderr
    assert "Traceback" not in stderr
    assert not out.exists() and not list(out.parent.glob(".*partial*")), "an output was written"


def test_bad_checkpoints_are_refused_by_name(trained, capsys, tmp_path):
    out = str(tmp_path / "model.pt")
    missing = tmp_path / "nowhere" / "step-3"
    _assert_refused(capsys, ["export", str(missing), "--output", out], str(missing), "no such checkpoint folder")

    partial = _copy_step(trained, "partial")
    (partial / "meta.json").unlink()
    _assert_refused(capsys, ["export", str(partial), "--output", out], str(partial), "no meta.json")
    killed = _copy_step(trained, "killed")  # killed inside dcp.save: rank files, no .metadata yet
    (killed / "meta.json").unlink()
    (killed / ".metadata").unlink()
    _assert_refused(capsys, ["export", str(killed), "--output", out], str(killed), "incomplete checkpoint")

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "weights.bin").write_bytes(b"\0" * 64)
    _assert_refused(capsys, ["export", str(foreign), "--output", out], str(foreign), "not a torch.distributed.checkpoint")

    import torch.distributed.checkpoint as dcp

    other = tmp_path / "other-dcp"
    dcp.save({"model": {"encoder.weight": torch.zeros(4, 4)}}, checkpoint_id=other, no_dist=True)
    (other / "meta.json").write_text(json.dumps({"step": 1}))
    _assert_refused(capsys, ["export", str(other), "--output", out], str(other), "not a dlrm-dist checkpoint")


def test_a_config_that_does_not_match_is_refused(trained, capsys, tmp_path):
    out = str(tmp_path / "model.pt")
    for name, change, needle in (("rows", {"num_embeddings": 200}, "is [100, 16] there but [200, 16]"),
                                 ("dcn", {"interaction": "dcn"}, "the config does not match the checkpoint")):
        step = _copy_step(trained, name)
        cfg = yaml.safe_load((step / "config.yaml").read_text())
        cfg["model"].update(change)
        changed = tmp_path / f"{name}.yaml"  # an edited config.yaml beside it would be refused as changed
        changed.write_text(yaml.safe_dump(cfg))
        _assert_refused(capsys, ["export", str(step), "--output", out, "--config", str(changed)], str(step), needle)
    step = _copy_step(trained, "edited")
    (step / "config.yaml").write_text((step / "config.yaml").read_text().replace("num_embeddings: 100", "num_embeddings: 200"))
    _assert_refused(capsys, ["export", str(step), "--output", out], f"checkpoint {step} is damaged: config.yaml has checksum")


def test_old_checkpoint_takes_the_run_config_and_a_run_folder_its_latest(trained, capsys, tmp_path):
    step = _copy_step(trained, "old")
    shutil.move(step / "config.yaml", step.parent.parent / "config.yaml")  # as saved before step-N/config.yaml
    meta = json.loads((step / "meta.json").read_text())
    del meta["files"]  # and before meta.json listed the files: not verified (a warning says so)
    (step / "meta.json").write_text(json.dumps(meta))
    (step.parent / "latest").write_text("step-16\n")
    code, stdout, stderr = _cli(capsys, "export", str(step.parent.parent), "--output", str(tmp_path / "m.pt"))
    assert code == 0, stderr
    assert str(step) in stdout
    (step.parent.parent / "config.yaml").unlink()
    _assert_refused(capsys, ["export", str(step), "--output", str(tmp_path / "n.pt")], str(step), "--config")


def test_bad_model_files_and_data_folders_are_refused_by_name(trained, capsys, tmp_path):
    model = tmp_path / "model.pt"
    assert _cli(capsys, "export", str(trained["step"]), "--output", str(model))[0] == 0
    out = tmp_path / "preds.npy"
    not_ours = tmp_path / "not_ours.pt"
    torch.save({"state_dict": {}}, not_ours)
    for bad, needle in ((tmp_path / "none.pt", "no such model file"), (not_ours, "not a model file")):
        _assert_refused(capsys, ["predict", "--model", str(bad), "--data", str(trained["npy"]), "--output", str(out)],
                        str(bad), needle)
    data = tmp_path / "npy"
    shutil.copytree(trained["npy"], data)
    np.save(data / "day_2_dense.npy", np.zeros((ROWS_PER_DAY, 12), dtype=np.float32))
    _assert_refused(capsys, ["predict", "--model", str(model), "--data", str(data), "--output", str(out)],
                    str(data), "expected (N, 13)")
    _assert_refused(capsys, ["predict", "--model", str(model), "--data", str(tmp_path / "nodata"),
                             "--output", str(out)], str(tmp_path / "nodata"), "no such folder")


def test_dcn_model_from_one_rank_exports_and_predicts_its_val_auc(trained, capsys, tmp_path):
    """DLRM-DCNv2, saved by a single process (world size 1, planner's own plan):
    predict on its validation split gives the run's val_auc."""
    run_dir = tmp_path / "dcn"
    proc = run_cmd([sys.executable, "-m", "dlrm_dist.train", "--config", str(trained["step"] / "config.yaml"),
                    "--run-dir", str(run_dir), "model.interaction=dcn", "model.dcn_num_layers=2",
                    "model.dcn_low_rank_dim=8", "train.max_steps=8", "sharding.tables={}"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    code, stdout, stderr = _cli(capsys, "export", str(run_dir), "--output", str(tmp_path / "dcn.pt"))
    assert code == 0, stderr
    ours = _predict(capsys, tmp_path / "dcn.pt", trained["npy"], tmp_path / "dcn.npy")
    assert ours["rows"] == summary["val_rows"]  # 2048 rows: 8 whole batches on one rank
    assert abs(ours["auc"] - summary["val_auc"]) < 1e-4, (ours, summary)
    assert abs(ours["logloss"] - summary["val_logloss"]) < 1e-4


# ------------------------------------------------------- damage and files that would run code


def _flip_middle(path: Path, n: int = 65536) -> None:
    data = bytearray(path.read_bytes())
    lo = max(0, len(data) // 2 - n // 2)
    data[lo:lo + n] = bytes(b ^ 0xFF for b in data[lo:lo + n])
    path.write_bytes(bytes(data))


def test_damaged_checkpoints_are_refused_on_export(trained, capsys, tmp_path):
    """Flipped bytes in a table's shard, a shard cut to half, a missing shard: export
    stops before reading a tensor, naming the checkpoint, the file and the fault. A
    missing rank-1.json does not stop it: export never reads the LR state."""
    out = str(tmp_path / "model.pt")
    (shard,) = (p.name for p in trained["step"].glob("__1_*.distcp"))
    flipped = _copy_step(trained, "flipped")
    _flip_middle(flipped / shard)
    _assert_refused(capsys, ["export", str(flipped), "--output", out], f"checkpoint {flipped} is damaged: {shard} "
                    "has checksum", "its bytes changed after the save")
    cut = _copy_step(trained, "cut")
    size = (cut / shard).stat().st_size
    (cut / shard).write_bytes((cut / shard).read_bytes()[:size // 2])
    _assert_refused(capsys, ["export", str(cut), "--output", out],
                    f"checkpoint {cut} is damaged: {shard} is {size // 2} bytes, meta.json recorded {size} (truncated)")
    gone = _copy_step(trained, "gone")
    (gone / shard).unlink()
    _assert_refused(capsys, ["export", str(gone), "--output", out], f"checkpoint {gone} is damaged: {shard} is missing")
    no_rank_state = _copy_step(trained, "no-rank-state")
    (no_rank_state / "rank-1.json").unlink()
    assert _cli(capsys, "export", str(no_rank_state), "--output", out)[0] == 0


class _RunsACommand:
    """A pickle whose loading runs ``touch MARKER``: what a crafted file can do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def _refused_in_a_subprocess(argv: list, marker: Path, *needles: str) -> None:
    """``dlrm-dist ...`` as a user runs it: exit 2, one stderr line, the command never ran."""
    proc = run_cmd([sys.executable, "-m", "dlrm_dist.cli", *argv], timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not marker.exists(), "the file's pickle ran a command"


def test_predict_refuses_a_model_file_that_would_run_code(trained, tmp_path):
    """A file with our format marker whose state_dict pickle runs a command, and a
    file of the old format (the module pickled whole): both refused, unloaded."""
    from dlrm_dist.serving.program import FORMAT, VERSION

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "version": VERSION, "dtype": "fp32", "config": "", "source": {},
                "state_dict": _RunsACommand(marker)}, evil)
    args = ["--data", str(trained["npy"]), "--output", str(tmp_path / "p.npy")]
    _refused_in_a_subprocess(["predict", "--model", str(evil), *args], marker, f"{evil}: refused", "posix.system",
                             "could run code")
    old = tmp_path / "v1.pt"  # what dlrm-dist export wrote before: the module pickled whole
    torch.save({"format": FORMAT, "version": 1, "model": torch.nn.Linear(2, 1)}, old)
    _refused_in_a_subprocess(["predict", "--model", str(old), *args], marker, f"{old}: refused",
                             "torch.nn.modules.linear.Linear", "export it again")
    assert not (tmp_path / "p.npy").exists()


def test_export_refuses_checkpoint_metadata_that_would_run_code(trained, tmp_path):
    """DCP's .metadata is a pickle: one crafted to run a command, with meta.json's
    checksum updated to match (whoever writes a checkpoint can write both), is refused
    by name and never runs."""
    import pickle

    from dlrm_dist.training.integrity import HASH, file_digest

    marker = tmp_path / "pwned"
    step = _copy_step(trained, "crafted")
    (step / ".metadata").write_bytes(pickle.dumps(_RunsACommand(marker)))
    meta = json.loads((step / "meta.json").read_text())
    meta["files"][".metadata"] = {"bytes": (step / ".metadata").stat().st_size, HASH: file_digest(step / ".metadata")}
    (step / "meta.json").write_text(json.dumps(meta))
    _refused_in_a_subprocess(["export", str(step), "--output", str(tmp_path / "m.pt")], marker,
                             f"{step / '.metadata'}: refused posix.system", "could run code")


def test_predict_refuses_a_model_file_with_flipped_bytes(trained, capsys, tmp_path):
    """torch.load never checks the zip's CRCs: bytes flipped inside a tensor's data
    load silently. The checksums export records catch them, naming the tensor."""
    import zipfile

    model = tmp_path / "model.pt"
    assert _cli(capsys, "export", str(trained["step"]), "--output", str(model))[0] == 0
    with zipfile.ZipFile(model) as z:
        entry = max(z.infolist(), key=lambda i: i.file_size)  # the largest tensor storage
    with open(model, "r+b") as f:  # its data starts after the local header, name and extra field
        f.seek(entry.header_offset + 26)
        name_len, extra_len = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
        middle = entry.header_offset + 30 + name_len + extra_len + entry.file_size // 2
        f.seek(middle)
        chunk = f.read(64)
        f.seek(middle)
        f.write(bytes(b ^ 0xFF for b in chunk))
    _assert_refused(capsys, ["predict", "--model", str(model), "--data", str(trained["npy"]),
                             "--output", str(tmp_path / "p.npy")], str(model), "does not match the checksum")
