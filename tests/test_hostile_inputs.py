"""Issue 26: inputs crafted or careless enough to take the machine down or lose data must
end in a per-file reason or a one-line refusal, never an allocation without bound."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from hiergeo.data.gpu_jpeg import jpeg_for_gpu
from hiergeo.data.images import MAX_ASPECT, ImageRows, load_image, probe_image
from hiergeo.model.backbones import Preprocess


def _timm_like() -> Preprocess:
    """The shape of timm's eval transform (resize the short side, centre crop, normalise)."""
    return Preprocess(T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BICUBIC),
                                 T.CenterCrop(224), T.ToTensor(),
                                 T.Normalize([0.5] * 3, [0.5] * 3)]), min_side=256)


def test_a_strip_of_pixels_is_cropped_before_any_resize(tmp_path):
    # 274 bytes on disk; before, the resize aimed at 51M x 256 pixels and the kernel killed
    # the process. The loader hands over at most MAX_ASPECT:1, so the transform is cheap
    strip = tmp_path / "strip.png"
    Image.new("RGB", (200_000, 1), (10, 200, 30)).save(strip)
    tall = tmp_path / "tall.png"
    Image.new("L", (1, 50_000), 99).save(tall)
    for path, size in ((strip, (MAX_ASPECT, 1)), (tall, (1, MAX_ASPECT))):
        res = load_image(path, min_side=256)
        assert res.ok and res.image.size == size
        assert "centre-cropped to 4:1" in res.note
        x = _timm_like()(res.image)
        assert x.shape == (3, 224, 224)
    # the same for an image handed over in memory
    res = load_image(Image.new("RGB", (30_000, 7)))
    assert res.image.size == (7 * MAX_ASPECT, 7)
    # and the GPU path leaves such a JPEG to the CPU path, which crops it
    wide_jpeg = tmp_path / "wide.jpg"
    Image.new("RGB", (4000, 200), (1, 2, 3)).save(wide_jpeg)
    assert jpeg_for_gpu(wide_jpeg) is None
    square = tmp_path / "square.jpg"
    Image.new("RGB", (400, 300), (1, 2, 3)).save(square)
    assert jpeg_for_gpu(square) is not None


def test_cropping_a_panorama_leaves_what_the_backbone_sees(tmp_path):
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (20, 130, 3), dtype=np.uint8)
    pano = Image.fromarray(small).resize((1300, 200), Image.BILINEAR)  # 6.5:1
    path = tmp_path / "pano.png"
    pano.save(path)
    res = load_image(path)
    assert res.image.size == (800, 200)
    prep = _timm_like()
    cropped, full = prep(res.image), prep(pano)
    assert (cropped - full).abs().max().item() < 2 / 255 / 0.5 + 1e-6  # 1 grey level either way
    # images within the bound are untouched
    ok = Image.fromarray(small).resize((800, 200))
    assert load_image(ok).image.size == (800, 200) and load_image(ok).note is None


@pytest.mark.parametrize("side", [40, 100])  # past MAX_IMAGE_PIXELS (a warning), past twice it
def test_a_decompression_bomb_is_a_reason_not_a_crash(tmp_path, monkeypatch, side):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    bomb = tmp_path / "bomb.png"
    Image.new("RGB", (side, side)).save(bomb)
    res = load_image(bomb)
    assert not res.ok and "decompression bomb" in res.reason
    assert "decompression bomb" in probe_image(bomb)
    jpeg_bomb = tmp_path / "bomb.jpg"  # a JPEG the GPU path would otherwise take
    Image.new("RGB", (side, side)).save(jpeg_bomb)
    assert jpeg_for_gpu(jpeg_bomb) is None and "decompression bomb" in load_image(
        jpeg_bomb).reason
    # a batch keeps going past it
    good = tmp_path / "good.png"
    Image.new("RGB", (20, 20)).save(good)
    rows = ImageRows([str(bomb), str(good)], lambda im: torch.zeros(3, 2, 2))
    assert rows[0][0] is None and "decompression bomb" in rows[0][2]
    assert rows[1][0] is not None


def _predict(argv, capsys):
    from hiergeo.cli.predict import main

    rc = main(argv)
    return rc, capsys.readouterr().err


