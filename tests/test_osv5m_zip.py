"""OSV-5M as published: ``train.csv`` plus ``images/train/NN.zip``, read without unzipping."""

from __future__ import annotations

import json
import multiprocessing
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from hiergeo.cli.features import main
from hiergeo.data import read_records
from hiergeo.data.images import load_image
from hiergeo.data.labels import dataset_keys
from hiergeo.data.store import FeatureStore
from hiergeo.data.zips import ZIP_COLUMNS, ImageSources, ZipMember, _fd, index_zips

# train.csv's columns, in the published order (the dataset's loading script, osv5m.py)
COLUMNS = ["id", "latitude", "longitude", "thumb_original_url", "country", "sequence",
           "captured_at", "lon_bin", "lat_bin", "cell", "region", "sub-region", "city",
           "land_cover", "road_index", "drive_side", "climate", "soil", "dist_sea",
           "quadtree_10_5000", "quadtree_10_25000", "quadtree_10_1000", "quadtree_10_50000",
           "quadtree_10_12500", "quadtree_10_500", "quadtree_10_2500", "unique_region",
           "unique_sub-region", "unique_city", "unique_country", "creator_username",
           "creator_id"]
PLACES = [  # country, region, sub-region, city, lat, lon
    ("NZ", "Chatham Islands", "", "Waitangi", -43.95, -176.56),
    ("NA", "Khomas", "Windhoek West", "Windhoek", -22.56, 17.07),  # Namibia: "NA"
    ("FR", "Ile-de-France", "Paris", "Paris", 48.85, 2.35),
    ("JP", "Tokyo", "", "Shinjuku", 35.69, 139.70),
    ("BR", "Sao Paulo", "Sao Paulo", "Sao Paulo", -23.55, -46.63),
    ("US", "California", "Los Angeles", "Los Angeles", 34.05, -118.24),
    ("IN", "Delhi", "New Delhi", "New Delhi", 28.61, 77.21),
    ("ZA", "Western Cape", "City of Cape Town", "Cape Town", -33.92, 18.42),
    ("CA", "Ontario", "Toronto", "Toronto", 43.65, -79.38),
]
# big integers; the last is past 2**53, where a float64 would change it
IDS = ["3859149887465501", "812791752685963", "479139073432755", "157987500156860",
       "3653351901441283", "832072764060105", "319355266252737", "148306984644239",
       "9007199254740993123"]
MISSING = "346368943791346"  # in train.csv, in no zip


def _row(i: int, pid: str, place) -> dict:
    cc, region, sub, city, lat, lon = place
    row = {c: "0" for c in COLUMNS}
    row.update({"id": pid, "latitude": lat, "longitude": lon, "thumb_original_url": "",
                "country": cc, "sequence": f"seq{i}", "captured_at": "1600000000000",
                "cell": f"({i}, 8)", "region": region, "sub-region": sub, "city": city,
                "unique_region": f"{region}_{cc}",
                "unique_sub-region": f"{sub}_{region}_{cc}" if sub else "",
                "unique_city": f"{city}_{sub or 'NaN'}_{region}_{cc}", "unique_country": cc,
                "creator_username": "someone", "creator_id": "111336221091714.0"})
    return row


