// Run the photo map's page script under node with a tiny stand-in DOM and report, as JSON,
// what it drew and what clicking and hovering do (tests/test_photo_map.py; for machines
// without Chromium). Usage: node photo_map_dom.js MAP.html
"use strict";
const fs = require("fs");
const page = fs.readFileSync(process.argv[2], "utf8");
const json = page.match(/<script type="application\/json" id="photo-data">([\s\S]*?)<\/script>/)[1];
const code = page.match(/<script>([\s\S]*?)<\/script>/)[1];

function El(tag) {
  this.tag = tag; this.attrs = {}; this.children = []; this.listeners = {}; this.style = {};
  this.text = ""; this.hidden = true;
  this.classList = {toggle() {}, add() {}, remove() {}};
}
El.prototype = {
  setAttribute(k, v) { this.attrs[k] = String(v); },
  getAttribute(k) { return this.attrs[k]; },
  hasAttribute(k) { return k in this.attrs; },
  appendChild(c) { this.children.push(c); return c; },
  addEventListener(t, f) { (this.listeners[t] = this.listeners[t] || []).push(f); },
  set textContent(v) { this.text = String(v); this.children = []; },
  get textContent() { return this.text + this.children.map((c) => c.textContent || "").join(""); },
  getBoundingClientRect() { return {left: 0, top: 0, width: 1400, height: 860}; },
  setPointerCapture() {},
  closest() { return "data-i" in this.attrs || "data-g" in this.attrs ? this : null; },
};
const ids = {map: Object.assign(new El("svg"), {namespaceURI: "svg"})};
const document = {
  getElementById(id) { return id === "photo-data" ? {textContent: json} : (ids[id] = ids[id] || new El(id)); },
  createElementNS(ns, t) { return new El(t); },
  createElement(t) { return new El(t); },
  createDocumentFragment() { return new El("fragment"); },
  createTextNode(t) { return {textContent: t}; },
};
const window = {addEventListener() {}};
const location = {hash: "", pathname: "/map.html", search: ""};
const history = {replaceState() {}};
new Function("document", "window", "location", "history", code)(document, window, location, history);

function all(e, out) { out.push(e); (e.children || []).forEach((c) => all(c, out)); return out; }
const svg = ids.map, fire = (t, target) => svg.listeners[t].forEach((f) => f({target}));
const markers = all(ids.preds, []).filter((e) => e.attrs && ("data-i" in e.attrs || "data-g" in e.attrs));
const stack = markers.find((e) => "data-g" in e.attrs);
const report = {
  markers: markers.map((e) => ("data-g" in e.attrs ? "g" : "i") + (e.attrs["data-g"] || e.attrs["data-i"])),
  counts: ids.counts.children.map((c) => c.textContent),
  links: ids.links.children.map((c) => c.attrs.d),
};
fire("pointerover", stack || markers[0]);
report.hover_paths = ids.hov.children.length;
fire("pointerout", stack || markers[0]);
report.hover_paths_after = ids.hov.children.length;
if (stack) {
  fire("click", stack);
  report.stack_panel = {open: !ids.panel.hidden, title: ids.pbody.children.find((c) => c.tag === "h2").textContent,
                        items: ids.pbody.children.find((c) => c.tag === "ul").children.length};
  ids.pbody.children.find((c) => c.tag === "ul").children[0].listeners.click[0]();
}
else fire("click", markers[0]);
const tables = ids.pbody.children.filter((c) => c.tag === "table");
report.panel_levels = tables.length ? tables[tables.length - 1].children.map(
  (tr) => tr.children.map((td) => td.textContent)) : [];
process.stdout.write(JSON.stringify(report));
