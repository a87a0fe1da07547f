// The crystalline dashboard, drawn in the browser from the small dicts the kernel sends.
//
// Traits (see widget.py): palette (colours and names, from crystalline.viz.style), status,
// groups, curves (+ curves_recent: the steps since), split, tree_layout, tree (+ tree_values),
// stream (+ stream_intervals), actions, message, errors. tree_values and stream_intervals are
// binary: packed little-endian records (panels.py TREE_RECORD, STREAM_RECORD), read here.
// Panels: status line, controls, group load bars (HTML), loss / tokens/s / memory curves
// (canvas; wheel zooms, drag pans, double-click resets), time split (canvas), the sphere tree
// (canvas; hover shows a sphere), the task stream (canvas; hover shows an interval).
// Everything is drawn here: the kernel only sends data. No framework, no network.

const FONT = "12px system-ui, -apple-system, 'Segoe UI', sans-serif";

// The packed records of panels.py: [name, type, byte offset] and the record size.
const TREE_RECORD = { size: 18, fields: [["tokens_per_s", "f4", 0], ["ratio", "f4", 4], ["bytes", "f8", 8],
                                         ["phase", "u1", 16], ["slowed", "u1", 17]] };
const STREAM_RECORD = { size: 16, fields: [["start_ms", "f4", 0], ["end_ms", "f4", 4], ["step", "i4", 8],
                                           ["row", "u2", 12], ["phase", "u1", 14]] };
const READ = { f4: (v, at) => v.getFloat32(at, true), f8: (v, at) => v.getFloat64(at, true),
               i4: (v, at) => v.getInt32(at, true), u2: (v, at) => v.getUint16(at, true),
               u1: (v, at) => v.getUint8(at) };

// A binary trait (DataView, typed array or ArrayBuffer) as columns; NaN floats become null.
function unpack(record, value) {
  const view = value instanceof DataView ? value
    : value instanceof ArrayBuffer ? new DataView(value)
    : value && value.buffer ? new DataView(value.buffer, value.byteOffset, value.byteLength) : null;
  const n = view ? Math.floor(view.byteLength / record.size) : 0;
  const out = {};
  for (const [name, type, offset] of record.fields) {
    const column = new Array(n), read = READ[type];
    for (let i = 0; i < n; i++) {
      const x = read(view, i * record.size + offset);
      column[i] = Number.isNaN(x) ? null : x;
    }
    out[name] = column;
  }
  return out;
}

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function human(x, digits = 3) {
  if (x === null || x === undefined || !isFinite(x)) return "–";
  const a = Math.abs(x);
  for (const [scale, suffix] of [[1e9, "G"], [1e6, "M"], [1e3, "k"]]) {
    if (a >= scale) return (x / scale).toPrecision(digits) + suffix;
  }
  return Number(x.toPrecision(digits)).toString();
}

function bytes(b) {
  for (const [p, unit] of [[3, "GiB"], [2, "MiB"], [1, "KiB"]]) {
    if (b >= 1024 ** p) return (b / 1024 ** p).toFixed(1) + " " + unit;
  }
  return b + " bytes";
}

