"""Artefact on disk, cache, labelled datasets and the CLI."""

import json
import subprocess
import sys

import pandas as pd
import pytest

import gazetteer
from gazetteer import core


def test_round_trip_keeps_everything(small_places_csv, tmp_path):
    out = tmp_path / "gz"
    built = gazetteer.build(small_places_csv, boundaries=False, out=out)
    loaded = gazetteer.load(out)
    pd.testing.assert_frame_equal(built.entities, loaded.entities)
    assert "Zürich_Bezirk Zürich_Zurich_CH" in set(loaded.entities["key"])
    assert loaded.meta["sources"]["places"]["sha256"]


def test_tampered_artefact_is_refused(small_places_csv, tmp_path):
    out = tmp_path / "gz"
    gazetteer.build(small_places_csv, boundaries=False, out=out)
    with open(out / "places.parquet", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(gazetteer.ArtefactError, match="checksum"):
        gazetteer.load(out)


def test_stale_world_cache_is_rebuilt(monkeypatch, tmp_path):
    monkeypatch.setenv("HIERGEO_CACHE", str(tmp_path))
    first = gazetteer.load()
    meta_path = tmp_path / core.WORLD_NAME / "meta.json"
    meta = json.loads(meta_path.read_text())
    built_at = meta["built_at"]
    meta["sources"]["places"]["sha256"] = "0" * 64  # as if GeoNames had changed
    meta_path.write_text(json.dumps(meta))
    again = gazetteer.load()
    assert json.loads(meta_path.read_text())["sources"] == core.world_fingerprint()
    assert again.counts() == first.counts()
    assert json.loads(meta_path.read_text())["built_at"] >= built_at


def test_tree_from_a_labelled_dataset(tmp_path):
    # OSV-5M's layout; a missing sub-region may be an empty cell or the string "nan"
    df = pd.DataFrame({
        "id": [1, 2, 3, 4],
        "latitude": [15.217, 15.220, 29.93, 29.94],
        "longitude": [-14.465, -14.470, 78.13, 78.14],
        "country": ["SN", "SN", "IN", "IN"],
        "region": ["Matam", "Matam", "Uttarakhand", "Uttarakhand"],
        "sub-region": ["", "nan", "Haridwar", "Haridwar"],
        "city": ["Ranerou", "Ranerou", "Haridwar", "Haridwar"],
    })
    path = tmp_path / "train.csv"
    df.to_csv(path, index=False)
    gz = gazetteer.build(dataset=path, boundaries=False)
    assert gz.counts() == {"country": 2, "region": 2, "subregion": 2, "city": 2}
    e = gz.entities.set_index("key")
    assert e.loc["Ranerou__Matam_SN", "n_places"] == 2
    assert e.loc["Ranerou__Matam_SN", "lat"] == pytest.approx(15.2185, abs=1e-3)
    assert gz.label([29.9], [78.1])["city"][0] == "Haridwar_Haridwar_Uttarakhand_IN"
    # labelling points are city centroids here, so a city's prediction point is its centroid
    city = gz.entities[gz.entities["level"] == "city"]
    assert (city[["point_lat", "point_lon"]].to_numpy() == city[["lat", "lon"]].to_numpy()).all()


def test_cli_label_round_trip_and_errors(small_places_csv, tmp_path):
    art = tmp_path / "gz"
    run = [sys.executable, "-m", "gazetteer"]
    r = subprocess.run([*run, "build", "--places", str(small_places_csv), "--no-boundaries",
                        "--out", str(art)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    inp = tmp_path / "in.csv"
    pd.DataFrame({"photo": ["zü.jpg", "b.jpg"], "latitude": [47.37, -44.27],
                  "longitude": [8.54, 171.13]}).to_csv(inp, index=False, encoding="utf-8")
    out = tmp_path / "out.csv"
    r = subprocess.run([*run, "label", str(inp), "--out", str(out), "--gazetteer", str(art)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    got = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert got["photo"].tolist() == ["zü.jpg", "b.jpg"]
    assert got["label_city"][0] == "Zürich_Bezirk Zürich_Zurich_CH"

    pd.DataFrame({"lat": [1.0]}).to_csv(inp, index=False)
    r = subprocess.run([*run, "label", str(inp), "--out", str(out), "--gazetteer", str(art)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no column 'latitude'" in r.stderr

    pd.DataFrame({"latitude": [1.0, ""], "longitude": [2.0, 3.0]}).to_csv(inp, index=False)
    r = subprocess.run([*run, "label", str(inp), "--out", str(out), "--gazetteer", str(art)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "row 1 field 'latitude'" in r.stderr
    r = subprocess.run([*run, "label", str(inp), "--out", str(out), "--gazetteer", str(art),
                        "--mask-invalid"], capture_output=True, text=True)
    assert r.returncode == 0 and "1 masked" in r.stdout

    r = subprocess.run([*run, "info", str(art)], capture_output=True, text=True)
    assert r.returncode == 0 and '"city": 10' in r.stdout