def test_predict_never_writes_over_its_inputs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    table = tmp_path / "t.csv"
    table.write_text("path,latitude,longitude\nv.jpg,1,2\n")
    photo = tmp_path / "v.jpg"
    Image.new("RGB", (64, 48)).save(photo)
    before = table.read_bytes(), photo.read_bytes()
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.csv").symlink_to(table)
    missing = str(tmp_path / "no-model")  # refused before the model is even looked at
    for argv in (["t.csv", "--out", "t.csv"],
                 ["t.csv", "--out", "sub/../t.csv"],
                 ["link.csv", "--out", "t.csv"],
                 ["t.csv", "v.jpg", "--out", "p.csv", "--map", "v.jpg"],
                 ["t.csv", "--out", "p.csv", "--out", str(table)]):
        rc, err = _predict(["--model", missing, *argv], capsys)
        assert rc == 2, argv
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert "also an input" in err or "HTML page" in err, err
    assert (table.read_bytes(), photo.read_bytes()) == before
    # an output inside a feature store read as input would corrupt it
    store = tmp_path / "store"
    store.mkdir()
    (store / "store.json").write_text("{}")
    rc, err = _predict(["--model", missing, str(store), "--out", "store/p.csv"], capsys)
    assert rc == 2 and "inside" in err and "store" in err
    # nor inside the model folder, nor over the --within polygon it reads
    model = tmp_path / "model"
    model.mkdir()
    rc, err = _predict(["--model", str(model), "t.csv", "--out", "model/p.csv"], capsys)
    assert rc == 2 and "inside" in err and "model" in err
    (tmp_path / "r.geojson").write_text("{}")
    rc, err = _predict(["--model", missing, "t.csv", "--within", "r.geojson", "--out",
                        "r.geojson"], capsys)
    assert rc == 2 and "also an input" in err
    # writing beside the photos, inside their folder, is fine: the model is what fails here
    rc, err = _predict(["--model", missing, str(tmp_path), "--out", "p.csv"], capsys)
    assert "also an input" not in err and "inside" not in err


def test_clobbered_input_names_the_clash(tmp_path):
    from hiergeo.files import clobbered_input

    a = tmp_path / "a.csv"
    a.write_text("x")
    assert clobbered_input([tmp_path / "b.csv"], [a]) is None
    assert "also an input" in clobbered_input([tmp_path / "." / "a.csv"], [a])
    assert clobbered_input([tmp_path / "b.csv"], [tmp_path]) is None  # a folder of photos
    assert "inside" in clobbered_input([tmp_path / "s" / "x"], [], [tmp_path / "s"])


def test_overwrite_removes_only_what_a_run_writes(tmp_path):
    from types import SimpleNamespace

    from hiergeo.train import load_config
    from hiergeo.train.run_folder import RUN_FILES, prepare_dir

    procs = SimpleNamespace(main=True, barrier=lambda: None)
    d = tmp_path / "runs" / "r"
    (d / "tensorboard").mkdir(parents=True)
    (d / "tensorboard" / "events").write_text("x")
    for name in RUN_FILES:
        (d / name).write_text("old")
    (d / "checkpoint.pt.tmp123").write_text("half")
    (d / "NOTES.txt").write_text("mine")
    (d / "store").mkdir()
    (d / "store" / "store.json").write_text("{}")
    # an input inside the folder: refused, nothing removed
    cfg = load_config("smoke", [f"run.out={tmp_path / 'runs'}", "run.id=r",
                                f"data.train={d / 'store'}", "run.overwrite=true"])
    with pytest.raises(FileExistsError, match="holds this run's input"):
        prepare_dir(cfg, d, False, procs)
    assert all((d / n).exists() for n in RUN_FILES)
    # otherwise: the run's files go, the rest stays
    cfg = load_config("smoke", [f"run.out={tmp_path / 'runs'}", "run.id=r",
                                "run.overwrite=true"])
    prepare_dir(cfg, d, False, procs)
    assert sorted(p.name for p in d.iterdir()) == ["NOTES.txt", "store"]
    assert (d / "store" / "store.json").exists() and (d / "NOTES.txt").read_text() == "mine"
    # without overwrite a finished run is refused, as before
    (d / "metrics.json").write_text("{}")
    cfg = load_config("smoke", [f"run.out={tmp_path / 'runs'}", "run.id=r"])
    with pytest.raises(FileExistsError, match="already holds a run"):
        prepare_dir(cfg, d, False, procs)


