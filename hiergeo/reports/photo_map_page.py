"""The photo map's inline CSS and JavaScript (:mod:`hiergeo.reports.photo_map` fills in the
data). No data in them: the page reads its JSON block and builds the DOM with
``textContent``, so no name from the table is ever parsed as HTML."""

CSS = """
*{box-sizing:border-box}
html,body{margin:0;height:100%;font:14px/1.35 system-ui,-apple-system,"Segoe UI",Roboto,
 "DejaVu Sans",sans-serif;color:#1d2327}
body{display:flex;flex-direction:column;background:PAGE}
header{display:flex;flex-wrap:wrap;align-items:baseline;gap:4px 18px;padding:8px 14px;
 background:#1f2d3a;color:#fff}
header h1{font-size:18px;margin:0}
.fact{margin-right:14px;color:#dfe7ee}
main{position:relative;flex:1;min-height:0}
#map{position:absolute;inset:0;width:100%;height:100%;cursor:grab;touch-action:none;
 user-select:none;background:SEA}
#map.dragging{cursor:grabbing}
#sea{fill:SEA}
#land path{fill:LAND;stroke:BORDER;stroke-width:0.6px;vector-effect:non-scaling-stroke;
 stroke-linejoin:round}
#land path:hover{fill:#e0d7c0}
.mk{fill:none;stroke-linecap:round;vector-effect:non-scaling-stroke;pointer-events:none}
.link{stroke:#222;stroke-width:LINK_Wpx;stroke-dasharray:3 3;opacity:LINK_O;stroke-linecap:butt}
#hov .link{stroke:#000;stroke-width:2px;opacity:.9}
.truth-o{stroke:#000;stroke-width:TRUTH_Opx}.truth-i{stroke:#fff;stroke-width:TRUTH_Ipx}
.pred-o{stroke:#1b1b1b;stroke-width:PRED_Opx}
.pred{stroke-width:PRED_Ipx;pointer-events:stroke;cursor:pointer}
.pred:hover{stroke-width:15px}
#sel .link{stroke:#000;stroke-width:2.5px;opacity:1}
.count{font-weight:700;fill:#111;stroke:#fff;stroke-width:.22em;paint-order:stroke;
 pointer-events:none;font-family:system-ui,sans-serif}
#pbody ul.stack{list-style:none;margin:6px 0;padding:0}
#pbody ul.stack li{padding:4px 2px;border-top:1px solid #eee;cursor:pointer}
#pbody ul.stack li:hover{background:#f2f5f8}
#pbody a.back{cursor:pointer;color:#2a5d9f;text-decoration:underline;font-size:13px}
.missing{color:#666}
#sel .ring-o{stroke:#000;stroke-width:23px}#sel .ring-i{stroke:#fff;stroke-width:19px}
#sel .truth-o{stroke-width:11px}#sel .truth-i{stroke-width:7px}
/*LEVELS*/
#zoom{position:absolute;left:12px;top:12px;display:flex;flex-direction:column;gap:4px}
#zoom button{width:32px;height:32px;font-size:18px;border:1px solid #777;border-radius:4px;
 background:#fff;cursor:pointer}
#legend{position:absolute;left:12px;bottom:12px;background:rgba(255,255,255,.93);
 border:1px solid #999;border-radius:6px;padding:8px 12px;max-width:340px;font-size:13px}
#legend ul{list-style:none;margin:6px 0;padding:0}
#legend li{display:flex;align-items:center;gap:6px;margin:2px 0}
#legend small{color:#555}
#legend b{cursor:pointer}
#legend.folded ul,#legend.folded small{display:none}
#panel{position:absolute;right:12px;top:12px;bottom:12px;width:360px;overflow:auto;
 background:#fff;border:1px solid #888;border-radius:6px;padding:12px 14px;
 box-shadow:0 2px 10px rgba(0,0,0,.25)}
#panel[hidden]{display:none}
#pclose{position:absolute;right:8px;top:6px;border:0;background:none;font-size:22px;
 cursor:pointer}
#pbody img{display:block;max-width:100%;margin:0 auto 8px;border-radius:4px}
#pbody h2{font-size:16px;margin:0 24px 4px 0;word-break:break-all}
#pbody h3{font-size:13px;margin:12px 0 4px;color:#444}
.answer{font-weight:600;margin:4px 0}
.badge{display:inline-block;padding:1px 7px;border-radius:9px;font-size:12px;color:#000}
.badge.lv-country,.badge.lv-none{color:#fff}
.muted{color:#666;font-style:italic}
#pbody table{border-collapse:collapse;width:100%;font-size:13px}
#pbody td{padding:2px 4px;vertical-align:top;border-top:1px solid #eee}
#pbody td.p{text-align:right;white-space:nowrap;width:4.5em}
.bar{height:4px;background:#4a7bb7;border-radius:2px;margin-top:2px}
#pbody dl{display:grid;grid-template-columns:auto 1fr;gap:2px 10px;margin:8px 0;font-size:13px}
#pbody dt{color:#555}#pbody dd{margin:0;word-break:break-all}
"""