function hexToRgb(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

// ratio -> colour on the anchored throughput scale (stops from the palette).
function throughputColor(stops, ratio) {
  if (ratio === null || ratio === undefined) return null;
  if (ratio <= stops[0][0]) return stops[0][1];
  for (let i = 1; i < stops.length; i++) {
    const [x1, c1] = stops[i];
    if (ratio <= x1) {
      const [x0, c0] = stops[i - 1];
      const t = (ratio - x0) / (x1 - x0);
      const a = hexToRgb(c0), b = hexToRgb(c1);
      return `rgb(${a.map((v, k) => Math.round(v + t * (b[k] - v))).join(",")})`;
    }
  }
  return stops[stops.length - 1][1];
}

// A canvas that follows its box's width (fluid) and the screen's pixel ratio.
function fluidCanvas(parent, height, draw) {
  const canvas = h("canvas");
  parent.append(canvas);
  const state = { width: 0, height, draw };
  const resize = () => {
    const width = Math.max(120, parent.clientWidth);
    const ratio = window.devicePixelRatio || 1;
    state.width = width;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(state.height * ratio);
    canvas.style.width = width + "px";
    canvas.style.height = state.height + "px";
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.font = FONT;
    state.draw(ctx, width, state.height);
  };
  state.canvas = canvas;
  state.redraw = resize;
  state.setHeight = (hgt) => { if (hgt !== state.height) { state.height = hgt; } };
  return state;
}

function panel(title, cls) {
  const body = h("div", { class: "cr-body" });
  const note = h("div", { class: "cr-note" });
  const heading = h("div", { class: "cr-title", text: title });
  const box = h("div", { class: "cr-panel " + cls }, heading, note, body);
  return { box, body, note, heading };
}

// Robust y-limits: the 2nd to 98th percentile of what is visible, padded, so one spike after
// a pause, resize or restart does not flatten the curve.
function robustRange(values, anchorZero) {
  const v = values.filter((x) => x !== null && isFinite(x)).sort((a, b) => a - b);
  if (!v.length) return [0, 1];
  const q = (p) => v[Math.min(v.length - 1, Math.max(0, Math.round(p * (v.length - 1))))];
  let lo = v.length >= 20 ? q(0.02) : v[0];
  let hi = v.length >= 20 ? q(0.98) : v[v.length - 1];
  if (anchorZero) lo = Math.min(0, lo);
  const pad = Math.max((hi - lo) * 0.08, Math.abs(hi) * 1e-3, 1e-9);
  return [anchorZero ? lo : lo - pad, hi + pad];
}

function niceTicks(lo, hi, n = 4) {
  const span = hi - lo;
  if (!(span > 0)) return [lo];
  const step0 = span / n;
  const mag = 10 ** Math.floor(Math.log10(step0));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => span / s <= n) || 10 * mag;
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + 1e-12; t += step) ticks.push(t);
  return ticks;
}