def test_a_failed_export_keeps_the_previous_model(smoke_run, tmp_path, monkeypatch):
    import errno

    from hiergeo import export

    run, _ = smoke_run
    p = export.from_run(run)
    out = export.write(p, tmp_path / "m")
    digest = export.sums_digest(out)
    before = {f.name: f.read_bytes() for f in out.iterdir()}

    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    # the disk fills while the new weights are written: the old model stays whole
    monkeypatch.setattr(export.pd.DataFrame, "to_parquet", full_disk)
    with pytest.raises(export.DiskFullError, match="disk full.*previous model in it is "
                                                   "unchanged"):
        export.write(p, out, overwrite=True)
    monkeypatch.undo()
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    assert export.sums_digest(out) == digest
    export.read(out)  # loads, every file checked
    assert [e.name for e in tmp_path.iterdir()] == ["m"]  # no temporary folder left

    # safetensors' own writer reports a full disk in its text, not as an OSError
    def rust_full(*a, **k):
        raise RuntimeError("Error while serializing: IoError(Os { code: 28, kind: "
                           "StorageFull, message: \"No space left on device\" })")

    monkeypatch.setattr("safetensors.torch.save_file", rust_full)
    with pytest.raises(export.DiskFullError, match="previous model in it is unchanged"):
        export.write(p, out, overwrite=True)
    monkeypatch.undo()
    assert export.sums_digest(out) == digest

    # a kill mid-export leaves a temporary folder: the next export removes it; a kill
    # between the swap's renames leaves the model aside: the next export restores it
    dead = tmp_path / f".m.{export._host()}-999999999-abcd.export"
    dead.mkdir()
    (dead / "weights.safetensors").write_bytes(b"half")
    elsewhere = tmp_path / ".m.otherhost-999999999-abcd.export"  # not ours to judge
    elsewhere.mkdir()
    export.write(p, out, overwrite=True)
    assert not dead.exists() and elsewhere.exists() and export.sums_digest(out) == digest
    elsewhere.rmdir()
    aside = tmp_path / f".m.{export._host()}-999999999-abcd.replaced"
    out.rename(aside)
    export.write(p, out, overwrite=True)
    assert not aside.exists() and export.sums_digest(out) == digest

    # --out a link to a model folder: the folder is replaced, the link kept
    link = tmp_path / "current"
    link.symlink_to(out)
    export.write(p, link, overwrite=True)
    assert link.is_symlink() and export.sums_digest(link) == digest
    link.unlink()

    # --overwrite replaces a model folder, never a folder that holds other things
    (out / "NOTES.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a model's.*NOTES.txt"):
        export.write(p, out, overwrite=True)
    assert (out / "NOTES.txt").read_text() == "mine"


def test_two_trainings_never_share_a_run_folder(tmp_path, hold_lock, capsys):
    from hiergeo.cli.train import main
    from hiergeo.files import Busy, exclusive
    from hiergeo.train.run_folder import LOCK

    d = tmp_path / "runs" / "r"
    d.mkdir(parents=True)
    holder = hold_lock(d / LOCK)  # a training running in that folder
    rc = main(["--config", "smoke", f"run.out={tmp_path / 'runs'}", "run.id=r"])
    err = capsys.readouterr().err
    assert rc != 0 and f"pid {holder.pid}" in err and "in use by another process" in err
    assert err.count("\n") == 1, err
    assert sorted(p.name for p in d.iterdir()) == [LOCK]  # nothing written, nothing removed
    holder.kill()  # killed: the kernel drops its lock, no stale lock to clean by hand
    holder.wait()
    with exclusive(d / LOCK, "the run folder"):
        with pytest.raises(Busy, match=f"pid {__import__('os').getpid()}"):
            with exclusive(d / LOCK, "the run folder"):
                pass


@pytest.fixture(scope="module")
def exported(smoke_run, tmp_path_factory):
    from hiergeo import export

    return export.write(export.from_run(smoke_run[0]),
                        tmp_path_factory.mktemp("exported") / "model")


def _copy_model(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def _resum(folder):
    """Rewrite SHA256SUMS after a deliberate edit, as an attacker would."""
    from gazetteer.sources import file_sha256

    names = [n.split("  ", 1)[1] for n in (folder / "SHA256SUMS").read_text().splitlines()]
    (folder / "SHA256SUMS").write_text("".join(f"{file_sha256(folder / n)}  {n}\n"
                                               for n in names))


def _read_in_child(folder, timeout=120, **kw):
    """export.read in another process, so that a hang fails the test instead of stalling
    the suite; returns (exit code, stderr)."""
    import subprocess
    import sys

    code = ("import sys\nfrom hiergeo import export\n"
            f"export.read(sys.argv[1], **{kw!r})\n")
    p = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True,
                       text=True, timeout=timeout)
    return p.returncode, p.stderr


