"""The offline HTML photo map: one file, no network, data that parses back, text that cannot
break out of its script block, thumbnails as data URIs; and, where Chromium is installed, a
headless render that requests nothing off the machine and draws countries and markers."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hiergeo.reports import write_map
from hiergeo.reports.photo_map import (
    NO_LEVEL,
    NO_NAME,
    PAGE_COLOUR,
    SEA_COLOUR,
    UNSURE,
    country_paths,
)
from hiergeo.reports.photo_map_layout import link_segments

TRICKY = 'Cusco "quoted" </script><script>alert(1)</script> & São Paulo, Île-de-France'


def _row(i, lat, lon, level="city", name="Bolivia", path=None, truth=None, k=3):
    row = {
        "id": f"img-{i}", "path": path, "pred_latitude": lat, "pred_longitude": lon,
        "answer": f"{name} › La Paz" if level else f"{name}, region unsure",
        "confident_level": level,
        "country": name, "country_key": "BO", "p_country": 0.91,
        "region": "La Paz", "region_key": "LP_BO", "p_region": 0.55,
        "subregion": None, "subregion_key": None, "p_subregion": np.nan,
        "city": None, "city_key": None, "p_city": np.nan,
        "true_latitude": np.nan if truth is None else truth[0],
        "true_longitude": np.nan if truth is None else truth[1],
        "error_km": np.nan,
    }
    for j in range(1, k + 1):
        row[f"path_{j}"] = f"{name} › option {j}"
        row[f"key_{j}"] = f"k{j}"
        row[f"p_{j}"] = 0.5 / j
    return row


@pytest.fixture
def table(tmp_path):
    jpeg = tmp_path / "photo.jpg"
    Image.new("RGB", (640, 400), (0xC8, 0x5A, 0x1E)).save(jpeg, quality=90)
    rows = [
        _row(0, -16.50123, -68.15071, "city", path=str(jpeg), truth=(-16.4, -68.1)),
        _row(1, 48.85, 2.35, "region", name="France", path=str(tmp_path / "gone.jpg")),
        _row(2, -23.55, -46.63, "country", name=TRICKY, truth=(-22.9, -43.2)),
        _row(3, np.nan, 10.0, "city"),  # no predicted position: skipped and counted
        _row(4, 35.71234, 139.70987, "", name="Japan"),
        _row(5, -17.8, 178.0, "subregion", name="Fiji", truth=(-16.5, -179.9)),
        _row(6, 64.7, 177.5, "country", name="Russia"),
    ]
    frame = pd.DataFrame(rows)
    frame.loc[0, "error_km"] = 12.5  # error_km given wins over the haversine
    return frame, jpeg


def _data(text: str) -> dict:
    m = re.search(r'<script type="application/json" id="photo-data">(.*?)</script>', text, re.S)
    assert m, "no JSON data block"
    return json.loads(m.group(1))


def test_writes_one_offline_file(table, tmp_path):
    frame, _ = table
    out = write_map(frame, tmp_path / "sub" / "map.html", title="Test map")
    assert out == tmp_path / "sub" / "map.html" and out.is_file()
    assert not [p for p in out.parent.iterdir() if p.name != "map.html"], "temporary file left"
    text = out.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text
    assert not re.search(r"""(?:src|href|action)\s*=\s*["']?\s*//""", text, re.I)
    for m in re.finditer(r"url\(\s*['\"]?([^)'\"]*)", text):
        assert m.group(1).startswith(("#", "data:")), m.group(0)
    assert "@import" not in text
    assert not re.search(r"<(?:link|iframe|object|embed)\b", text, re.I)
    # every attribute source (img, script, ...) is inline: data: only
    for m in re.finditer(r"""\b(?:src|href)\s*=\s*["']([^"']*)["']""", text, re.I):
        assert m.group(1).startswith("data:"), m.group(0)
    assert "<svg" in text and text.count("<path d=") > 150  # the country base layer
    assert "Test map" in text


