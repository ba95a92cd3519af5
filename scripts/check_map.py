"""Open an HTML map in headless Chromium, offline, and say what it loaded and what it drew.

    python scripts/check_map.py MAP.html --screenshot OUT.png [--select ID]

Chromium runs with a dead proxy (127.0.0.1:9) and every host name mapped to nowhere, so nothing
can leave the machine even if the page tried; its net log still records each attempt. The
report lists:

- ``requests_off_machine``: URLs the *page* asked for whose scheme is not ``file:``/``data:``;
- ``chromium_internal``: requests Chromium made on its own (sign-in, search, preconnects). They
  are told apart by the net log's own fields: a request started on the page's behalf carries the
  page's opaque origin (``initiator: "null"``) and a ``file://`` network isolation key, while
  the browser's own requests have ``initiator: "not an origin"`` and a Google isolation key.
  Preconnects (``HTTP_STREAM_JOB_CONTROLLER`` with ``is_preconnect``) with no URL request
  behind them are the browser's too.
- ``console``, ``js_errors``, ``blocked_by_csp``: the page's console lines, its uncaught
  errors, and loads its Content-Security-Policy refused (those never reach the net log);
- ``screenshot``: size, the share of pixels that are not the background, how many pixels look
  like land and like each marker colour.

Exit status 1 when the page made an off-machine request (or tried one that its CSP refused),
threw an uncaught error, or the screenshot looks blank.
Chromium is not a dependency of hiergeo: only this script and its test need it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

try:
    from hiergeo.reports.photo_map import LAND_COLOUR, LEVEL_COLOURS
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from hiergeo.reports.photo_map import LAND_COLOUR, LEVEL_COLOURS

TIMEOUT_S = 60
WINDOW = (1400, 800)
#: Chromium's own background traffic, turned off as far as flags allow.
QUIET_FLAGS = [
    "--disable-background-networking", "--disable-component-update", "--no-first-run",
    "--disable-default-apps", "--disable-sync", "--metrics-recording-only",
    "--disable-features=Translate,OptimizationHints,MediaRouter,NetworkTimeServiceQuerying,"
    "AutofillServerCommunication,PreconnectToSearch",
    "--disable-domain-reliability", "--disable-client-side-phishing-detection", "--no-pings",
    "--disable-breakpad", "--no-default-browser-check", "--password-store=basic",
    "--use-mock-keychain",
]
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:", "chrome:", "chrome-extension:",
                 "devtools:")
#: Pixels within this RGB distance of a colour count as that colour.
COLOUR_TOL = 28.0


def find_chromium() -> str | None:
    """Debian's ``/usr/bin/chromium`` or whatever ``chromium`` is on PATH."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


# ---------------------------------------------------------------------------------------------
# Net log