def test_a_crafted_sums_file_neither_hangs_nor_leaks(exported, tmp_path):
    import os

    from hiergeo import export

    for target, kind in (("/dev/zero", "symbolic link"), ("/etc/passwd", "symbolic link")):
        m = _copy_model(exported, tmp_path / f"m{len(kind)}{target[-4:]}")
        (m / "SHA256SUMS").unlink()
        (m / "SHA256SUMS").symlink_to(target)
        for kw in ({}, {"expect_sha256": "0" * 64}, {"check": False, "expect_sha256": "0" * 64}):
            with pytest.raises(export.ModelFolderError, match=kind) as err:
                export.read(m, **kw)
            assert "root:" not in str(err.value)
    fifo = _copy_model(exported, tmp_path / "fifo")
    (fifo / "SHA256SUMS").unlink()
    os.mkfifo(fifo / "SHA256SUMS")
    rc, err = _read_in_child(fifo)  # before: blocked for ever opening the FIFO
    assert rc != 0 and "not a regular file" in err
    big = _copy_model(exported, tmp_path / "big")
    with open(big / "SHA256SUMS", "ab") as fh:
        fh.truncate(export.TEXT_LIMIT + 1)
    with pytest.raises(export.ModelFolderError, match="more than this file can hold"):
        export.read(big)


@pytest.mark.parametrize("section,key,value,field", [
    ("model", "layers", 20_000, "model.layers"),
    ("model", "in_dim", 10**9, "model.in_dim"),
    ("model", "hidden", 2048, "does not fit weights.safetensors"),
    ("model", "geometry", "klein", "model.geometry"),
    ("predict", "topk", 10**9, "predict.topk"),
    ("predict", "beams", [1, 1, 1, 10**9], "predict.beams"),
    ("predict", "tau", [0.25, 0.25, float("nan"), 0.25], "predict.tau"),
])
def test_model_json_is_checked_before_anything_is_built(exported, tmp_path, section, key,
                                                        value, field):
    import json
    import time

    from hiergeo import export

    m = _copy_model(exported, tmp_path / "m")
    meta = json.loads((m / "model.json").read_text())
    meta[section][key] = value
    (m / "model.json").write_text(json.dumps(meta))
    _resum(m)
    for check in (True, False):
        t = time.perf_counter()
        with pytest.raises(export.ModelFolderError, match=field.replace(".", r"\.")) as err:
            export.read(m, check=check)
        assert "model.json" in str(err.value)
        assert time.perf_counter() - t < 30  # before: layers=20000 took 54 s and 6 GB


def test_a_memory_with_nan_rows_is_refused(exported, tmp_path):
    from safetensors.torch import load_file, save_file

    from hiergeo import export

    m = _copy_model(exported, tmp_path / "m")
    mem = load_file(str(m / "memory.safetensors"))
    mem["features"][3] = float("nan")
    save_file(mem, str(m / "memory.safetensors"))
    _resum(m)
    with pytest.raises(export.ModelFolderError, match="row 3 is not finite"):
        export.read(m)
    export.read(m, memory=False)  # the model alone does not read it


def test_topk_is_capped_and_checked(exported):
    from hiergeo.geolocate import Geolocator

    g = Geolocator.load(exported, memory=False)
    assert g.topk(10**8) == len(g.entities)
    assert g.topk() == g.settings["topk"]
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="topk must be a whole number"):
            g.topk(bad)


@pytest.mark.parametrize("option,value", [("--topk", "0"), ("--topk", "-3"),
                                          ("--threads", "-1"), ("--batch-size", "0"),
                                          ("--part-size", "x"), ("--workers", "-2")])
def test_predict_options_are_checked_before_the_model_loads(option, value, capsys):
    from hiergeo.cli.predict import main

    with pytest.raises(SystemExit) as stop:
        main(["--model", "no-such-model", "p.jpg", option, value])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: expected a whole number" in err and "no-such-model" not in err


def test_a_float_image_is_read_as_its_values_or_refused(tmp_path):
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (48, 1))
    unit = tmp_path / "unit.tif"
    Image.fromarray(ramp, mode="F").save(unit)
    res = load_image(unit)
    assert res.ok
    grey = np.asarray(res.image)[..., 0]
    assert grey.max() == 255 and abs(int(grey[0, 32]) - round(255 * 32 / 63)) <= 1  # not black
    wide = tmp_path / "wide.tif"
    Image.fromarray(ramp * 1000, mode="F").save(wide)
    res = load_image(wide)
    assert not res.ok and "floating-point pixels" in res.reason
    assert "floating-point" in load_image(Image.fromarray(ramp * -5, mode="F")).reason
    holes = ramp.copy()
    holes[20:30] = np.nan  # not the first pixel: PIL's getextrema() would skip them
    res = load_image(Image.fromarray(holes, mode="F"))
    assert not res.ok and "not numbers" in res.reason