def test_data_block_round_trips(table, tmp_path):
    frame, _ = table
    data = _data(write_map(frame, tmp_path / "map.html", thumbnails=False).read_text("utf-8"))
    by_id = {r["id"]: r for r in data["rows"]}
    expected = frame[frame["pred_latitude"].notna()]
    assert set(by_id) == set(expected["id"])
    for _, row in expected.iterrows():
        got = by_id[row["id"]]
        assert got["lat"] == pytest.approx(row["pred_latitude"], abs=1e-5)
        assert got["lon"] == pytest.approx(row["pred_longitude"], abs=1e-5)
        assert got["lvl"] == row["confident_level"]
        assert got["ans"] == row["answer"]
        assert [p[0] for p in got["paths"]] == [row[f"path_{j}"] for j in (1, 2, 3)]
        assert got["paths"][0][1] == pytest.approx(0.5)
        # every level is listed; a missing one has no name and says why (issue 27)
        assert [lv[0] for lv in got["levels"]] == ["country", "region", "subregion", "city"]
        assert [lv[1] is None for lv in got["levels"]] == [False, False, True, True]
        assert got["th"] is None and "off" in got["why"]
    # truth: given error wins; missing error computed; no truth -> null
    assert by_id["img-0"]["err"] == 12.5
    assert by_id["img-2"]["err"] == pytest.approx(358, abs=5)  # São Paulo -> Rio
    assert by_id["img-5"]["tlon"] == -179.9 and by_id["img-5"]["err"] < 300  # antimeridian
    assert by_id["img-1"]["tlat"] is None and by_id["img-1"]["err"] is None
    assert by_id["img-2"]["levels"][0][1] == TRICKY


def test_tricky_text_stays_in_its_script_block(table, tmp_path):
    frame, _ = table
    text = write_map(frame, tmp_path / "map.html", thumbnails=False).read_text("utf-8")
    assert len(re.findall(r"<script\b", text, re.I)) == len(re.findall(r"</script", text, re.I))
    assert len(re.findall(r"<script\b", text, re.I)) == 2  # the data and the code
    assert "alert(1)</script>" not in text and "<script>alert" not in text
    assert "São Paulo" in text and "Île-de-France" in text  # unicode kept readable
    assert any(r["ans"].startswith(TRICKY) for r in _data(text)["rows"])


def test_nan_rows_skipped_and_counted(table, tmp_path):
    frame, _ = table
    frame.loc[6, "pred_longitude"] = 200.0  # out of range counts as no position too
    text = write_map(frame, tmp_path / "map.html", thumbnails=False).read_text("utf-8")
    ids = {r["id"] for r in _data(text)["rows"]}
    assert "img-3" not in ids and "img-6" not in ids and len(ids) == 5
    assert "5 photos on the map" in text
    assert "2 without a predicted position" in text
    assert "median error" in text


def test_thumbnails(table, tmp_path):
    frame, _ = table
    text = write_map(frame, tmp_path / "map.html", thumb_px=96).read_text("utf-8")
    rows = {r["id"]: r for r in _data(text)["rows"]}
    uri = rows["img-0"]["th"]
    assert uri.startswith("data:image/jpeg;base64,")
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as img:
        assert img.format == "JPEG" and max(img.size) == 96 and img.size == (96, 60)
    assert rows["img-1"]["th"] is None and rows["img-1"]["why"] == "missing file"
    assert rows["img-4"]["th"] is None and "memory" in rows["img-4"]["why"]
    # the limit: only the first drawn row gets one
    text = write_map(frame, tmp_path / "map.html", max_thumbnails=1).read_text("utf-8")
    rows = _data(text)["rows"]
    assert rows[0]["th"] and all(r["th"] is None for r in rows[1:])
    assert "only the first 1 " in rows[1]["why"]


def test_missing_column_is_named(table, tmp_path):
    frame, _ = table
    with pytest.raises(ValueError, match="pred_longitude"):
        write_map(frame.drop(columns="pred_longitude"), tmp_path / "map.html")
    assert not (tmp_path / "map.html").exists()


def test_no_truth_columns_no_error_stats(table, tmp_path):
    frame, _ = table
    plain = frame.drop(columns=["true_latitude", "true_longitude", "error_km"])
    text = write_map(plain, tmp_path / "map.html", thumbnails=False).read_text("utf-8")
    assert "median error" not in text and "true position</li>" not in text
    assert all(r["tlat"] is None and r["err"] is None for r in _data(text)["rows"])


def _css_rule(text: str, selector: str) -> str:
    m = re.search(r"(?:^|[}\n])" + re.escape(selector) + r"\{([^}]*)\}", text)
    assert m, f"no CSS rule for {selector}"
    return m.group(1)