// One curve chart with zoom (wheel), pan (drag) and reset (double-click) on the step axis.
function curveChart(parent, title, opts) {
  const p = panel(title, "cr-curve");
  parent.append(p.box);
  const chart = { data: null, view: null, drag: null };
  const margin = { l: 48, r: 10, t: 6, b: 22 };
  const c = fluidCanvas(p.body, 170, (ctx, W, H) => {
    ctx.clearRect(0, 0, W, H);
    const d = chart.data;
    if (!d || !d.x.length) return;
    const xs = d.x;
    const [x0, x1] = chart.view || [xs[0], xs[xs.length - 1] + (xs.length === 1 ? 1 : 0)];
    const visible = [];
    for (const s of d.series) {
      const sx = s.x || xs;
      s.y.forEach((y, i) => { if (sx[i] >= x0 && sx[i] <= x1) visible.push(y); });
    }
    const [y0, y1] = robustRange(visible, opts.anchorZero);
    const px = (x) => margin.l + ((x - x0) / (x1 - x0 || 1)) * (W - margin.l - margin.r);
    const py = (y) => H - margin.b - ((y - y0) / (y1 - y0 || 1)) * (H - margin.t - margin.b);
    ctx.strokeStyle = "#e6e6e6"; ctx.fillStyle = "#666"; ctx.lineWidth = 1;
    ctx.textAlign = "right"; ctx.textBaseline = "middle";
    for (const t of niceTicks(y0, y1)) {
      ctx.beginPath(); ctx.moveTo(margin.l, py(t)); ctx.lineTo(W - margin.r, py(t)); ctx.stroke();
      ctx.fillText(opts.format(t), margin.l - 4, py(t));
    }
    ctx.textAlign = "center"; ctx.textBaseline = "top";
    for (const t of niceTicks(x0, x1, 6)) {
      if (Number.isInteger(t)) ctx.fillText(String(t), px(t), H - margin.b + 4);
    }
    ctx.save();
    ctx.beginPath(); ctx.rect(margin.l, margin.t, W - margin.l - margin.r, H - margin.t - margin.b);
    ctx.clip();
    for (const s of d.series) {
      ctx.strokeStyle = s.color; ctx.fillStyle = s.color; ctx.lineWidth = s.width || 1.5;
      if (s.dots) {
        s.x.forEach((x, i) => {
          if (s.y[i] === null) return;
          ctx.beginPath(); ctx.arc(px(x), py(s.y[i]), 3, 0, 2 * Math.PI); ctx.fill();
        });
        continue;
      }
      ctx.beginPath();
      let pen = false;
      xs.forEach((x, i) => {
        const y = s.y[i];
        if (y === null || (d.cut && d.cut[i])) pen = false;
        if (y === null) return;
        const X = px(x), Y = Math.max(-1e4, Math.min(1e4, py(y)));
        if (pen) ctx.lineTo(X, Y); else ctx.moveTo(X, Y);
        pen = true;
      });
      ctx.stroke();
    }
    ctx.restore();
    c.canvas.dataset.view = chart.view ? chart.view.map((v) => v.toFixed(1)).join(",") : "";
    if (chart.view) {
      ctx.fillStyle = "#999"; ctx.textAlign = "right"; ctx.textBaseline = "top";
      ctx.fillText("zoomed: double-click to reset", W - margin.r, margin.t);
    }
  });
  const toStep = (ev) => {
    const d = chart.data;
    const [x0, x1] = chart.view || [d.x[0], d.x[d.x.length - 1] + (d.x.length === 1 ? 1 : 0)];
    const r = c.canvas.getBoundingClientRect();
    const f = (ev.clientX - r.left - margin.l) / (r.width - margin.l - margin.r);
    return { x0, x1, at: x0 + f * (x1 - x0) };
  };
  c.canvas.addEventListener("wheel", (ev) => {
    if (!chart.data || chart.data.x.length < 2) return;
    ev.preventDefault();
    const { x0, x1, at } = toStep(ev);
    const k = ev.deltaY > 0 ? 1.25 : 0.8;
    const lo = at - (at - x0) * k, hi = at + (x1 - at) * k;
    chart.view = hi - lo >= 2 ? [lo, hi] : chart.view;
    c.redraw();
  }, { passive: false });
  c.canvas.addEventListener("mousedown", (ev) => {
    if (chart.data && chart.data.x.length > 1) chart.drag = { ...toStep(ev), clientX: ev.clientX };
  });
  window.addEventListener("mouseup", () => { chart.drag = null; });
  c.canvas.addEventListener("mousemove", (ev) => {
    if (!chart.drag) return;
    const { x0, x1, clientX } = chart.drag;
    const r = c.canvas.getBoundingClientRect();
    const shift = ((ev.clientX - clientX) / (r.width - margin.l - margin.r)) * (x1 - x0);
    chart.view = [x0 - shift, x1 - shift];
    c.redraw();
  });
  c.canvas.addEventListener("dblclick", () => { chart.view = null; c.redraw(); });
  chart.set = (data, note) => { chart.data = data; p.note.textContent = note; c.redraw(); };
  chart.canvas = c;
  return chart;
}