def test_a_bad_position_in_a_table_drops_the_whole_truth_and_says_so(tmp_path, caplog):
    from hiergeo.data.photos import collect_photos

    table = tmp_path / "t.csv"
    table.write_text("path,latitude,longitude\na.jpg,91,20\nb.jpg,forty,20\nc.jpg,10,181\n"
                     "d.jpg,10,20\ne.jpg,,\nf.jpg,,5\n")
    with caplog.at_level("WARNING"):
        rows = collect_photos([table], gps=False)
    lat, lon = rows["latitude"].to_numpy(), rows["longitude"].to_numpy()
    assert np.isnan(lat).tolist() == np.isnan(lon).tolist()  # never half a position
    assert rows["truth_source"].tolist() == ["", "", "", "table", "", ""]
    assert "4 rows whose latitude, longitude is not a position" in caplog.text
    assert "row 2: 91, 20" in caplog.text


class _FullDisk:
    """``open`` for a module whose files fill the disk after ``room`` bytes."""

    def __init__(self, room: int):
        self.room = room

    def __call__(self, path, mode="r", *a, **k):
        import errno
        import io

        disk = self

        class Full(io.FileIO):
            def write(self, b):
                disk.room -= len(b)
                if disk.room < 0:
                    raise OSError(errno.ENOSPC, "No space left on device")
                return super().write(b)

        return Full(path, mode.replace("b", "") + "b") if "w" in mode else open(path, mode,
                                                                                 *a, **k)


def test_a_full_disk_mid_checkpoint_says_so_and_leaves_no_temporaries(tmp_path, monkeypatch,
                                                                      capsys):
    from hiergeo.cli.train import main
    from hiergeo.files import DiskFullError
    from hiergeo.model import checkpoint
    from hiergeo.train.run_folder import run_lock

    path = tmp_path / checkpoint.NAME
    checkpoint.save(path, {"step": 1, "x": torch.zeros(10)})
    before = path.read_bytes()
    monkeypatch.setattr(checkpoint, "open", _FullDisk(1000), raising=False)
    with pytest.raises(DiskFullError, match="disk full while writing .* previous checkpoint "
                                            "is kept; free space, then continue with "
                                            "--resume"):
        checkpoint.save(path, {"step": 2, "x": torch.zeros(100_000)})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [path.name]

    # the command: one line, exit 2 (before: RuntimeError basic_ios::clear, a traceback)
    rc = main(["--config", "smoke", f"run.out={tmp_path / 'runs'}", "run.id=r",
               "optim.max_steps=3"])
    last = capsys.readouterr().err.rstrip("\n").split("\n")[-1]  # after the progress bar
    assert rc == 2 and last.startswith("error: disk full while writing"), last
    assert not list((tmp_path / "runs" / "r").glob("*.tmp*"))
    monkeypatch.undo()

    # temporaries a kill left behind are removed when the next run takes the folder
    d = tmp_path / "runs" / "k"
    d.mkdir(parents=True)
    (d / "checkpoint.pt.tmp4242").write_bytes(b"x" * 1000)
    (d / "metrics.json.123-ab12.tmp").write_text("{")
    (d / "NOTES.txt.tmp").write_text("not ours")
    with run_lock(d, True):
        pass
    assert sorted(p.name for p in d.iterdir()) == [".lock", "NOTES.txt.tmp"]


def test_run_files_are_what_a_run_writes(smoke_run):
    """run.overwrite=true removes RUN_FILES and RUN_FOLDERS: a hand-kept list of what the
    trainer, calibration and evaluation write. A real run writes nothing else (fails when a
    new file is added to a run and not to the list, which overwrite would then leave)."""
    from hiergeo.train.run_folder import LOCK, RUN_FILES, RUN_FOLDERS

    run, _ = smoke_run
    written = {p.name for p in run.iterdir()}
    assert written - set(RUN_FILES) - set(RUN_FOLDERS) - {LOCK} == set()
    assert {"checkpoint.pt", "metrics.json", "config.yaml"} <= written


def test_memory_is_never_read_from_a_fifo_even_unchecked(exported, tmp_path):
    import os

    from hiergeo import export

    m = _copy_model(exported, tmp_path / "m")
    (m / "memory.safetensors").unlink()
    os.mkfifo(m / "memory.safetensors")
    rc, err = _read_in_child(m, check=False)  # before: blocked for ever in load_file
    assert rc != 0 and "not a regular file" in err
    assert export.read(m, check=False, memory=False).memory is None