def test_map_is_letterboxed_in_its_own_sea_colour(table, tmp_path):
    """Issue 27: at 1400x900 the world (wider than the window) left grey page bands above and
    below the map; the map element's own background is now the sea, so any letterbox is sea."""
    frame, _ = table
    text = write_map(frame, tmp_path / "map.html", thumbnails=False).read_text("utf-8")
    assert f"background:{SEA_COLOUR}" in _css_rule(text, "#map")
    assert 'preserveAspectRatio="xMidYMid meet"' in text


def test_truth_lines_are_faint_and_strong_under_the_pointer(tmp_path):
    """Issue 27: 157 photos with dashed truth lines made a web. The shared lines are thin and
    faint; the hovered (#hov) or selected (#sel) marker's own line is drawn strongly."""
    rows = [_row(i, -60 + 0.7 * i, -170 + 2.1 * i, truth=(-55 + 0.6 * i, -160 + 2 * i))
            for i in range(157)]
    text = write_map(pd.DataFrame(rows), tmp_path / "map.html", thumbnails=False).read_text()

    def num(rule, prop):
        return float(re.search(prop + r":([\d.]+)", rule).group(1))

    faint = _css_rule(text, ".link")
    assert num(faint, "opacity") <= 0.3 and num(faint, "stroke-width") <= 0.8
    for sel in ("#hov .link", "#sel .link"):
        strong = _css_rule(text, sel)
        assert num(strong, "opacity") >= 0.9 and num(strong, "stroke-width") >= 2
    assert '<g id="hov">' in text and 'addEventListener("pointerover"' in text
    # a handful of photos keep slightly stronger lines than a crowd
    few = write_map(pd.DataFrame(rows[:5]), tmp_path / "few.html", thumbnails=False).read_text()
    assert num(_css_rule(few, ".link"), "opacity") > num(faint, "opacity")


def test_stacked_markers_become_one_marker_with_a_count(tmp_path):
    """Issue 27: predictions on one spot (an entity's centre) hid one another. Five photos at
    one point are one stack of five (drawn as one marker with "×5", listed when clicked);
    a photo 0.01 degree away is its own marker."""
    rows = [_row(i, 48.8566, 2.3522, "city" if i < 3 else "region") for i in range(5)]
    rows += [_row(5, 48.8666, 2.3522), _row(6, 10.0, 10.0), _row(7, 10.0, 10.00001, "")]
    text = write_map(pd.DataFrame(rows), tmp_path / "map.html", thumbnails=False).read_text()
    data = _data(text)
    assert [s["rows"] for s in data["stacks"]] == [[0, 1, 2, 3, 4], [6, 7]]
    assert data["stacks"][0]["lvl"] == "city"  # the members' most common level
    assert (data["stacks"][0]["lat"], data["stacks"][0]["lon"]) == (48.8566, 2.3522)
    assert '"\\u00d7" + s.rows.length' in text and "function showStack" in text
    assert "(click for the list)" in text  # the legend explains the count
    # no stacks: nothing extra in the legend
    alone = write_map(pd.DataFrame(rows[5:7]), tmp_path / "a.html", thumbnails=False).read_text()
    assert _data(alone)["stacks"] == [] and "(click for the list)" not in alone


def test_lines_across_the_antimeridian_stay_on_the_map(tmp_path):
    """Issue 27: a prediction at lon 179 with its truth at lon -179 is 2 degrees apart the
    short way; its line is split at the antimeridian, never drawn 358 degrees across or off
    the map's edge."""
    rows = [_row(0, -17.0, 179.0, truth=(-16.0, -179.0)), _row(1, 64.0, -178.5, truth=(65.0,
            170.5)), _row(2, 10.0, 20.0, truth=(11.0, 25.0))]
    data = _data(write_map(pd.DataFrame(rows), tmp_path / "map.html",
                           thumbnails=False).read_text())
    lines = {r["id"]: r["line"] for r in data["rows"]}
    for rid, segs in lines.items():
        lons = [x for s in segs for x in (s[0], s[2])]
        assert all(-180 <= x <= 180 for x in lons), (rid, segs)
        assert sum(abs(s[2] - s[0]) for s in segs) <= 180, (rid, segs)  # the short way
    assert lines["img-0"] == [[179.0, -17.0, 180.0, -16.5], [-180.0, -16.5, -179.0, -16.0]]
    assert lines["img-1"][0][2] == -180.0 and lines["img-1"][1][0] == 180.0
    assert lines["img-2"] == [[20.0, 10.0, 25.0, 11.0]]
    # the split point lies on the straight (equirectangular) short-way line
    (a, b), = [link_segments(0.0, 170.0, 30.0, -160.0)]
    assert a[2:] == [180.0, 10.0] and b[:2] == [-180.0, 10.0]