JS = r"""
(function () {
"use strict";
var data = JSON.parse(document.getElementById("photo-data").textContent);
var rows = data.rows;
var svg = document.getElementById("map");
var NS = svg.namespaceURI;
var panel = document.getElementById("panel"), body = document.getElementById("pbody");

function svgEl(tag, attrs) {
  var e = document.createElementNS(NS, tag);
  for (var k in attrs) e.setAttribute(k, attrs[k]);
  return e;
}
function el(tag, cls, text) {
  var e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}
function pct(p) { return p == null ? "\u2013" : (100 * p).toFixed(p >= 0.9995 ? 0 : 1) + "%"; }
function km(x) {
  return x < 10 ? x.toFixed(1) + " km" : Math.round(x).toLocaleString("en") + " km";
}
function deg(lat, lon) { return lat.toFixed(4) + ", " + lon.toFixed(4); }

// ---- markers. A marker is a zero-length path with a round cap and a non-scaling stroke: a
// dot of constant screen size that needs no update when zooming (restyling thousands of
// circles on every wheel step is what makes such maps slow). Lines and truths are one path
// each; each prediction is its own element (click target, hover title) above one outline
// path per level.
function dot(x, y) { return "M" + x + " " + y + "h0"; }
function linkPath(r) {   // the short way round, split at the antimeridian (see link_segments)
  return r.line.map(function (s) {
    return "M" + s[0] + " " + (-s[1]) + "L" + s[2] + " " + (-s[3]);
  }).join("");
}
var stacks = data.stacks || [], stackOf = {};   // row -> its stack (photos at one spot)
stacks.forEach(function (s, g) { s.rows.forEach(function (i) { stackOf[i] = g; }); });
function members(i) { return stackOf[i] != null ? stacks[stackOf[i]].rows : [i]; }
function tip(r) {
  return r.id + ": " + (r.ans || "(no answer)") +
         (r.err != null ? " \u2014 error " + km(r.err) : "");
}
(function build() {
  var links = [], truths = [], byLevel = {};
  var order = ["none", "country", "region", "subregion", "city"];   // finest on top
  order.forEach(function (lv) { byLevel[lv] = []; });
  rows.forEach(function (r, i) {
    if (r.tlat != null) { links.push(linkPath(r)); truths.push(dot(r.tlon, -r.tlat)); }
    if (stackOf[i] == null) (byLevel[r.lvl || "none"] || byLevel.none).push(["i", i, r]);
  });
  stacks.forEach(function (s, g) {   // one marker per stack, with its count beside it
    (byLevel[s.lvl || "none"] || byLevel.none).push(["g", g, s]);
  });
  var gl = document.getElementById("links"), gt = document.getElementById("truths");
  if (links.length) {
    gl.appendChild(svgEl("path", {d: links.join(""), "class": "mk link"}));
    gt.appendChild(svgEl("path", {d: truths.join(""), "class": "mk truth-o"}));
    gt.appendChild(svgEl("path", {d: truths.join(""), "class": "mk truth-i"}));
  }
  var fp = document.createDocumentFragment();
  order.forEach(function (lv) {
    var items = byLevel[lv];
    if (!items.length) return;
    fp.appendChild(svgEl("path", {d: items.map(function (m) {
      return dot(m[2].lon, -m[2].lat); }).join(""), "class": "mk pred-o"}));
    items.forEach(function (m) {
      var attrs = {d: dot(m[2].lon, -m[2].lat), "class": "mk pred lv-" + lv};
      attrs["data-" + m[0]] = m[1];
      var c = svgEl("path", attrs), title = svgEl("title", {});
      title.textContent = m[0] === "i" ? tip(m[2]) : m[2].rows.length +
        " photos predicted here:\n" + m[2].rows.slice(0, 12).map(function (i) {
          return tip(rows[i]); }).join("\n") + (m[2].rows.length > 12 ? "\n\u2026" : "");
      c.appendChild(title); fp.appendChild(c);
    });
  });
  document.getElementById("preds").appendChild(fp);
  var gc = document.getElementById("counts");
  stacks.forEach(function (s) {
    var t = svgEl("text", {x: s.lon, y: -s.lat, dx: "0.55em", dy: "-0.45em", "class": "count"});
    t.textContent = "\u00d7" + s.rows.length;
    gc.appendChild(t);
  });
})();
function drawFocus(g, list) {   // the lines and truths of these rows, drawn strongly
  var d = [], t = [];
  list.forEach(function (i) {
    var r = rows[i];
    if (r.tlat != null) { d.push(linkPath(r)); t.push(dot(r.tlon, -r.tlat)); }
  });
  if (!d.length) return;
  g.appendChild(svgEl("path", {d: d.join(""), "class": "mk link"}));
  g.appendChild(svgEl("path", {d: t.join(""), "class": "mk truth-o"}));
  g.appendChild(svgEl("path", {d: t.join(""), "class": "mk truth-i"}));
}
function hover(list) {
  var g = document.getElementById("hov");
  g.textContent = "";
  if (list) drawFocus(g, list);
}
function markerOf(e) {
  return e.target.closest ? e.target.closest("[data-i],[data-g]") : null;
}
svg.addEventListener("pointerover", function (e) {
  var t = markerOf(e);
  if (!t) return hover(null);
  hover(t.hasAttribute("data-g") ? stacks[+t.getAttribute("data-g")].rows
                                 : [+t.getAttribute("data-i")]);
});
svg.addEventListener("pointerout", function (e) { if (markerOf(e)) hover(null); });
function highlight(i) {   // the chosen row drawn again on top, larger, with its truth
  var g = document.getElementById("sel");
  g.textContent = "";
  if (i < 0) return;
  var r = rows[i], d = dot(r.lon, -r.lat);
  drawFocus(g, [i]);
  g.appendChild(svgEl("path", {d: d, "class": "mk ring-o"}));
  g.appendChild(svgEl("path", {d: d, "class": "mk ring-i"}));
  var a = {d: d, "class": "mk pred lv-" + (r.lvl || "none")};
  if (stackOf[i] != null) a["data-g"] = stackOf[i]; else a["data-i"] = i;
  g.appendChild(svgEl("path", a));
}

// ---- details panel
function row(dl, name, value) {
  dl.appendChild(el("dt", null, name)); dl.appendChild(el("dd", null, value));
}
function select(i, share) {
  highlight(i);
  body.textContent = "";
  if (i < 0) { panel.hidden = true; return; }
  var r = rows[i];
  if (r.th) {
    var img = el("img"); img.src = r.th; img.alt = "photo " + r.id; body.appendChild(img);
  } else {
    body.appendChild(el("p", "muted", "No thumbnail: " + (r.why || "unknown reason")));
  }
  if (r.credit) body.appendChild(el("p", "muted", "Photo: " + r.credit));
  if (stackOf[i] != null) {
    var back = el("a", "back", "\u2190 all " + members(i).length + " photos at this spot");
    back.addEventListener("click", function () { showStack(stackOf[i]); });
    body.appendChild(back);
  }
  body.appendChild(el("h2", null, r.id));
  body.appendChild(el("div", "answer", r.ans || "(no answer)"));
  body.appendChild(el("span", "badge lv-" + (r.lvl || "none"), data.levels[r.lvl || "none"]));
  var dl = el("dl");
  if (r.err != null) row(dl, "Error", km(r.err));
  row(dl, "Predicted", deg(r.lat, r.lon));
  if (r.tlat != null) row(dl, "True", deg(r.tlat, r.tlon));
  if (r.file) row(dl, "File", r.file);
  body.appendChild(dl);
  if (r.paths.length) {
    body.appendChild(el("h3", null, "Top paths"));
    var tb = el("table");
    r.paths.forEach(function (p, k) {
      var tr = el("tr"), td = el("td", null, (k + 1) + ". " + p[0]);
      var bar = el("div", "bar"); bar.style.width = Math.round(100 * (p[1] || 0)) + "%";
      td.appendChild(bar); tr.appendChild(td); tr.appendChild(el("td", "p", pct(p[1])));
      tb.appendChild(tr);
    });
    body.appendChild(tb);
  }
  if (r.levels.length) {
    body.appendChild(el("h3", null, "Along the top path"));
    var tl = el("table");
    r.levels.forEach(function (l) {   // [level, name, p, note]: a missing level says why
      var tr = el("tr");
      tr.appendChild(el("td", null, l[0]));
      if (l[1] == null) {
        tr.appendChild(el("td", "missing", "\u2014 " + (l[3] || "not predicted")));
        tr.appendChild(el("td", "p", ""));
      } else {
        var td = el("td", null, l[1]);
        if (l[3]) td.appendChild(el("span", "muted", " (" + l[3] + ")"));
        tr.appendChild(td); tr.appendChild(el("td", "p", pct(l[2])));
      }
      tl.appendChild(tr);
    });
    body.appendChild(tl);
  }
  panel.hidden = false;
  if (share) {
    try { history.replaceState(null, "", "#select=" + encodeURIComponent(r.id)); }
    catch (e) { /* some browsers refuse on file: URLs; the panel still opens */ }
  }
}
function showStack(g) {   // the list of the photos predicted at one spot
  var s = stacks[g];
  highlight(-1);
  drawFocus(document.getElementById("sel"), s.rows);
  body.textContent = "";
  body.appendChild(el("h2", null, s.rows.length + " photos predicted at this spot"));
  body.appendChild(el("p", "muted", deg(s.lat, s.lon) + " \u2014 click one for its details"));
  var ul = el("ul", "stack");
  s.rows.forEach(function (i) {
    var r = rows[i], li = el("li");
    li.appendChild(el("span", "badge lv-" + (r.lvl || "none"), "\u25cf"));
    li.appendChild(document.createTextNode(" " + tip(r)));
    li.addEventListener("click", function () { select(i, true); });
    ul.appendChild(li);
  });
  body.appendChild(ul);
  panel.hidden = false;
}
document.getElementById("pclose").addEventListener("click", function () {
  select(-1, false);
  try { history.replaceState(null, "", location.pathname + location.search); } catch (e) {}
});
function fromHash() {
  var m = /^#select=(.*)$/.exec(location.hash);
  if (!m) return;
  var id;
  try { id = decodeURIComponent(m[1]); } catch (e) { return; }
  for (var i = 0; i < rows.length; i++) if (rows[i].id === id) { select(i, false); return; }
}
window.addEventListener("hashchange", fromHash);

// ---- pan and zoom: the view is a centre and a scale (degrees per pixel); the viewBox always
// has the element's aspect ratio, so it is exactly what is seen.
var view = {cx: 0, cy: 0, k: 1};
function size() {
  var b = svg.getBoundingClientRect();
  return [Math.max(b.width, 1), Math.max(b.height, 1)];
}
function clamp(x, lo, hi) { return lo > hi ? (lo + hi) / 2 : Math.min(Math.max(x, lo), hi); }
function apply() {
  var s = size();
  view.k = clamp(view.k, 2e-5, 720 / s[0]);
  var w = s[0] * view.k, h = s[1] * view.k;
  view.cx = clamp(view.cx, -190 + w / 2, 190 - w / 2);   // keep the world in sight
  view.cy = clamp(view.cy, -92 + h / 2, 92 - h / 2);
  svg.setAttribute("viewBox", [view.cx - w / 2, view.cy - h / 2, w, h].join(" "));
  // stack counts: 12 screen pixels at every zoom (one attribute; the offsets are in em)
  document.getElementById("counts").setAttribute("font-size", 12 * view.k);
}
function fit(box) {   // [x, y, w, h] in map units
  var s = size();
  view = {cx: box[0] + box[2] / 2, cy: box[1] + box[3] / 2,
          k: Math.max(box[2] / s[0], box[3] / s[1])};
  apply();
}
function fitPhotos() {
  if (!rows.length) return fit(data.view);
  var x0 = 1e9, x1 = -1e9, y0 = 1e9, y1 = -1e9;
  rows.forEach(function (r) {
    x0 = Math.min(x0, r.lon); x1 = Math.max(x1, r.lon);
    y0 = Math.min(y0, -r.lat); y1 = Math.max(y1, -r.lat);
  });
  var pad = Math.max(1, 0.08 * Math.max(x1 - x0, y1 - y0));
  fit([x0 - pad, y0 - pad, x1 - x0 + 2 * pad, y1 - y0 + 2 * pad]);
}
function zoomAt(f, cx, cy) {
  var b = svg.getBoundingClientRect();
  var px = view.cx + (cx - b.left - b.width / 2) * view.k;   // the point under the cursor
  var py = view.cy + (cy - b.top - b.height / 2) * view.k;
  var k = clamp(view.k * f, 2e-5, 720 / Math.max(b.width, 1));
  f = k / view.k;
  view = {cx: px - (px - view.cx) * f, cy: py - (py - view.cy) * f, k: k};
  apply();
}
function zoomCentre(f) {
  var b = svg.getBoundingClientRect();
  zoomAt(f, b.left + b.width / 2, b.top + b.height / 2);
}
svg.addEventListener("wheel", function (e) {
  e.preventDefault();
  var dy = e.deltaY * (e.deltaMode === 1 ? 33 : e.deltaMode === 2 ? 400 : 1);
  zoomAt(Math.exp(Math.max(-2, Math.min(2, dy * 0.0015))), e.clientX, e.clientY);
}, {passive: false});
document.getElementById("zin").addEventListener("click", function () { zoomCentre(1 / 1.6); });
document.getElementById("zout").addEventListener("click", function () { zoomCentre(1.6); });
document.getElementById("zhome").addEventListener("click", function () { fit(data.view); });
document.getElementById("zfit").addEventListener("click", fitPhotos);
document.getElementById("legend").addEventListener("click", function () {
  this.classList.toggle("folded");
});
window.addEventListener("keydown", function (e) {
  if (e.key === "+" || e.key === "=") zoomCentre(1 / 1.6);
  else if (e.key === "-") zoomCentre(1.6);
  else if (e.key === "Escape") select(-1, false);
});
var drag = null, dragged = false;
svg.addEventListener("pointerdown", function (e) {
  if (e.button !== 0) return;
  drag = {x: e.clientX, y: e.clientY, cx: view.cx, cy: view.cy, id: e.pointerId,
          on: false};
  dragged = false;
});
svg.addEventListener("pointermove", function (e) {
  if (!drag) return;
  var dx = e.clientX - drag.x, dy = e.clientY - drag.y;
  if (!drag.on) {
    if (dx * dx + dy * dy < 16) return;   // a click, not yet a drag
    drag.on = true; dragged = true;
    svg.setPointerCapture(drag.id); svg.classList.add("dragging");
  }
  view.cx = drag.cx - dx * view.k; view.cy = drag.cy - dy * view.k;
  apply();
});
function endDrag() { drag = null; svg.classList.remove("dragging"); }
svg.addEventListener("pointerup", endDrag);
svg.addEventListener("pointercancel", endDrag);
svg.addEventListener("click", function (e) {
  if (dragged) { dragged = false; return; }
  var t = markerOf(e);
  if (t && t.hasAttribute("data-g")) showStack(+t.getAttribute("data-g"));
  else if (t) select(+t.getAttribute("data-i"), true);
});
window.addEventListener("resize", apply);
fit(data.view);
fromHash();
})();
"""