def _jpeg(i: int, size=(96, 72)) -> bytes:
    import io

    rng = np.random.default_rng(i)
    base = np.linspace(0, 255, size[0], dtype=np.float32)[None, :, None]
    pix = np.clip(base + rng.normal(0, 40, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pix).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def osv(tmp_path_factory) -> Path:
    """``train.csv``, ``images/train/{00,01}.zip`` (two inner layouts) and the same photos
    unzipped in ``flat/``."""
    root = tmp_path_factory.mktemp("osv5m")
    rows = [_row(i, pid, PLACES[i % len(PLACES)]) for i, pid in enumerate(IDS)]
    rows.insert(4, _row(99, MISSING, PLACES[2]))
    pd.DataFrame(rows, columns=COLUMNS).to_csv(root / "train.csv", index=False)
    (root / "images" / "train").mkdir(parents=True)
    (root / "flat").mkdir()
    # one photo large enough for the reduced-size JPEG decode (short side >= 4 x 224)
    photos = {pid: _jpeg(i, (1200, 900) if i == 2 else (96, 72)) for i, pid in enumerate(IDS)}
    for k, (inner, ids) in enumerate([("00/{}.jpg", IDS[:5]), ("{}.jpg", IDS[5:])]):
        with zipfile.ZipFile(root / "images" / "train" / f"{k:02d}.zip", "w",
                             compression=zipfile.ZIP_DEFLATED if k else zipfile.ZIP_STORED) as z:
            z.writestr("README.txt", "not a photo")
            for pid in ids:
                z.writestr(inner.format(pid), photos[pid])
    for pid, data in photos.items():
        (root / "flat" / f"{pid}.jpg").write_bytes(data)
    return root


def _args(root: Path, images: Path, out: Path, workers: int, *extra: str) -> list[str]:
    return ["--data", str(root / "train.csv"), "--image-dir", str(images), "--layout", "osv5m",
            "--out", str(out), "--workers", str(workers), "--device", "cpu",
            "--batch-size", "4", "--shard-size", "4", *extra]


def _errors(capsys) -> list[str]:
    """The ``error:`` lines on stderr (the zips' progress bar writes there too); each test
    asks for exactly one, the last line."""
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert errors and lines[-1] == errors[-1]
    return errors


@pytest.fixture(scope="module")
def flat_store(osv, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("flat") / "store"
    assert main(_args(osv, osv / "flat", out, 0)) == 0
    return out


def test_the_table_reads_ids_as_strings_and_finds_each_member(osv):
    rec = read_records(osv / "train.csv", osv / "images" / "train", "osv5m",
                       allow_missing=True)
    assert rec["id"].tolist() == IDS[:4] + [MISSING] + IDS[4:]  # not 3.8591498874655e15
    assert rec.loc[rec["id"] == IDS[1], "country"].item() == "NA"  # Namibia, not missing
    assert rec.loc[rec["id"] == IDS[1], "unique_country"].item() == "NA"
    assert "thumb_original_url" not in rec.columns and "quadtree_10_500" not in rec.columns
    # --layout auto finds the OSV-5M layout from the header alone
    pd.testing.assert_frame_equal(read_records(osv / "train.csv", osv / "images" / "train",
                                               allow_missing=True), rec)
    zips = osv / "images" / "train"
    by_id = dict(zip(rec["id"], rec["path"], strict=True))
    assert by_id[IDS[0]] == f"{zips / '00.zip'}::00/{IDS[0]}.jpg"
    assert by_id[IDS[8]] == f"{zips / '01.zip'}::{IDS[8]}.jpg"
    src = ImageSources(rec)
    missing = src[rec.index[rec["id"] == MISSING][0]]
    assert isinstance(missing, ZipMember) and missing.read()[0] is None
    assert all(isinstance(src[i], ZipMember) for i in range(len(rec)))
    # every member decodes to the pixels of its unzipped copy, the reduced decode included
    for i, pid in enumerate(rec["id"]):
        if pid == MISSING:
            continue
        for side in (None, 224):
            a = load_image(src[i], side)
            b = load_image(osv / "flat" / f"{pid}.jpg", side)
            assert a.ok and np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert load_image(src[rec.index[rec["id"] == IDS[2]][0]], 224).image.size[0] == 600


def test_the_index_is_arrays(osv):
    idx = index_zips(osv / "images" / "train")
    assert len(idx) == len(IDS)  # README.txt is no photo
    assert idx.stem.dtype.kind == "S" and idx.offset.dtype == np.int64
    assert list(idx.stem) == sorted(idx.stem)


@pytest.mark.parametrize("workers", [0, 2])
def test_zips_give_the_features_of_the_unzipped_photos(osv, flat_store, tmp_path, workers):
    out = tmp_path / "store"
    # the fixture's one id in no zip is 1 row in 10, past MAX_MISSING_SHARE
    assert main(_args(osv, osv / "images" / "train", out, workers, "--allow-missing")) == 0
    z, f = FeatureStore(out), FeatureStore(flat_store)
    pd.testing.assert_frame_equal(z.index, f.index)
    torch.testing.assert_close(z.features(torch.float32), f.features(torch.float32),
                               rtol=2e-3, atol=2e-3)
    assert len(z) == len(IDS)
    skipped = pd.read_csv(out / "skipped.csv", dtype=str, keep_default_na=False)
    assert skipped["id"].tolist() == [MISSING]
    assert skipped["reason"].item() == f"not in any zip of {osv / 'images' / 'train'} (nor a " \
                                       "file there)"
    # the published labels are in the store, Namibia's "NA" included, and name the keys
    assert not set(ZIP_COLUMNS) & set(z.index.columns)
    na = z.index[z.index["id"] == IDS[1]]
    assert na["country"].item() == "NA" and na["unique_region"].item() == "Khomas_NA"
    keys = dataset_keys(z.index)
    assert keys.loc[na.index[0], "country"] == "NA"
    assert keys.loc[na.index[0], "region"] == "Khomas_NA"


def _read_in_child(member: ZipMember):
    data, _ = member.read()
    return len(data), _fd(member.zip), os.getpid()


def test_a_forked_worker_opens_its_own_descriptor(osv):
    rec = read_records(osv / "train.csv", osv / "images" / "train", "osv5m",
                       allow_missing=True)
    m = ImageSources(rec)[0]
    assert m.read()[0] is not None
    parent_fd = _fd(m.zip)
    with multiprocessing.get_context("fork").Pool(1) as pool:
        n, child_fd, pid = pool.apply(_read_in_child, (m,))
    assert pid != os.getpid() and n == m.size and child_fd != parent_fd


def test_a_damaged_member_is_skipped_with_its_reason(osv, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for p in (osv / "images" / "train").glob("*.zip"):
        (images / p.name).write_bytes(p.read_bytes())
    rec = read_records(osv / "train.csv", images, "osv5m", allow_missing=True)
    src = ImageSources(rec)
    m = src[0]  # a stored member of 00.zip: flip bytes in the middle of its data
    raw = bytearray((images / "00.zip").read_bytes())
    at = m.offset + 30 + len(m.member.encode()) + m.csize // 2
    raw[at:at + 8] = bytes(8)
    (images / "00.zip").write_bytes(bytes(raw))
    res = load_image(src[0])
    assert res.image is None and res.reason == "corrupt zip member (CRC or size mismatch)"
    assert load_image(src[1]).ok
    # a directory claiming a huge member is not believed
    import dataclasses

    huge = dataclasses.replace(src[1], size=2**40)
    assert "refused" in load_image(huge).reason


def test_a_truncated_zip_stops_before_anything_is_written(osv, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for p in (osv / "images" / "train").glob("*.zip"):
        data = p.read_bytes()
        (images / p.name).write_bytes(data[:len(data) // 2] if p.name == "01.zip" else data)
    out = tmp_path / "store"
    assert main(_args(osv, images, out, 0)) == 2
    err = capsys.readouterr().err
    assert f"{images / '01.zip'}: not a readable zip" in err and "docs/osv5m.md" in err
    assert "move it" not in err  # no longer steered into a store a rerun cannot complete
    assert not out.exists()
    # moved away, half the ids are in no zip: refused before anything is written
    (images / "01.zip").rename(tmp_path / "01.zip.part")
    assert main(_args(osv, images, out, 0)) == 2
    err = _errors(capsys)
    assert len(err) == 1 and err[0].startswith(f"error: {images}: 1 zip(s) with 5 photos; ")
    assert "5 of the 10 ids" in err[0] and "--allow-missing" in err[0]
    assert not out.exists()
    # --allow-missing: its photos are skipped as missing and the rest is extracted
    assert main(_args(osv, images, out, 0, "--allow-missing")) == 0
    skipped = pd.read_csv(out / "skipped.csv", dtype=str)
    assert sorted(skipped["id"]) == sorted([MISSING, *IDS[5:]])
    # the zip back (whole), the same command again: the store's finished shards hold the
    # skips, so the rerun is refused rather than reporting success with them kept
    (images / "01.zip").write_bytes((osv / "images" / "train" / "01.zip").read_bytes())
    capsys.readouterr()
    assert main(_args(osv, images, out, 0, "--allow-missing")) == 2
    err = _errors(capsys)
    assert len(err) == 1 and "extracted from other photos (01.zip added" in err[0]
    assert "another --out" in err[0]
    # a zip re-downloaded to another size is another source too
    (images / "01.zip").unlink()
    (images / "00.zip").write_bytes((images / "00.zip").read_bytes() + b"\0")
    assert main(_args(osv, images, out, 0, "--allow-missing")) == 2
    assert "00.zip " in capsys.readouterr().err


def test_a_rerun_from_another_image_folder_is_refused(osv, flat_store, tmp_path, capsys):
    """A store extracted from one folder, the same command with another --image-dir: its
    finished shards would be kept (and reported done), so the rerun is refused."""
    import shutil

    out = tmp_path / "store"
    shutil.copytree(flat_store, out)
    before = sorted(p.name for p in out.rglob("*"))
    assert main(_args(osv, osv / "images" / "train", out, 0, "--allow-missing")) == 2
    err = _errors(capsys)
    assert len(err) == 1 and err[0].startswith(f"error: {out} was extracted from other photos")
    assert f"image folder {(osv / 'flat').resolve()} -> {(osv / 'images' / 'train').resolve()}" \
        in err[0]
    assert sorted(p.name for p in out.rglob("*")) == before
    # the same folder spelled another way is the same source
    rel = os.path.relpath(osv / "flat")
    assert main(_args(osv, Path(rel), out, 0)) == 0


@pytest.mark.parametrize("case", ["unrelated zip", "no photos", "no folder"])
def test_a_wrong_image_folder_stops_before_anything_is_written(osv, tmp_path, capsys, case):
    wrong = tmp_path / "wrong"
    if case != "no folder":
        wrong.mkdir()
    if case == "unrelated zip":
        with zipfile.ZipFile(wrong / "00.zip", "w") as z:
            z.writestr("1.jpg", _jpeg(0))
    out = tmp_path / "store"
    assert main(_args(osv, wrong, out, 0, "--allow-missing")) == 2
    err = _errors(capsys)
    assert len(err) == 1 and err[0].startswith(f"error: {wrong}: ")
    assert not out.exists()
    if case == "unrelated zip":  # even with --allow-missing
        assert "none of the 10 ids" in err[0] and "--image-dir" in err[0]


def test_a_few_ids_missing_are_below_the_threshold(osv, tmp_path, monkeypatch):
    from hiergeo.data import zips

    monkeypatch.setattr(zips, "MAX_MISSING_SHARE", 0.1)  # 1 of 10 missing: not more than
    rec = read_records(osv / "train.csv", osv / "images" / "train", "osv5m")
    assert (rec["zip_offset"] == zips.NOT_IN_ZIPS).sum() == 1
    monkeypatch.setattr(zips, "MAX_MISSING_SHARE", 0.09)
    with pytest.raises(zips.InputError, match="1 of the 10 ids"):
        read_records(osv / "train.csv", osv / "images" / "train", "osv5m")


def test_unzipped_photos_still_work_beside_no_zip(osv):
    rec = read_records(osv / "train.csv", osv / "flat", "osv5m")
    assert not set(ZIP_COLUMNS) & set(rec.columns)
    assert rec["path"].iloc[0] == str(osv / "flat" / f"{IDS[0]}.jpg")


def test_the_gpu_path_reads_a_members_bytes(osv):
    from hiergeo.data.gpu_jpeg import jpeg_for_gpu

    rec = read_records(osv / "train.csv", osv / "images" / "train", "osv5m",
                       allow_missing=True)
    src = ImageSources(rec)
    for row in (0, len(rec) - 1):  # a stored member and a deflated one
        got = jpeg_for_gpu(src[row])
        want = jpeg_for_gpu(str(osv / "flat" / f"{rec['id'].iloc[row]}.jpg"))
        assert got is not None and torch.equal(got[0], want[0]) and got[1] == want[1]


SHARED_OSV = Path(__file__).resolve().parents[1].parent / "shared" / "images" / "osv5m"


@pytest.mark.skipif(not (SHARED_OSV / "labels.csv").exists(), reason="needs ../shared")
def test_training_on_images_reads_them_from_the_zips(tmp_path, cache_env):
    """The timm-encoder path (images, not a store) takes the zips too: the shared OSV-5M
    photos zipped, as test_train's images test does with the files."""
    from hiergeo.config import load_config
    from hiergeo.train import run

    zips = tmp_path / "images"
    zips.mkdir()
    with zipfile.ZipFile(zips / "00.zip", "w") as z:
        for p in sorted(SHARED_OSV.glob("*.jpg")):
            z.write(p, f"test/{p.name}")
    cfg = load_config("smoke", [f"run.out={tmp_path}", "run.id=img", "model.encoder=timm",
                                f"data.images={SHARED_OSV / 'labels.csv'}",
                                f"data.image_dir={zips}", "optim.max_steps=2",
                                "optim.batch_size=4", "run.val_every=0",
                                "data.val_fraction=0.3", "hardware.workers=1"])
    res = run(cfg)
    assert res["steps"] == 2 and res["n"] >= 1
    text = (tmp_path / "img" / "data_report.json").read_text()
    assert json.loads(text)["source"].startswith("images:")
    assert '"skipped_images": []' in text  # all six read from the zip


def test_loose_files_beside_the_zips_are_found_by_one_listing(osv, tmp_path, monkeypatch):
    """Ids in no zip are looked up in one listing of the folder, not a stat each (4.9M of
    them with a wrong folder, on every rank)."""
    from hiergeo.data import zips

    images = tmp_path / "images"
    images.mkdir()
    (images / "00.zip").write_bytes((osv / "images" / "train" / "00.zip").read_bytes())
    for pid in IDS[5:]:
        (images / f"{pid}.jpg").write_bytes((osv / "flat" / f"{pid}.jpg").read_bytes())

    def no_stat(path):
        raise AssertionError(f"stat of {path}")

    monkeypatch.setattr(zips.os.path, "isfile", no_stat)
    monkeypatch.setattr(zips.os.path, "exists", no_stat)
    rec = read_records(osv / "train.csv", images, "osv5m", allow_missing=True)
    src = ImageSources(rec)
    for i, pid in enumerate(rec["id"]):
        if pid in IDS[5:]:
            assert src[i] == str(images / f"{pid}.jpg")
        elif pid == MISSING:
            assert isinstance(src[i], ZipMember) and src[i].offset == zips.NOT_IN_ZIPS
        else:
            assert isinstance(src[i], ZipMember) and src[i].read()[0] is not None


def test_probing_a_member_reads_its_head_only(osv, tmp_path, monkeypatch):
    """Training checks every photo's header up front: for a zip member that is its first
    64 KB (stored or inflated), not the whole photo read, inflated and CRC-checked."""
    import dataclasses

    from hiergeo.data.images import probe_image

    images = tmp_path / "images"
    images.mkdir()
    for p in (osv / "images" / "train").glob("*.zip"):
        (images / p.name).write_bytes(p.read_bytes())
    # a photo whose header is past the first 64 KB (two 60 KB comment segments first)
    big = _jpeg(3)
    com = b"\xff\xfe" + (60_002).to_bytes(2, "big") + bytes(60_000)
    with zipfile.ZipFile(images / "02.zip", "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{MISSING}.jpg", big[:2] + com + com + big[2:])
    rec = read_records(osv / "train.csv", images, "osv5m")
    src = ImageSources(rec)
    members = [src[i] for i in range(len(rec))]
    assert {m.method for m in members} == {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}
    late = members[rec.index[rec["id"] == MISSING][0]]
    assert late.size > 120_000

    reads = []
    real = ZipMember.read
    monkeypatch.setattr(ZipMember, "read", lambda m: reads.append(m) or real(m))
    assert [probe_image(m) for m in members] == [None] * len(members)
    assert reads == [late]  # its header is not in the head: the whole member, once
    assert load_image(late).ok

    # damage in the member's data passes the header check; loading it names it, and the
    # training batches and the held-out split's up-front decode skip it with that reason
    m = members[0]
    raw = bytearray((images / "00.zip").read_bytes())
    at = m.offset + 30 + len(m.member.encode()) + m.csize // 2
    raw[at:at + 8] = bytes(8)
    (images / "00.zip").write_bytes(bytes(raw))
    assert probe_image(m) is None
    assert load_image(m).reason == "corrupt zip member (CRC or size mismatch)"
    # a member the zip ends inside, and one whose head does not inflate: caught by the probe
    cut = dataclasses.replace(m, csize=(images / "00.zip").stat().st_size)
    assert probe_image(cut) == "truncated zip member (the zip file ends inside it)"
    d = next(x for x in members if x.method == zipfile.ZIP_DEFLATED and x is not late)
    raw = bytearray((images / d.zip.rsplit("/", 1)[-1]).read_bytes())
    at = d.offset + 30 + len(d.member.encode())
    raw[at:at + 4] = b"\xff\xff\xff\xff"
    (images / d.zip.rsplit("/", 1)[-1]).write_bytes(bytes(raw))
    assert probe_image(d).startswith("corrupt zip member")


def test_a_table_or_folder_named_two_ways_is_the_same_source(tmp_path, monkeypatch):
    """The rerun check hashes the photos' paths: a table given as t.csv, ../x/t.csv or its
    absolute path (or a folder likewise) must give the same record, or a resume from another
    working directory is refused (review finding: the paths were the table's spelling)."""
    from hiergeo.features import image_source

    d = tmp_path / "x"
    (d / "photos").mkdir(parents=True)
    for i in range(2):
        (d / "photos" / f"{i}.jpg").write_bytes(_jpeg(i))
    pd.DataFrame({"id": ["a", "b"], "path": ["photos/0.jpg", "photos/1.jpg"],
                  "latitude": [48.85, 52.52], "longitude": [2.35, 13.40]}).to_csv(
        d / "t.csv", index=False)
    monkeypatch.chdir(d)
    names = [Path("t.csv"), d / "t.csv", Path("..") / "x" / "t.csv"]
    tables = [image_source(read_records(n, None, "table")) for n in names]
    assert tables[0] == tables[1] == tables[2]
    folders = [image_source(read_records(n, None, "exif"))
               for n in (Path("photos"), d / "photos", Path("..") / "x" / "photos")]
    assert folders[0] == folders[1] == folders[2]
    # and the ids stay as the table names them
    assert list(read_records(Path("t.csv"), None, "table")["id"]) == ["a", "b"]
