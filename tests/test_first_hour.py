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


def test_a_typo_in_the_store_is_one_line_and_leaves_no_folder(tmp_path, capsys):
    from hiergeo.cli.train import main

    rc = main(["--config", "smoke", f"data.train={tmp_path / 'stor'}",
               f"run.out={tmp_path / 'runs'}", "run.id=r"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: train data: ") and "no store.json" in err
    assert err.count("\n") == 1 and not (tmp_path / "runs" / "r").exists()