def read_net_log(path: str | Path) -> tuple[dict, list[dict]]:
    """``(constants, events)`` of a Chromium net log, also when Chromium died before closing
    the JSON (the file is written one event per line, so the complete lines still parse)."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    try:
        whole = json.loads(text)
        return whole.get("constants", {}), whole.get("events", [])
    except json.JSONDecodeError:
        pass
    constants, events = {}, []
    for line in text.splitlines():
        line = line.strip().rstrip(",")
        if line.startswith('{"constants"'):
            try:
                constants = json.loads(line + "}").get("constants", {})
            except json.JSONDecodeError:
                constants = {}
            continue
        if line.endswith("]"):  # the last event closes the list
            line = line[:-1]
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue  # the cut-off last line
        if isinstance(event, dict) and "source" in event:
            events.append(event)
    return constants, events


def classify_requests(constants: dict, events: list[dict]) -> dict:
    """Off-machine URLs the page asked for, and those Chromium asked for on its own."""
    names = {v: k for k, v in constants.get("logEventTypes", {}).items()}
    sources = {v: k for k, v in constants.get("logSourceType", {}).items()}
    by_source: dict[int, dict] = {}
    preconnects = []
    for ev in events:
        params = ev.get("params") or {}
        src = ev.get("source") or {}
        kind = sources.get(src.get("type"), str(src.get("type")))
        etype = names.get(ev.get("type"), str(ev.get("type")))
        if kind == "URL_REQUEST" and params:
            info = by_source.setdefault(src.get("id"), {"urls": [], "initiator": None,
                                                          "nik": None})
            if "url" in params and params["url"] not in info["urls"]:
                info["urls"].append(params["url"])
            if etype == "URL_REQUEST_START_JOB":
                info["initiator"] = params.get("initiator", info["initiator"])
                info["nik"] = params.get("network_isolation_key", info["nik"])
        elif etype == "HTTP_STREAM_JOB_CONTROLLER" and params.get("is_preconnect"):
            preconnects.append(params.get("url", "?"))
    page, internal = [], []
    for info in by_source.values():
        off = [u for u in info["urls"] if not u.lower().startswith(LOCAL_SCHEMES)]
        if not off:
            continue
        nik = info["nik"] or ""
        browser_own = info["initiator"] == "not an origin" and "file://" not in nik
        # Unknown provenance counts against the page: better a false alarm than a miss.
        (internal if browser_own else page).extend(off)
    internal.extend(f"{u} (preconnect)" for u in preconnects)
    return {"requests_off_machine": sorted(set(page)), "chromium_internal": sorted(set(internal))}


def console_messages(stderr: str) -> dict:
    """The page's console lines from Chromium's stderr (``--enable-logging=stderr``): all of
    them, the uncaught errors, and the loads its Content-Security-Policy refused (a refused
    load never reaches the net log, so this is the second place an attempt shows up)."""
    lines = [m.group(1) for m in re.finditer(r":CONSOLE(?:\(\d+\))?:?\d*\] (.*)", stderr)]
    return {
        "console": lines,
        "js_errors": [m for m in lines if "Uncaught" in m],
        "blocked_by_csp": [m for m in lines if "Content Security Policy" in m
                           or "Refused to" in m],
    }


# ---------------------------------------------------------------------------------------------
# Screenshot


def _hex_rgb(colour: str) -> np.ndarray:
    colour = colour.lstrip("#")
    return np.array([int(colour[i:i + 2], 16) for i in (0, 2, 4)], np.float64)


def describe_screenshot(path: str | Path, colours: dict[str, str] | None = None) -> dict:
    """Size, share of non-background pixels, pixels near the land and each marker colour, and
    near each of ``colours`` (name -> "#rrggbb"), if given."""
    from PIL import Image

    extra = colours
    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB"), np.float64)
    h, w, _ = rgb.shape
    flat = rgb.reshape(-1, 3)
    colours, counts = np.unique(flat.astype(np.uint8), axis=0, return_counts=True)
    background = colours[int(np.argmax(counts))].astype(np.float64)

    def near(c):
        return int((np.linalg.norm(flat - c, axis=1) < COLOUR_TOL).sum())

    non_bg = float((np.linalg.norm(flat - background, axis=1) > 10).mean())
    markers = {(lv or "none"): near(_hex_rgb(c)) for lv, c in LEVEL_COLOURS.items()}
    return {
        "width": w, "height": h,
        "background_rgb": background.astype(int).tolist(),
        "non_background_share": round(non_bg, 4),
        "land_pixels": near(_hex_rgb(LAND_COLOUR)),
        "marker_pixels": markers,
        "distinct_colours": int(len(colours)),
        "other_pixels": {name: near(_hex_rgb(c)) for name, c in (extra or {}).items()},
    }


def looks_blank(shot: dict) -> bool:
    """Blank: nearly one colour, or no land drawn."""
    return shot["non_background_share"] < 0.02 or shot["land_pixels"] < 0.02 * (
        shot["width"] * shot["height"])


# ---------------------------------------------------------------------------------------------
# Chromium


def check(html_path, screenshot_path, *, select: str | None = None,
          colours: dict[str, str] | None = None, timeout_s: float = TIMEOUT_S,
          window: tuple[int, int] = WINDOW) -> dict:
    """Render ``html_path`` in headless Chromium (offline), screenshot it, read the net log.

    ``select`` opens ``#select=<id>`` (the row's detail panel); ``colours`` (name ->
    "#rrggbb") are counted in the screenshot too, e.g. a known thumbnail's colour. Returns the
    report dict, with ``ok`` False when the page requested (or tried to request) anything off
    the machine, threw an uncaught error, or the screenshot is blank. Raises
    FileNotFoundError when there is no Chromium.
    """
    from urllib.parse import quote

    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError("no chromium on PATH or at /usr/bin/chromium")
    html_path = Path(html_path).resolve()
    screenshot_path = Path(screenshot_path).resolve()
    screenshot_path.unlink(missing_ok=True)
    url = html_path.as_uri() + (f"#select={quote(select, safe='')}" if select else "")
    with tempfile.TemporaryDirectory(prefix="check_map_") as tmp:
        netlog = Path(tmp) / "netlog.json"
        cmd = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--window-size={window[0]},{window[1]}", f"--screenshot={screenshot_path}",
            f"--log-net-log={netlog}", "--net-log-capture-mode=Default",
            "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",
            f"--user-data-dir={Path(tmp) / 'profile'}", "--virtual-time-budget=3000",
            "--enable-logging=stderr", "--v=0", *QUIET_FLAGS, url,
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True, text=True, errors="replace")
        timed_out = False
        try:
            _, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)  # our own session: chromium and its helpers
            _, err = proc.communicate()
        report: dict = {"html": str(html_path), "url": url, "chromium": chromium,
                        "returncode": proc.returncode, "timed_out": timed_out,
                        **console_messages(err or "")}
        if netlog.exists():
            report.update(classify_requests(*read_net_log(netlog)))
        else:
            report.update(requests_off_machine=[], chromium_internal=[],
                          net_log_missing=True)
    if screenshot_path.exists():
        report["screenshot"] = {"path": str(screenshot_path),
                                **describe_screenshot(screenshot_path, colours)}
        blank = looks_blank(report["screenshot"])
    else:
        report["screenshot"] = None
        report["stderr_tail"] = (err or "")[-2000:]
        blank = True
    report["blank"] = blank
    report["ok"] = not (report["requests_off_machine"] or report["blocked_by_csp"]
                        or report["js_errors"] or blank or report.get("net_log_missing"))
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("html")
    parser.add_argument("--screenshot", required=True)
    parser.add_argument("--select", help="open the panel of this row id (#select=ID)")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S)
    args = parser.parse_args(argv)
    report = check(args.html, args.screenshot, select=args.select, timeout_s=args.timeout)
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