function render({ model, el }) {
  const pal = model.get("palette");
  // The views' data arrive as JSON text (see widget.py); parse each once per change.
  const cache = {};
  const get = (name) => {
    const text = model.get(name);
    if (!cache[name] || cache[name].text !== text) cache[name] = { text, value: JSON.parse(text || "{}") };
    return cache[name].value;
  };
  // A JSON view joined with its binary columns, decoded once per change of either.
  const joined = (name, binary, record) => {
    const meta = get(name), raw = model.get(binary), key = name + "+";
    if (!cache[key] || cache[key].meta !== meta || cache[key].raw !== raw) {
      cache[key] = { meta, raw, value: { ...meta, ...unpack(record, raw) } };
    }
    return cache[key].value;
  };
  const treeData = () => joined("tree", "tree_values", TREE_RECORD);
  const streamData = () => joined("stream", "stream_intervals", STREAM_RECORD);
  const root = h("div", { class: "crystalline-dashboard" });
  el.append(root);

  // ---------------------------------------------------------------- header, status, controls
  const title = h("div", { class: "cr-heading" });
  const detail = h("div", { class: "cr-detail" });
  const status = h("div", { class: "crystalline-status" });
  const buttons = {};
  const controls = h("div", { class: "cr-controls" });
  for (const name of ["start", "pause", "resume", "stop"]) {
    buttons[name] = h("button", { class: "cr-button cr-" + name, type: "button", text: name });
    buttons[name].addEventListener("click", () => model.send({ action: name }));
    controls.append(buttons[name]);
  }
  const workersBox = h("input", { class: "crystalline-workers", type: "text", size: "5",
                                  "aria-label": "workers" });
  const apply = h("button", { class: "cr-button cr-apply", type: "button", text: "apply" });
  const send = () => model.send({ action: "resize", workers: workersBox.value });
  apply.addEventListener("click", send);
  workersBox.addEventListener("keydown", (ev) => { if (ev.key === "Enter") send(); });
  controls.append(h("span", { class: "cr-label", text: "workers" }), workersBox, apply);
  const message = h("div", { class: "crystalline-message" });
  const errors = h("div", { class: "crystalline-errors" });
  root.append(h("div", { class: "cr-top" }, title, detail), status, controls, message, errors);

  const grid = h("div", { class: "cr-grid" });
  root.append(grid);

  // ---------------------------------------------------------------- group load (HTML bars)
  const groupsPanel = panel("Load per symmetry group", "cr-groups");
  grid.append(groupsPanel.box);
  const rows = [];
  for (let g = 0; g < 12; g++) {
    const fill = h("div", { class: "crystalline-bar-fill" });
    const track = h("div", { class: "crystalline-bar" }, fill, h("div", { class: "cr-fair" }));
    const value = h("span", { class: "cr-value" });
    const swatch = h("span", { class: "cr-swatch" });
    swatch.style.background = pal.groups[g];
    groupsPanel.body.append(h("div", { class: "cr-row" }, swatch,
                                h("span", { class: "cr-gname", text: "g" + g }), track, value));
    rows.push({ fill, value, track });
  }
  const groupsCaption = h("div", { class: "cr-caption" });
  groupsPanel.body.append(groupsCaption);

  // ---------------------------------------------------------------- the tree
  const treePanel = panel("Sphere tree", "cr-tree");
  grid.append(treePanel.box);
  const tooltip = h("div", { class: "crystalline-tooltip" });
  tooltip.style.display = "none";
  root.append(tooltip);
  let treeHits = [];
  const treeCanvas = fluidCanvas(treePanel.body, 300, (ctx, W, H) => {
    ctx.clearRect(0, 0, W, H);
    const L = get("tree_layout"), T = treeData();
    treeHits = [];
    if (!L.id || T.generation !== L.generation || T.ratio.length !== L.id.length) return;
    const [ex0, ex1, ey0, ey1] = L.extent;
    const scale = Math.min(W / (ex1 - ex0), (H - 24) / (ey1 - ey0));
    const cx = W / 2 - ((ex0 + ex1) / 2) * scale, cy = (H - 24) / 2 + ((ey0 + ey1) / 2) * scale;
    const at = (i) => [cx + L.x[i] * scale, cy - L.y[i] * scale];
    ctx.strokeStyle = "rgba(150,150,150,0.6)"; ctx.lineWidth = 0.8;
    L.id.forEach((id, i) => {
      if (L.parent[i] < 0) return;
      const [x, y] = at(i), [px, py] = at(L.parent[i]);
      ctx.beginPath(); ctx.moveTo(px, py); ctx.lineTo(x, y); ctx.stroke();
    });
    const counts = {};
    L.level.forEach((lv, i) => { const key = L.rank[i] + ":" + lv; counts[key] = (counts[key] || 0) + 1; });
    L.id.forEach((id, i) => {
      const lv = L.level[i];
      const gap = lv === 0 ? 40 : (2 * Math.PI * lv * scale) / counts[L.rank[i] + ":" + lv];
      const r = Math.max(2, Math.min(lv === 0 ? 14 : lv === 1 ? 11 : 8, gap * 0.42));
      const [x, y] = at(i);
      const role = L.role[i];
      const c = role === "worker" ? (throughputColor(pal.throughput_stops, T.ratio[i]) || pal.no_data)
                                  : pal.roles[role];
      ctx.fillStyle = c;
      ctx.strokeStyle = T.slowed[i] ? pal.slowed : "#333";
      ctx.lineWidth = T.slowed[i] ? 2.5 : 0.8;
      ctx.beginPath();
      if (role === "worker") ctx.arc(x, y, r, 0, 2 * Math.PI);
      else ctx.rect(x - r, y - r, 2 * r, 2 * r);
      ctx.fill(); if (r >= 3 || T.slowed[i]) ctx.stroke();
      if (lv <= 1 && r >= 9) {
        ctx.fillStyle = "#111"; ctx.textAlign = "center"; ctx.textBaseline = "middle";
        ctx.font = "10px system-ui, sans-serif";
        ctx.fillText(role === "worker" ? L.label[i].split(":").pop() : lv === 0 ? "N0" : "g" + L.group[i], x, y);
        ctx.font = FONT;
      }
      treeHits.push({ i, x, y, r: Math.max(r, 5) });
    });
    // The colour scale, anchored at the fair share.
    const stops = pal.throughput_stops;
    const lo = stops[0][0], hi = stops[stops.length - 1][0];
    const x0 = 40, x1 = W - 40, yb = H - 16;
    for (let k = 0; k <= 100; k++) {
      ctx.fillStyle = throughputColor(stops, lo + (k / 100) * (hi - lo));
      ctx.fillRect(x0 + (k / 100) * (x1 - x0), yb, (x1 - x0) / 100 + 1, 6);
    }
    ctx.fillStyle = "#555"; ctx.textBaseline = "top"; ctx.font = "10px system-ui, sans-serif";
    for (const [v, text] of [[lo, "≤" + lo + "×"], [1, "fair share"], [hi, "≥" + hi + "×"]]) {
      ctx.textAlign = v === lo ? "left" : v === hi ? "right" : "center";
      ctx.fillText(text, x0 + ((v - lo) / (hi - lo)) * (x1 - x0), yb + 7);
    }
    ctx.font = FONT;
  });
  const showTip = (ev, html) => {
    const r = root.getBoundingClientRect();
    tooltip.innerHTML = html;
    tooltip.style.display = "block";
    tooltip.style.left = (ev.clientX - r.left + 14) + "px";
    tooltip.style.top = (ev.clientY - r.top + 14) + "px";
  };
  const hideTip = () => { tooltip.style.display = "none"; };
  treeCanvas.canvas.addEventListener("mousemove", (ev) => {
    const rect = treeCanvas.canvas.getBoundingClientRect();
    const mx = ev.clientX - rect.left, my = ev.clientY - rect.top;
    let best = null, bestD = Infinity;
    for (const t of treeHits) {
      const d = Math.hypot(t.x - mx, t.y - my);
      if (d <= t.r + 3 && d < bestD) { best = t; bestD = d; }
    }
    if (!best) return hideTip();
    const L = get("tree_layout"), T = treeData(), i = best.i;
    const role = pal.role_labels[L.role[i]] || L.role[i];
    const phase = pal.phase_labels[pal.phases[T.phase[i]]] || "";
    showTip(ev, `<b>${L.label[i]}</b> · sphere ${L.id[i]} · ${role}<br>` +
      `group ${L.group[i] < 0 ? "–" : "g" + L.group[i]} · rank ${L.rank[i]} · level ${L.level[i]}<br>` +
      `${human(T.tokens_per_s[i])} tokens/s` +
      (T.ratio[i] !== null ? ` (${T.ratio[i].toFixed(2)}× fair)` : "") + `<br>` +
      `${bytes(T.bytes[i])} owned · ${phase}` + (T.slowed[i] ? `<br><b style="color:${pal.slowed}">slowed</b>` : ""));
  });
  treeCanvas.canvas.addEventListener("mouseleave", hideTip);

  // ---------------------------------------------------------------- time split
  const splitPanel = panel("Time split per sphere", "cr-split");
  grid.append(splitPanel.box);
  const splitLegend = h("div", { class: "cr-legend" });
  pal.time_columns.forEach((ph) => {
    const sw = h("span", { class: "cr-swatch" }); sw.style.background = pal.phase_colors[ph];
    splitLegend.append(h("span", { class: "cr-key" }, sw, pal.phase_labels[ph]));
  });
  splitPanel.body.append(splitLegend);
  const splitCanvas = fluidCanvas(splitPanel.body, 260, (ctx, W, H) => {
    ctx.clearRect(0, 0, W, H);
    const S = get("split");
    if (!S.labels || !S.labels.length) return;
    const n = S.labels.length, ml = 40, mb = 30, mt = 6;
    const totals = S.ms.map((r) => r.reduce((a, b) => a + (b || 0), 0));
    const top = Math.max(...totals, 1e-6) * 1.08;
    const bw = (W - ml - 6) / n;
    const py = (v) => H - mb - (v / top) * (H - mb - mt);
    ctx.strokeStyle = "#e6e6e6"; ctx.fillStyle = "#666"; ctx.textAlign = "right"; ctx.textBaseline = "middle";
    for (const t of niceTicks(0, top)) {
      ctx.beginPath(); ctx.moveTo(ml, py(t)); ctx.lineTo(W, py(t)); ctx.stroke();
      ctx.fillText(human(t), ml - 4, py(t));
    }
    S.ms.forEach((row, i) => {
      let base = 0;
      row.forEach((v, k) => {
        ctx.fillStyle = pal.phase_colors[pal.time_columns[k]];
        const y0 = py(base), y1 = py(base + (v || 0));
        ctx.fillRect(ml + i * bw + 0.5, y1, Math.max(1, bw - 1), y0 - y1);
        base += v || 0;
      });
      ctx.fillStyle = S.groups[i] < 0 ? pal.roles.node_zero : pal.groups[S.groups[i] % 12];
      ctx.fillRect(ml + i * bw + 0.5, H - mb + 2, Math.max(1, bw - 1), 4);
      if (S.slowed[i]) {
        ctx.fillStyle = pal.slowed; ctx.textAlign = "center"; ctx.textBaseline = "bottom";
        ctx.fillText("▼", ml + (i + 0.5) * bw, py(totals[i]));
      }
    });
    ctx.fillStyle = "#555"; ctx.textAlign = "center"; ctx.textBaseline = "top";
    const every = Math.max(1, Math.ceil(n / Math.max(1, (W - ml) / 34)));
    for (let i = 0; i < n; i += every) ctx.fillText(S.labels[i], ml + (i + 0.5) * bw, H - mb + 9);
    ctx.save(); ctx.translate(10, (H - mb) / 2); ctx.rotate(-Math.PI / 2);
    ctx.textAlign = "center"; ctx.fillText("ms per step", 0, 0); ctx.restore();
  });

  // ---------------------------------------------------------------- curves
  const curveRow = h("div", { class: "cr-curves" });
  root.append(curveRow);
  const lossChart = curveChart(curveRow, "Loss (nats/token)", { format: (v) => v.toFixed(2) });
  const tpsChart = curveChart(curveRow, "Throughput (tokens/s)", { format: human, anchorZero: true });
  const memChart = curveChart(curveRow, "Process memory (MiB)", { format: (v) => human(v) });

  // ---------------------------------------------------------------- task stream
  const streamPanel = panel("Task stream: who waited for whom at Point B", "cr-stream");
  root.append(streamPanel.box);
  const streamLegend = h("div", { class: "cr-legend" });
  pal.phases.filter((p) => p !== "idle").forEach((ph) => {
    const sw = h("span", { class: "cr-swatch" }); sw.style.background = pal.phase_colors[ph];
    streamLegend.append(h("span", { class: "cr-key" }, sw, pal.phase_labels[ph]));
  });
  const waitedLine = h("div", { class: "cr-caption crystalline-waited" });
  streamPanel.body.append(streamLegend, waitedLine);
  let streamHits = [];
  const streamCanvas = fluidCanvas(streamPanel.body, 200, (ctx, W, H) => {
    ctx.clearRect(0, 0, W, H);
    const S = streamData();
    streamHits = [];
    if (!S.row || !S.row.length) return;
    const ml = 44, mb = 20, n = S.rows.length;
    const rh = (H - mb) / n;
    const end = Math.max(...S.end_ms, 1e-3);
    const px = (ms) => ml + (ms / end) * (W - ml - 8);
    ctx.fillStyle = "#666"; ctx.textAlign = "center"; ctx.textBaseline = "top";
    for (const t of niceTicks(0, end, 8)) {
      ctx.strokeStyle = "#eeeeee"; ctx.beginPath(); ctx.moveTo(px(t), 0); ctx.lineTo(px(t), H - mb); ctx.stroke();
      ctx.fillText(human(t) + " ms", px(t), H - mb + 4);
    }
    S.row.forEach((r, k) => {
      const ph = pal.phases[S.phase[k]];
      if (ph === "idle") return;
      const x0 = px(S.start_ms[k]), x1 = Math.max(px(S.end_ms[k]), x0 + 0.7);
      ctx.fillStyle = pal.phase_colors[ph];
      ctx.fillRect(x0, r * rh + (rh > 4 ? 1 : 0), x1 - x0, Math.max(1, rh - (rh > 4 ? 2 : 0)));
      streamHits.push({ k, x0, x1, y0: r * rh, y1: (r + 1) * rh });
    });
    const waited = new Set(S.waited_for.map((w) => w.sphere));
    ctx.textAlign = "right"; ctx.textBaseline = "middle";
    const every = Math.max(1, Math.ceil(12 / rh));
    S.rows.forEach((sid, r) => {
      const mark = waited.has(sid);
      if (r % every && !mark) return;
      ctx.fillStyle = mark ? pal.phase_colors.wait_b : "#555";
      ctx.font = (mark ? "bold " : "") + "10px system-ui, sans-serif";
      ctx.fillText((mark ? "▶ " : "") + S.labels[r], ml - 4, (r + 0.5) * rh);
    });
    ctx.font = FONT;
  });
  streamCanvas.canvas.addEventListener("mousemove", (ev) => {
    const rect = streamCanvas.canvas.getBoundingClientRect();
    const mx = ev.clientX - rect.left, my = ev.clientY - rect.top;
    const hit = streamHits.find((t) => mx >= t.x0 - 1 && mx <= t.x1 + 1 && my >= t.y0 && my <= t.y1);
    if (!hit) return hideTip();
    const S = streamData(), k = hit.k;
    showTip(ev, `<b>${S.labels[S.row[k]]}</b> · step ${S.step[k]}<br>` +
      `${pal.phase_labels[pal.phases[S.phase[k]]]}: ${(S.end_ms[k] - S.start_ms[k]).toFixed(2)} ms`);
  });
  streamCanvas.canvas.addEventListener("mouseleave", hideTip);

  // ---------------------------------------------------------------- updates
  const drawStatus = () => {
    const s = get("status");
    title.textContent = s.title || "crystalline";
    detail.textContent = s.detail || "";
    const color = pal.states[s.state] || "#616161";
    const parts = [`<span class="cr-state" style="color:${color}">● ${s.state}</span>`,
                   `step <b>${(s.step || 0).toLocaleString("en")}</b>`];
    if (s.loss !== null && s.loss !== undefined) parts.push(`loss <b>${s.loss.toFixed(4)}</b>`);
    if (s.val_loss !== null && s.val_loss !== undefined) parts.push(`val <b>${s.val_loss.toFixed(4)}</b>`);
    if (s.tokens_per_s) parts.push(`<b>${human(s.tokens_per_s)}</b> tokens/s`);
    parts.push(`<b>${s.workers_text}</b>`);
    if (s.slowest >= 0) parts.push(`<span style="color:${pal.groups[s.slowest]}">${s.slowest_text}</span>`);
    status.innerHTML = parts.join(" &nbsp;·&nbsp; ") +
      (s.error ? `<div class="cr-error">training stopped on an error: ${escapeHtml(s.error)}</div>` : "");
    if (document.activeElement !== workersBox && !workersBox.dataset.touched) workersBox.value = s.workers;
  };
  workersBox.addEventListener("input", () => { workersBox.dataset.touched = "1"; });
  const drawActions = () => {
    const a = model.get("actions");
    controls.style.display = a.length ? "" : "none";
    for (const [name, b] of Object.entries(buttons)) {
      b.disabled = !a.includes(name);
      b.style.display = (name === "resume" ? a.includes("resume") : name === "pause" ? !a.includes("resume") : true) ? "" : "none";
    }
    workersBox.disabled = apply.disabled = !a.includes("resize");
  };
  const drawMessage = () => {
    const m = model.get("message");
    message.textContent = m.text || "";
    message.classList.toggle("cr-error", !!m.error);
    if (!m.error) delete workersBox.dataset.touched;
  };
  const drawErrors = () => {
    const e = model.get("errors");
    errors.innerHTML = Object.entries(e).map(([k, v]) => `<div>panel ${escapeHtml(k)} failed: ${escapeHtml(v)}</div>`).join("");
  };
  const drawGroups = () => {
    const G = get("groups");
    groupsPanel.note.textContent = G.note || "";
    if (!G.share) return;
    const top = 2 * G.fair_share;
    for (let g = 0; g < 12; g++) {
      const row = rows[g], level = G.level[g];
      row.fill.style.width = Math.min(100, (100 * G.share[g]) / top) + "%";
      row.fill.style.background = pal.load[level];
      row.track.dataset.level = level;
      row.value.innerHTML = !G.active[g] ? `<span class="cr-dim">no workers</span>` :
        level === "waiting" ? `<span class="cr-dim">–</span>` :
        `<span style="color:${pal.load[level]}">${(100 * G.share[g]).toFixed(1)}%</span> ${human(G.tokens_per_s[g])} tok/s`;
    }
    groupsCaption.innerHTML = `fair share ${(100 * G.fair_share).toFixed(1)}% (the line; a bar is full at twice it) · ` +
      `<span style="color:${pal.load.ok}">■</span> ≥90% · <span style="color:${pal.load.low}">■</span> 75–90% · ` +
      `<span style="color:${pal.load.straggler}">■</span> &lt;75%` +
      (G.slowest >= 0 ? ` · slowest: <b style="color:${pal.groups[G.slowest]}">g${G.slowest}</b>` : "");
  };
  const drawTree = () => {
    const L = get("tree_layout");
    const n = L.id ? L.id.length : 0;
    const workers = L.role ? L.role.filter((r) => r === "worker").length : 0;
    treePanel.heading.textContent = n ? `Sphere tree: ${workers} worker${workers === 1 ? "" : "s"}, ${n} spheres` : "Sphere tree";
    treePanel.note.textContent = n ? "" : "no tree yet";
    treeCanvas.setHeight(Math.max(260, Math.min(460, treePanel.body.clientWidth)));
    treeCanvas.redraw();
  };
  const drawSplit = () => {
    const S = get("split");
    splitPanel.heading.textContent = S.steps ? `Time split per sphere (last ${S.steps} step${S.steps === 1 ? "" : "s"})` : "Time split per sphere";
    splitPanel.note.textContent = S.note || "";
    splitCanvas.redraw();
  };
  const drawCurves = () => {
    const base = get("curves"), recent = get("curves_recent");
    const join = (k) => (base[k] || []).concat(recent[k] || []);
    const x = join("step"), cut = join("cut"), note = base.note || "";
    lossChart.set({ x, cut, series: [{ y: join("loss"), color: "#1f77b4" },
      { x: join("val_step"), y: join("val_loss"), color: "#d62728", dots: true }] }, note);
    tpsChart.set({ x, cut, series: [{ y: join("tokens_per_s"), color: "#2ca02c" }] }, note);
    memChart.set({ x, cut, series: [{ y: join("rss_mib"), color: "#9467bd" }] }, note);
  };
  const drawStream = () => {
    const S = get("stream");
    streamPanel.note.textContent = S.note || "";
    const n = S.rows ? S.rows.length : 0;
    streamCanvas.setHeight(Math.max(120, Math.min(520, 20 + n * 12)));
    waitedLine.innerHTML = (S.waited_for || []).slice(-3).map((w) =>
      `step ${w.step}: Point B waited <b>${w.ms.toFixed(1)} ms</b> for <b>${escapeHtml(w.label)}</b>`).join(" · ");
    streamCanvas.redraw();
  };
  const handlers = { status: drawStatus, actions: drawActions, message: drawMessage, errors: drawErrors,
                     groups: drawGroups, tree_layout: drawTree, tree: drawTree, split: drawSplit,
                     tree_values: drawTree, curves: drawCurves, curves_recent: drawCurves,
                     stream: drawStream, stream_intervals: drawStream };
  for (const [name, fn] of Object.entries(handlers)) model.on("change:" + name, fn);
  const onResize = () => drawAll();
  const drawAll = () => Object.values(handlers).forEach((fn) => fn());
  const observer = new ResizeObserver(onResize);
  observer.observe(root);
  requestAnimationFrame(drawAll);
  return () => {
    observer.disconnect();
    for (const [name, fn] of Object.entries(handlers)) model.off("change:" + name, fn);
  };
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

export default { render };