def test_panel_shows_a_missing_level_with_a_reason(tmp_path):
    """Issue 27: the panel skipped a level with no name. Every level is listed; a missing one
    is "—" with why (no such level here / no name in the gazetteer), a named level below the
    confident one says it is below the threshold."""
    r = _row(0, 1.0, 1.0, "country")          # region named but unsure; subregion, city absent
    r["subregion_key"] = "X_LP_BO"           # an entity without a name
    t = _row(1, 2.0, 2.0, "city")
    t["region"], t["region_key"], t["subregion"], t["city"] = None, None, "Murillo", "La Paz"
    text = write_map(pd.DataFrame([r, t]), tmp_path / "map.html", thumbnails=False).read_text()
    by_id = {row["id"]: row["levels"] for row in _data(text)["rows"]}
    assert by_id["img-0"] == [["country", "Bolivia", 0.91, None],
                              ["region", "La Paz", 0.55, UNSURE],
                              ["subregion", None, None, NO_NAME],
                              ["city", None, None, NO_LEVEL]]
    assert by_id["img-1"][1] == ["region", None, None, NO_LEVEL]   # skipped between two levels
    assert [lv[1] for lv in by_id["img-1"]] == ["Bolivia", None, "Murillo", "La Paz"]
    assert '"\\u2014 " + (l[3]' in text   # drawn as "— reason"


