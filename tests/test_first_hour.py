"""Issue 27: what a newcomer meets in the first hour ends in one line saying what is wrong."""

from PIL import Image


def test_features_from_nothing_usable_is_an_error(tmp_path, capsys):
    from hiergeo.cli.features import main

    (tmp_path / "empty").mkdir()
    assert main(["--data", str(tmp_path / "empty"), "--out", str(tmp_path / "s1")]) == 2
    assert "no photos in it" in capsys.readouterr().err
    (tmp_path / "nogps").mkdir()
    Image.new("RGB", (64, 48), (20, 90, 40)).save(tmp_path / "nogps" / "a.jpg")
    rc = main(["--data", str(tmp_path / "nogps"), "--out", str(tmp_path / "s2"), "--workers",
               "0"])
    last = capsys.readouterr().err.rstrip("\n").split("\n")[-1]
    assert rc == 1 and last.startswith("error: none of the 1 photos could be used"), last
    assert "skipped.csv" in last and (tmp_path / "s2" / "skipped.csv").exists()


def test_features_out_naming_a_file_is_one_line(tmp_path, capsys):
    """--out t.csv (the table itself) was a FileExistsError traceback after the photos were
    read; import already refused it in one line."""
    from hiergeo.cli.features import main

    (tmp_path / "t.csv").write_text("path,latitude,longitude\na.jpg,1,2\n")
    assert main(["--data", str(tmp_path / "t.csv"), "--out", str(tmp_path / "t.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: --out {tmp_path / 't.csv'} is a file")
    assert (tmp_path / "t.csv").read_text().startswith("path,")


def test_a_typo_in_the_store_is_one_line_and_leaves_no_folder(tmp_path, capsys):
    from hiergeo.cli.train import main

    rc = main(["--config", "smoke", f"data.train={tmp_path / 'stor'}",
               f"run.out={tmp_path / 'runs'}", "run.id=r"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: train data: ") and "no store.json" in err
    assert err.count("\n") == 1 and not (tmp_path / "runs" / "r").exists()


def test_predict_checks_its_inputs_before_the_model(tmp_path, capsys):
    from hiergeo.cli.predict import main

    missing = str(tmp_path / "no-model")  # the model is never looked at
    assert main(["--model", missing, str(tmp_path / "nope.jpg")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {tmp_path / 'nope.jpg'}: no such file or folder\n"
    photo = tmp_path / "a.jpg"
    Image.new("RGB", (64, 48)).save(photo)
    (tmp_path / "out.csv").mkdir()  # a folder with a table's name
    assert main(["--model", missing, str(photo), "--out", str(tmp_path / "out.csv")]) == 2
    assert "is a folder; --out and --map name files" in capsys.readouterr().err


def test_predict_features_takes_arrays_and_lists(smoke_run):
    import numpy as np
    import pytest

    from hiergeo.geolocate import Geolocator

    g = Geolocator.load(smoke_run[0], memory=False)
    x = np.random.default_rng(0).standard_normal((3, g.meta["model"]["in_dim"]))
    a = g.predict_features(x)
    b = g.predict_features(x.tolist())
    assert len(a) == 3 and a.equals(b)
    with pytest.raises(ValueError, match="features must be numbers"):
        g.predict_features([["a"] * g.meta["model"]["in_dim"]])
    with pytest.raises(ValueError, match="NaN or inf"):
        g.predict_features(np.full((1, g.meta["model"]["in_dim"]), np.nan))


def test_too_few_validation_samples_leave_probabilities_uncalibrated(tmp_path, caplog):
    """25 validation photos once fitted T = 0.01 and made wrong answers 'sure down to the
    city'; below MIN_CALIBRATION samples a level keeps T = 1, and says so."""
    import json

    from hiergeo.predict.calibration import MIN_CALIBRATION
    from hiergeo.train import load_config, run

    cfg = load_config("smoke", [f"run.out={tmp_path}", "run.id=r", "optim.max_steps=5",
                                f"eval.calibration_max={MIN_CALIBRATION - 10}"])
    with caplog.at_level("WARNING"):
        run(cfg)
    levels = json.loads((tmp_path / "r" / "calibration.json").read_text())["levels"]
    assert all(r["T"] == 1.0 and "uncalibrated" in r for r in levels.values()), levels
    assert "probabilities are left as trained" in caplog.text


def test_a_demo_run_says_its_figures_are_synthetic(tmp_path, capsys):
    import json

    from hiergeo.cli.train import main

    assert main(["--config", "smoke", f"run.out={tmp_path}", "run.id=r",
                 "optim.max_steps=3"]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("(make photos: real photos)")
    assert "synthetic features" in out
    assert main(["--config", "smoke", f"run.out={tmp_path}", "run.id=r2", "optim.max_steps=3",
                 "--json"]) == 0
    both = capsys.readouterr()
    assert json.loads(both.out)["steps"] == 3 and "synthetic features" in both.err


def test_no_probability_beside_an_empty_level_name():
    import numpy as np
    import pandas as pd

    from hiergeo.predict.descent import Prediction
    from hiergeo.reports.answers import prediction_table

    entities = pd.DataFrame({"name": ["", "Namibia", "Khomas", "", "Windhoek"],
                             "key": ["root", "NA", "KH_NA", "_KH_NA", "Windhoek__KH_NA"]})
    pred = Prediction(paths=np.array([[[1, 2, 3, 4]]]), score=np.zeros((1, 1)),
                      level_prob=np.array([[[0.9, 0.8, 1.0, 0.7]]]), lat=np.array([-22.6]),
                      lon=np.array([17.1]), confident_level=np.array([1]),
                      comparisons=np.array([10]))
    t = prediction_table(pred, entities, ["a"])
    assert t.loc[0, "subregion"] == "" and np.isnan(t.loc[0, "p_subregion"])
    assert t.loc[0, "p_region"] == np.float64(0.9 * 0.8)
    assert abs(t.loc[0, "p_city"] - 0.9 * 0.8 * 0.7) < 1e-12


def test_print_config_shows_every_key_resolved(capsys):
    import yaml

    from hiergeo.cli.train import main
    from hiergeo.config import load_config

    assert main(["--config", "default", "optim.lr=0.001", "--print-config"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    cfg = load_config("default", ["optim.lr=0.001"])
    assert shown["optim"]["lr"] == 0.001 and shown["model"]["dim"] == cfg.model.dim
    assert shown["loss"]["learn"] == ["tau", "lam", "sigma"]
    assert yaml.safe_load(cfg.to_yaml()) == shown


def test_csv_cells_a_spreadsheet_would_run_are_defused(tmp_path):
    import pandas as pd

    from hiergeo.reports.answers import write_table

    t = pd.DataFrame({"id": ["=HYPERLINK(1)", "+1", "@a", "ok", "-3"],
                      "p_country": [0.5, -0.25, 1.0, 0.0, 0.1]})
    write_table(t, tmp_path / "p.csv")
    back = pd.read_csv(tmp_path / "p.csv")
    assert back["id"].tolist() == ["'=HYPERLINK(1)", "'+1", "'@a", "ok", "-3"]
    assert back["p_country"].tolist() == [0.5, -0.25, 1.0, 0.0, 0.1]  # numbers untouched
    write_table(t, tmp_path / "p.parquet")
    assert pd.read_parquet(tmp_path / "p.parquet")["id"].tolist() == t["id"].tolist()


def test_commands_end_with_human_lines_and_keep_json_behind_a_flag(smoke_run, tmp_path,
                                                                    capsys):
    """export, predict, evaluate: a few lines a person reads (what, figures, files, next);
    --json prints the figures as JSON on stdout and moves the lines to stderr."""
    import json

    import gazetteer
    from hiergeo.cli import evaluate, export, predict
    from hiergeo.data.demo import demo_store
    from hiergeo.train import load_config

    run_dir, _ = smoke_run
    model = tmp_path / "model"
    assert export.main(["--run", str(run_dir), "--out", str(model)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Exported the model to {model}/") and "\n  sha256 " in out
    assert out.rstrip().endswith("--out predictions.csv") and len(out.splitlines()) == 3
    store = demo_store(gazetteer.load(), load_config("smoke", []).data.demo)
    args = ["--model", str(model), str(store), "--no-progress"]
    assert predict.main([*args, "--out", str(tmp_path / "p.csv")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Geolocated ") and "photos/s" in lines[0], lines
    assert lines[1].startswith("  against the ") and "GeoScore" in lines[1], lines
    assert lines[-1].startswith(f"Wrote {tmp_path / 'p.csv'} ") and len(lines) == 3, lines
    assert predict.main([*args, "--out", str(tmp_path / "q.csv"), "--json"]) == 0
    both = capsys.readouterr()
    report = json.loads(both.out)
    assert report["outputs"] == [str(tmp_path / "q.csv")] and report["truth"]["n"] > 0
    assert "Geolocated " in both.err
    assert evaluate.main(["--run", str(run_dir), "--out", str(tmp_path / "ev")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"Evaluated {run_dir} on the run's validation split: "), lines
    assert "GeoScore" in lines[1] and lines[2].startswith(f"Files in {tmp_path / 'ev'}/: ")


def test_features_and_embedding_end_with_human_lines(tmp_path, capsys):
    import json

    import pandas as pd

    from hiergeo.cli.embedding import human_lines
    from hiergeo.cli.features import main

    photo = tmp_path / "a.jpg"
    Image.new("RGB", (64, 48), (20, 90, 40)).save(photo)
    pd.DataFrame({"path": [str(photo), str(tmp_path / "gone.jpg")], "latitude": [48.85, 1.0],
                  "longitude": [2.35, 1.0]}).to_csv(tmp_path / "t.csv", index=False)
    args = ["--data", str(tmp_path / "t.csv"), "--workers", "0"]
    assert main([*args, "--out", str(tmp_path / "s")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Extracted ") and "features of 1 photos" in lines[0], lines
    assert lines[1].startswith("  1 photos skipped (1: ") and "skipped.csv" in lines[1]
    assert lines[2] == f"Next: python -m hiergeo.train --config default data.train={tmp_path / 's'}"
    assert main([*args, "--out", str(tmp_path / "s2"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images_read"] == 1
    m = {"n_entities": 300, "dim": 16, "c": 1.0, "method": "construct", "seconds": 2.5,
         "map": 1.0, "mean_distortion": 0.2, "worst_distortion": 4.0,
         "sibling_geo_spearman": 0.5, "non_finite": 0}
    shown = human_lines(m, tmp_path, plot=True)
    assert shown[0].startswith("Embedded 300 entities") and "MAP 1.000" in shown[1]
    assert shown[-1].startswith(f"Files in {tmp_path}/: metrics.json") and "disk.png" in shown[-1]


def test_photos_in_folders_are_named_by_their_stems_kept_distinct(tmp_path):
    from hiergeo.data.photos import collect_photos

    for name in ["a/IMG_1.jpg", "a/sub/IMG_1.jpg", "a/x.jpg", "a/x.png", "a/q.jpg",
                 "b/z.jpg"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    (tmp_path / "t.csv").write_text("id,path\nq,elsewhere.jpg\n")
    got = collect_photos([tmp_path / "a", tmp_path / "b" / "z.jpg", tmp_path / "t.csv"],
                         gps=False)
    ids = dict(zip(got["path"], got["id"], strict=True))
    assert ids[str(tmp_path / "a" / "IMG_1.jpg")] == "IMG_1"      # shared stem: the shorter
    assert ids[str(tmp_path / "a" / "sub" / "IMG_1.jpg")] == "sub/IMG_1"  # keeps it below
    assert ids[str(tmp_path / "a" / "x.jpg")] == "x.jpg"          # its folder, then suffixes
    assert ids[str(tmp_path / "a" / "x.png")] == "x.png"
    assert ids[str(tmp_path / "a" / "q.jpg")] == "q.jpg"          # a table's id is not taken
    assert ids[str(tmp_path / "b" / "z.jpg")] == "z"              # a file named on its own
    assert ids[str(tmp_path / "elsewhere.jpg")] == "q" and got["id"].is_unique
    twice = collect_photos([tmp_path / "a" / "x.jpg", tmp_path / "b"], gps=False)
    assert twice["id"].tolist() == ["x", "z"]


def test_outputs_round_figures_and_drop_negligible_paths(tmp_path):
    import json

    import numpy as np
    import pandas as pd

    from hiergeo.predict.descent import Prediction
    from hiergeo.reports.answers import prediction_table, write_table

    entities = pd.DataFrame({"name": ["", "Bolivia", "Peru", "Chile"],
                             "key": ["root", "BO", "PE", "CL"]})
    pred = Prediction(paths=np.array([[[1, -1, -1, -1], [2, -1, -1, -1], [3, -1, -1, -1]]]),
                      score=np.zeros((1, 3)),
                      level_prob=np.array([[[0.123456789, 1, 1, 1], [3.21e-5, 1, 1, 1],
                                            [4e-7, 1, 1, 1]]]),
                      lat=np.array([-16.123456789]), lon=np.array([-68.987654321]),
                      confident_level=np.array([-1]), comparisons=np.array([3]))
    t = prediction_table(pred, entities, ["a"])
    assert t.loc[0, "path_2"] == "Peru" and t.loc[0, "p_2"] == 3.21e-5
    assert t.loc[0, "path_3"] is None and np.isnan(t.loc[0, "p_3"])  # below 1e-6: left out
    for suffix in ("csv", "geojson", "parquet"):
        write_table(t, tmp_path / f"p.{suffix}")
    csv = (tmp_path / "p.csv").read_text()
    assert ",0.1235," in csv and "3.21e-05" in csv and "-16.123457" in csv
    assert "0.123456789" not in csv and "-68.98765432" not in csv
    props = json.loads((tmp_path / "p.geojson").read_text())["features"][0]
    assert props["geometry"]["coordinates"] == [-68.987654, -16.123457]
    assert props["properties"]["p_1"] == 0.1235
    par = pd.read_parquet(tmp_path / "p.parquet")
    assert par.loc[0, "p_1"] == 0.123456789 and par.loc[0, "pred_latitude"] == -16.123456789


def test_predict_reads_osv5m_labels_csv_as_features_does(tmp_path, capsys):
    """OSV-5M's labels.csv (an id column, no path) names {id}.jpg in --image-dir, as
    hiergeo.features reads it (hiergeo.data.records.osv5m_paths); default the table's
    folder."""
    from hiergeo.cli.predict import main
    from hiergeo.data.photos import collect_photos
    from hiergeo.data.records import read_records

    (tmp_path / "images").mkdir()
    for i in ("101", "102"):
        Image.new("RGB", (8, 8)).save(tmp_path / "images" / f"{i}.jpg")
    labels = tmp_path / "test.csv"
    labels.write_text("id,latitude,longitude,country,region,sub-region,city\n"
                      "101,48.85,2.35,FR,Ile-de-France,Paris,Paris\n"
                      "102,-16.5,-68.15,BO,La Paz,Murillo,La Paz\n")
    got = collect_photos([labels], gps=False, image_dir=tmp_path / "images")
    want = read_records(labels, tmp_path / "images", "osv5m")
    assert got["id"].tolist() == ["101", "102"] and got["path"].tolist() == want["path"].tolist()
    assert got["latitude"].tolist() == [48.85, -16.5] and got["country"].tolist() == ["FR", "BO"]
    beside = collect_photos([labels], gps=False)
    assert beside["path"].tolist() == [str(tmp_path / "101.jpg"), str(tmp_path / "102.jpg")]
    assert main(["--model", str(tmp_path / "no-model"), str(labels), "--image-dir",
                 str(tmp_path / "imgs")]) == 2  # checked before the model
    assert capsys.readouterr().err == f"error: {tmp_path / 'imgs'}: no such file or folder\n"


def test_help_is_plain_text_with_defaults():
    """--help shows the library's docstring without Sphinx markup, and every option that
    has a default says it."""
    import importlib
    import re

    from hiergeo.cli import COMMANDS

    for name in COMMANDS:
        ap = importlib.import_module(f"hiergeo.cli.{name}").build_parser()
        text = ap.format_help()
        assert "``" not in text and not re.search(r":[a-z]+:`", text), name
        assert not re.search(r"^\s*::\s*$", text, re.M), name
        for a in ap._actions:
            if a.option_strings and a.default not in (None, False, "==SUPPRESS=="):
                assert a.help and "default" in ap._get_formatter()._get_help_string(a), (
                    name, a.option_strings)
    text = importlib.import_module("hiergeo.cli.evaluate").build_parser().format_help()
    assert "(default: descent)" in text and "(default: auto)" in text
    text = " ".join(importlib.import_module("hiergeo.cli.predict").build_parser()
                    .format_help().split())
    assert "photos through the backbone at a time (default: 64)" in text
    assert "Geolocate photos with a trained model: Geolocator and python -m hiergeo.predict." \
        in text