@pytest.mark.skipif(not shutil.which("node"), reason="no node")
def test_page_script_runs_in_a_stand_in_dom(tmp_path):
    """The page's JavaScript, run under node with a tiny stand-in DOM (tests/js): a stack of
    five is one marker with "×5" whose click lists five photos; hovering draws a marker's line
    strongly and leaving clears it; the antimeridian line stays within ±180; a photo's panel
    lists its missing levels with "—" and why."""
    import subprocess

    rows = [_row(i, 10.0, 20.0, truth=(11.0, 21.0)) for i in range(5)]
    rows[0]["region"] = rows[0]["region_key"] = None
    rows += [_row(5, -17.0, 179.0, truth=(-16.0, -179.0)), _row(6, 1.0, 1.0, "")]
    page = write_map(pd.DataFrame(rows), tmp_path / "map.html", thumbnails=False)
    harness = Path(__file__).parent / "js" / "photo_map_dom.js"
    out = subprocess.run(["node", str(harness), str(page)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert sorted(got["markers"]) == ["g0", "i5", "i6"] and got["counts"] == ["\u00d75"]
    lons = [float(x) for x in re.findall(r"[ML](-?[\d.]+) ", got["links"][0])]
    assert lons and max(map(abs, lons)) <= 180
    assert got["hover_paths"] == 3 and got["hover_paths_after"] == 0  # line, truth outline, dot
    assert got["stack_panel"] == {"open": True, "title": "5 photos predicted at this spot",
                                  "items": 5}
    assert got["panel_levels"][1] == ["region", "\u2014 no such level here", ""]


def test_base_layer_is_small_and_cached():
    paths = country_paths()
    assert country_paths() is paths  # lru_cache: the second map reuses it
    assert 200 < len(paths) and sum(len(d) for _, d in paths) < 1_000_000
    names = {n for n, _ in paths}
    assert {"Russia", "Fiji", "France", "Brazil"} <= names and "nan" not in names


# ---------------------------------------------------------------------------------------------
# Headless Chromium (skipped where there is none)


@pytest.fixture(scope="module")
def check_map(scripts):
    if not (shutil.which("chromium") or Path("/usr/bin/chromium").exists()):
        pytest.skip("no chromium")
    return scripts("check_map")


THUMB_RGB = "#c85a1e"  # the colour of the test JPEG


def test_renders_offline_in_chromium(check_map, table, tmp_path):
    frame, _ = table
    html_path = write_map(frame, tmp_path / "map.html")
    report = check_map.check(html_path, tmp_path / "shot.png",
                             colours={"thumb": THUMB_RGB, "page": PAGE_COLOUR})
    assert report["requests_off_machine"] == [], report
    assert report["js_errors"] == [] and report["blocked_by_csp"] == [], report
    shot = report["screenshot"]
    assert shot["width"] == 1400 and shot["height"] == 800
    assert shot["land_pixels"] > 0.1 * 1400 * 800  # countries drawn
    # markers drawn: more pixels of each level's colour than the legend's swatch alone has
    empty = frame.assign(pred_latitude=np.nan)
    legend_only = check_map.check(write_map(empty, tmp_path / "empty.html"),
                                  tmp_path / "empty.png")["screenshot"]["marker_pixels"]
    for level in ("city", "region", "country", "subregion", "none"):
        assert shot["marker_pixels"][level] >= legend_only[level] + 40, (level, shot)
    assert shot["other_pixels"]["thumb"] < 50  # no panel open
    # issue 27: no grey page bands around a world wider than the window (sea-coloured instead)
    assert shot["other_pixels"]["page"] < 0.005 * 1400 * 800, shot
    assert report["ok"] and not report["blank"]
    # #select=ID opens that row's panel with its thumbnail on load
    report = check_map.check(html_path, tmp_path / "panel.png", select="img-0",
                             colours={"thumb": THUMB_RGB})
    assert report["ok"], report
    assert report["screenshot"]["other_pixels"]["thumb"] > 5000  # 160 x 100 thumbnail


def test_chromium_check_can_fail(check_map, tmp_path):
    """The check is not a rubber stamp: a page that loads from the web, or draws nothing,
    fails it."""
    page = tmp_path / "bad.html"
    page.write_text('<html><body><img src="http://example.invalid/x.png">'
                    "<script>fetch('https://tiles.example.invalid/1/2/3.png')"
                    ".catch(function(){})</script></body></html>", encoding="utf-8")
    report = check_map.check(page, tmp_path / "bad.png")
    assert "http://example.invalid/x.png" in report["requests_off_machine"]
    assert "https://tiles.example.invalid/1/2/3.png" in report["requests_off_machine"]
    assert report["blank"] and not report["ok"]
    assert not any("example.invalid" in u for u in report["chromium_internal"])


def test_net_log_cut_short_still_parses(tmp_path, scripts):
    mod = scripts("check_map")
    log = tmp_path / "net.json"
    constants = {"logEventTypes": {"URL_REQUEST_START_JOB": 1, "REQUEST_ALIVE": 2},
                 "logSourceType": {"URL_REQUEST": 7}}
    ev = {"phase": 1, "source": {"id": 3, "type": 7}, "type": 1,
          "params": {"url": "https://cdn.example/leaflet.js", "initiator": "null",
                     "network_isolation_key": "file:// file://"}}
    own = {"phase": 1, "source": {"id": 4, "type": 7}, "type": 1,
           "params": {"url": "https://accounts.google.com/ListAccounts",
                      "initiator": "not an origin", "network_isolation_key": "https://google.com"}}
    log.write_text(json.dumps({"constants": constants})[:-1] + ',\n"events": [\n'
                   + json.dumps(ev) + ",\n" + json.dumps(own) + ",\n"
                   + '{"phase":1,"source":{"id":5,"ty', encoding="utf-8")
    got = mod.classify_requests(*mod.read_net_log(log))
    assert got["requests_off_machine"] == ["https://cdn.example/leaflet.js"]
    assert got["chromium_internal"] == ["https://accounts.google.com/ListAccounts"]


def test_large_tables_are_drawn_as_an_even_sample(tmp_path):
    from hiergeo.reports.photo_map import write_map

    t = pd.DataFrame({"id": [f"p{i}" for i in range(10)], "pred_latitude": np.linspace(-50, 50, 10),
                      "pred_longitude": np.linspace(-100, 100, 10)})
    page = write_map(t, tmp_path / "m.html", max_markers=3).read_text()
    assert "an even sample of 10 photos" in page
    data = json.loads(re.search(r'<script type="application/json"[^>]*>(.*?)</script>', page,
                                re.S).group(1))
    assert [r["id"] for r in data["rows"]] == ["p0", "p4", "p9"]
