/* switchscope explorer: clickable maps, per-pixel curves, generator slider.
 * Reads the JSON in <script id="ss-data" type="application/json">; no network, no libraries.
 * Plotted values are exposed in data-values attributes (JSON arrays) so tests can check them. */
(function () {
  "use strict";
  var node = document.getElementById("ss-data");
  if (!node) { return; }
  var D = JSON.parse(node.textContent);
  var SVGNS = "http://www.w3.org/2000/svg";
  var COLORS = {raw: "#999999", clean: "#1f77b4", fit: "#d62728", reconstruction: "#2ca02c"};
  var nSub = D.sub_grid[0] * D.sub_grid[1];
  var nSteps = D.voltage.length;
  var selected = {r: Math.floor(D.sub_grid[0] / 2), c: Math.floor(D.sub_grid[1] / 2)};

  /* Blocks are deflated int16/int32 differences of quantized values (see decode_block in
   * switchscope/report/html.py); the browser inflates them with DecompressionStream. */
  function inflate(b64) {
    var bin = atob(b64), bytes = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) { bytes[i] = bin.charCodeAt(i); }
    var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Response(stream).arrayBuffer();
  }

  function unpack(block) {
    var jobs = [inflate(block.b64)];
    if (block.nan_b64) { jobs.push(inflate(block.nan_b64)); }
    return Promise.all(jobs).then(function (bufs) {
      /* the bytes come grouped by place (all first bytes, then all second bytes ...) */
      var size = block.dtype === "i2" ? 2 : 4, shuffled = new Uint8Array(bufs[0]);
      var bytes = new Uint8Array(shuffled.length), n = shuffled.length / size;
      for (var k = 0; k < size; k++) {
        for (var j = 0; j < n; j++) { bytes[j * size + k] = shuffled[k * n + j]; }
      }
      var d = size === 2 ? new Int16Array(bytes.buffer) : new Int32Array(bytes.buffer);
      var mask = bufs.length > 1 ? new Uint8Array(bufs[1]) : null;
      var vals = new Float64Array(block.n), q = 0;
      for (var i = 0; i < block.n; i++) {
        q += d[i];
        vals[i] = (mask && ((mask[i >> 3] >> (i & 7)) & 1)) ? NaN : block.offset + q * block.scale;
      }
      block.values = vals;
    });
  }

  function decode(block, start, count) {
    var out = new Array(count);
    for (var i = 0; i < count; i++) {
      var v = block.values[start + i];
      out[i] = isNaN(v) ? null : v;
    }
    return out;
  }

  function colorFor(map, v) {
    if (v === null) { return [255, 255, 255]; }
    if (map.categorical) { return D.categorical[((Math.round(v) % 10) + 10) % 10]; }
    var t = (map.vmax > map.vmin) ? (v - map.vmin) / (map.vmax - map.vmin) : 0.5;
    t = Math.max(0, Math.min(1, t));
    return D.colormap[Math.round(t * (D.colormap.length - 1))];
  }

  /* Paint values (one per sub-grid pixel) at S x S screen pixels each, then the cross-hair. */
  function paint(canvas, vals, scaleMap) {
    var ctx = canvas.getContext("2d");
    var R = D.sub_grid[0], C = D.sub_grid[1], S = +canvas.getAttribute("data-scale") || 1;
    var img = ctx.createImageData(C * S, R * S);
    for (var r = 0; r < R; r++) {
      for (var c = 0; c < C; c++) {
        var col = colorFor(scaleMap, vals[r * C + c]);
        for (var dy = 0; dy < S; dy++) {
          for (var dx = 0; dx < S; dx++) {
            var o = 4 * ((r * S + dy) * C * S + c * S + dx);
            img.data[o] = col[0]; img.data[o + 1] = col[1]; img.data[o + 2] = col[2]; img.data[o + 3] = 255;
          }
        }
      }
    }
    ctx.putImageData(img, 0, 0);
    /* cross-hair: lines through the selected pixel, white under black so it shows on any colour */
    /* on pixel centres (+0.5) so that a 1-pixel line is crisp, not two grey half-pixels */
    var x = Math.floor((selected.c + 0.5) * S) + 0.5, y = Math.floor((selected.r + 0.5) * S) + 0.5;
    [["rgba(255,255,255,0.9)", 3], ["rgba(0,0,0,0.9)", 1]].forEach(function (p) {
      ctx.strokeStyle = p[0]; ctx.lineWidth = p[1];
      ctx.beginPath();
      ctx.moveTo(0, y); ctx.lineTo(x - S, y); ctx.moveTo(x + S, y); ctx.lineTo(C * S, y);
      ctx.moveTo(x, 0); ctx.lineTo(x, y - S); ctx.moveTo(x, y + S); ctx.lineTo(x, R * S);
      ctx.strokeRect(selected.c * S, selected.r * S, S, S);
      ctx.stroke();
    });
    canvas.setAttribute("data-selected", selected.r + "," + selected.c);
  }

  function drawMap(canvas, map) { paint(canvas, decode(map, 0, nSub), map); }

  function pixelAt(canvas, ev) {
    var rect = canvas.getBoundingClientRect();
    var c = Math.floor((ev.clientX - rect.left) / rect.width * D.sub_grid[1]);
    var r = Math.floor((ev.clientY - rect.top) / rect.height * D.sub_grid[0]);
    return {r: Math.max(0, Math.min(D.sub_grid[0] - 1, r)), c: Math.max(0, Math.min(D.sub_grid[1] - 1, c))};
  }

  function onMapHover(ev) {
    var canvas = ev.currentTarget, p = pixelAt(canvas, ev), k = p.r * D.sub_grid[1] + p.c, name, units, v;
    if (canvas.id === "ss-cube") {
      var s = cubeSeries(), step = +cubeStep.value;
      v = s.values[k * nSteps + step]; name = s.variable + " at " + fmt(D.voltage[step], 3) + " V"; units = cubeUnits();
    } else {
      var map = D.maps[+canvas.getAttribute("data-index")];
      v = map.values[k]; name = map.name; units = map.units;
    }
    var box = document.getElementById("ss-hover");
    var text = name + " at row " + D.rows_idx[p.r] + ", col " + D.cols_idx[p.c] + ": " +
      (isNaN(v) ? "no value (NaN)" : fmt(v, 4) + (units ? " " + units : ""));
    box.textContent = text;
    box.setAttribute("data-value", isNaN(v) ? "NaN" : String(v));
    box.setAttribute("data-row", D.rows_idx[p.r]); box.setAttribute("data-col", D.cols_idx[p.c]);
  }

  /* data cube: any curve variable at one voltage step */
  var cubeVar = document.getElementById("ss-cube-var"), cubeStep = document.getElementById("ss-cube-step");

  function cubeSeries() {
    var ij = cubeVar.value.split(":");
    return D.panels[+ij[0]].series[+ij[1]];
  }

  function cubeUnits() { return D.panels[+cubeVar.value.split(":")[0]].units; }

  function drawCube() {
    var canvas = document.getElementById("ss-cube");
    if (!canvas) { return; }
    var s = cubeSeries(), step = +cubeStep.value, vals = new Array(nSub);
    if (s.vmin === undefined) {
      var lo = Infinity, hi = -Infinity;
      for (var i = 0; i < s.values.length; i++) { var x = s.values[i]; if (!isNaN(x)) { lo = Math.min(lo, x); hi = Math.max(hi, x); } }
      s.vmin = lo; s.vmax = hi;
    }
    for (var k = 0; k < nSub; k++) { var v = s.values[k * nSteps + step]; vals[k] = isNaN(v) ? null : v; }
    paint(canvas, vals, {categorical: false, vmin: s.vmin, vmax: s.vmax});
    canvas.setAttribute("data-variable", s.variable); canvas.setAttribute("data-step", step);
    document.getElementById("ss-cube-value").textContent =
      "step " + (step + 1) + "/" + nSteps + ": " + fmt(D.voltage[step], 3) + " V";
    document.getElementById("ss-cube-min").textContent = fmt(s.vmin, 4);
    document.getElementById("ss-cube-max").textContent = fmt(s.vmax, 4);
    document.getElementById("ss-cube-units").textContent = (cubeUnits() || "") + " (full range)";
  }

  /* the clicked pixel's curves as CSV: voltage, then one column per series */
  function csvText() {
    var k = selected.r * D.sub_grid[1] + selected.c, cols = [], head = ["voltage_V"];
    D.panels.forEach(function (panel) {
      panel.series.forEach(function (s) { head.push(s.variable); cols.push(decode(s, k * nSteps, nSteps)); });
    });
    var lines = ["# switchscope explorer: pixel row " + D.rows_idx[selected.r] + ", col " + D.cols_idx[selected.c],
                 head.join(",")];
    for (var i = 0; i < nSteps; i++) {
      lines.push([D.voltage[i]].concat(cols.map(function (c) { return c[i] === null ? "" : c[i]; })).join(","));
    }
    return lines.join("\n") + "\n";
  }

  function downloadCsv() {
    var a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([csvText()], {type: "text/csv"}));
    a.download = "pixel_r" + D.rows_idx[selected.r] + "_c" + D.cols_idx[selected.c] + ".csv";
    document.body.appendChild(a); a.click(); a.remove();
  }

  function drawAllMaps() {
    var canvases = document.querySelectorAll("canvas.ss-map");
    for (var i = 0; i < canvases.length; i++) {
      drawMap(canvases[i], D.maps[+canvases[i].getAttribute("data-index")]);
    }
  }

  function el(tag, attrs) {
    var e = document.createElementNS(SVGNS, tag);
    for (var k in attrs) { if (Object.prototype.hasOwnProperty.call(attrs, k)) { e.setAttribute(k, attrs[k]); } }
    return e;
  }

  function fmt(v, digits) {
    var a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e6)) { return v.toExponential(Math.max(2, digits - 1)); }
    return String(Number(v.toPrecision(digits)));
  }

  /* Draw line series [{name, values, color, width, xs}] into an <svg>, x = voltage (or, with
   * opts.xunit, any x; a series may carry its own xs). Branches (solid descending, dashed
   * ascending) only for voltage curves. */
  function plot(svg, series, xs, opts) {
    opts = opts || {};
    var branches = !opts.xunit, xunit = opts.xunit || "V";
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    var W = 420, H = 220, L = 66, B = 28, T = 8, Rm = 8;
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    var ymin = Infinity, ymax = -Infinity, xmin = Infinity, xmax = -Infinity;
    xs.forEach(function (x) { xmin = Math.min(xmin, x); xmax = Math.max(xmax, x); });
    series.forEach(function (s) {
      (s.xs || []).forEach(function (x) { xmin = Math.min(xmin, x); xmax = Math.max(xmax, x); });
    });
    series.forEach(function (s) {
      s.values.forEach(function (v) { if (v !== null && isFinite(v)) { ymin = Math.min(ymin, v); ymax = Math.max(ymax, v); } });
    });
    if (!isFinite(ymin)) { ymin = 0; ymax = 1; }
    if (ymax === ymin) { ymax = ymin + 1; }
    var px = function (x) { return L + (x - xmin) / ((xmax - xmin) || 1) * (W - L - Rm); };
    var py = function (y) { return T + (ymax - y) / (ymax - ymin) * (H - T - B); };
    svg.appendChild(el("rect", {x: L, y: T, width: W - L - Rm, height: H - T - B, fill: "none", stroke: "#bbb"}));
    /* enough digits that the two y labels differ: 1320.4 and 1325.9, not 1.32e+3 twice */
    var digits = Math.max(3, Math.min(10, Math.ceil(Math.log10(Math.max(Math.abs(ymin), Math.abs(ymax)) / (ymax - ymin))) + 3));
    [[ymax, T + 8], [(ymax + ymin) / 2, (H - B + T) / 2 + 4], [ymin, H - B]].forEach(function (p) {
      var t = el("text", {x: L - 4, y: p[1], "text-anchor": "end", "font-size": 10});
      t.textContent = fmt(p[0], digits); svg.appendChild(t);
    });
    [[xmin, L, "start"], [(xmin + xmax) / 2, (L + W - Rm) / 2, "middle"], [xmax, W - Rm, "end"]].forEach(function (p) {
      var t = el("text", {x: p[1], y: H - 12, "text-anchor": p[2], "font-size": 10});
      t.textContent = Number(p[0]).toPrecision(branches ? 3 : 5) + " " + xunit; svg.appendChild(t);
    });
    series.forEach(function (s) {
      /* one polyline per run of finite values on one branch: solid descending, dashed ascending */
      var segs = [], cur = [], branch = null, sx = s.xs || xs;
      s.values.forEach(function (v, i) {
        var b = branches ? (D.descending[i] ? "down" : "up") : "all";
        if (v === null || !isFinite(v) || (branch !== null && b !== branch)) {
          if (cur.length) { segs.push({pts: cur, branch: branch}); }
          cur = (v === null || !isFinite(v) || !cur.length) ? [] : [cur[cur.length - 1]];
        }
        if (v !== null && isFinite(v)) { cur.push(px(sx[i]).toFixed(1) + "," + py(v).toFixed(1)); branch = b; }
      });
      if (cur.length) { segs.push({pts: cur, branch: branch}); }
      var g = el("g", {"class": "ss-series", "data-series": s.name, "data-var": s.variable || "",
                       "data-values": JSON.stringify(s.values)});
      segs.forEach(function (seg) {
        var attrs = {points: seg.pts.join(" "), fill: "none", stroke: s.color, "stroke-width": s.width || 1.5,
                     "data-branch": seg.branch};
        if (seg.branch === "up") { attrs["stroke-dasharray"] = "5 3"; }
        g.appendChild(el("polyline", attrs));
      });
      svg.appendChild(g);
    });
  }

  function showPixel() {
    var k = selected.r * D.sub_grid[1] + selected.c;
    var row = D.rows_idx[selected.r], col = D.cols_idx[selected.c];
    var box = document.getElementById("ss-pixel");
    box.setAttribute("data-row", row); box.setAttribute("data-col", col);
    box.textContent = "pixel row " + row + ", col " + col;
    D.panels.forEach(function (panel, pi) {
      var svg = document.getElementById("ss-panel-" + pi);
      var series = panel.series.map(function (s) {
        return {name: s.name, variable: s.variable, values: decode(s, k * nSteps, nSteps),
                color: COLORS[s.name] || "#000", width: s.name === "raw" ? 1 : 1.6};
      });
      plot(svg, series, D.voltage);
      svg.setAttribute("data-row", row); svg.setAttribute("data-col", col);
    });
    drawAllMaps();
    drawCube();
    drawSho();
  }

  /* SHO spectrum: the measured complex spectrum of the selected pixel at one step and the SHO
   * model H(w) = A exp(i phi) w0^2 / (w^2 - i w w0 / Q - w0^2) (switchscope.sho.sho_response),
   * w and w0 in kHz. The spectra may be embedded on a coarser grid: the nearest one is shown. */
  var S = D.sho, shoStep = document.getElementById("ss-sho-step");

  function shoModel(A, w0, Q, phi, ws) {
    return ws.map(function (w) {
      /* A e^{i phi} w0^2 / (a + i b), a = w^2 - w0^2, b = -w w0 / Q */
      var a = w * w - w0 * w0, b = -w * w0 / Q, d = a * a + b * b, c = A * w0 * w0;
      var nr = c * Math.cos(phi), ni = c * Math.sin(phi);
      return [(nr * a + ni * b) / d, (ni * a - nr * b) / d];
    });
  }

  function drawSho() {
    if (!S || !shoStep) { return; }
    var si = Math.min(S.sub_grid[0] - 1, Math.round(selected.r / S.every));
    var sj = Math.min(S.sub_grid[1] - 1, Math.round(selected.c / S.every));
    var k = si * S.sub_grid[1] + sj, step = +shoStep.value, nf = S.n_freq, start = (k * nSteps + step) * nf;
    var re = decode(S.re, start, nf), im = decode(S.im, start, nf), p = {};
    ["amplitude", "resonance", "quality_factor", "phase"].forEach(function (v) {
      p[v] = S.params[v].values[k * nSteps + step];
    });
    var phi = S.phase_units === "rad" ? p.phase : p.phase * Math.PI / 180;
    var f = S.freq_khz, fine = [], n = 8 * (nf - 1) + 1;
    for (var i = 0; i < n; i++) { fine.push(f[0] + (f[nf - 1] - f[0]) * i / (n - 1)); }
    var ok = [p.amplitude, p.resonance, p.quality_factor, phi].every(function (x) { return isFinite(x); });
    var model = ok ? shoModel(p.amplitude, p.resonance, p.quality_factor, phi, fine) : [];
    var mAmp = model.map(function (z) { return Math.hypot(z[0], z[1]); });
    var mPh = model.map(function (z) { return Math.atan2(z[1], z[0]) * 180 / Math.PI; });
    var amp = re.map(function (x, i) { return (x === null || im[i] === null) ? null : Math.hypot(x, im[i]); });
    var ph = re.map(function (x, i) { return (x === null || im[i] === null) ? null : Math.atan2(im[i], x) * 180 / Math.PI; });
    /* no jump of 360 degrees between the fit and the measurement at the same frequency */
    var ref = ph.filter(function (v) { return v !== null; });
    var mid = ref.length ? ref[Math.floor(ref.length / 2)] : 0;
    mPh = mPh.map(function (v) { return v + 360 * Math.round((mid - v) / 360); });
    var fitName = ok ? "SHO fit" : "SHO fit (no value)";
    plot(document.getElementById("ss-sho-amp"), [
      {name: "measured", variable: "spectrum", values: amp, color: "#999999", width: 1.2},
      {name: "fit", variable: fitName, values: mAmp, xs: fine, color: "#d62728", width: 1.6}], f, {xunit: "kHz"});
    plot(document.getElementById("ss-sho-phase"), [
      {name: "measured", variable: "spectrum", values: ph, color: "#999999", width: 1.2},
      {name: "fit", variable: fitName, values: mPh, xs: fine, color: "#d62728", width: 1.6}], f, {xunit: "kHz"});
    var box = document.getElementById("ss-sho-value");
    var row = S.rows_idx[si], col = S.cols_idx[sj];
    box.textContent = "pixel row " + row + ", col " + col + ", step " + (step + 1) + "/" + nSteps + " (" +
      fmt(D.voltage[step], 3) + " V): A = " + fmt(p.amplitude, 4) + ", w0 = " + fmt(p.resonance, 6) +
      " kHz, Q = " + fmt(p.quality_factor, 4) + ", phi = " + fmt(p.phase, 4) + " " + S.phase_units;
    var holder = document.getElementById("ss-sho");
    holder.setAttribute("data-row", row); holder.setAttribute("data-col", col); holder.setAttribute("data-step", step);
  }

  /* the data cube and the SHO spectrum show the same voltage step: moving one slider moves both */
  function onCubeStep() {
    if (shoStep) { shoStep.value = cubeStep.value; drawSho(); }
    drawCube();
  }

  function onShoStep() {
    if (cubeStep) { cubeStep.value = shoStep.value; drawCube(); }
    drawSho();
  }

  function onMapClick(ev) {
    selected = pixelAt(ev.currentTarget, ev);
    showPixel();
  }

  /* generator */
  var genChannel = document.getElementById("ss-gen-channel");
  var genNeuron = document.getElementById("ss-gen-neuron");
  var genLevel = document.getElementById("ss-gen-level");

  function currentGen() { return D.generated[+genChannel.value]; }

  function fillNeurons() {
    var g = currentGen();
    while (genNeuron.firstChild) { genNeuron.removeChild(genNeuron.firstChild); }
    g.neurons.forEach(function (j, i) {
      var o = document.createElement("option"); o.value = i; o.textContent = "neuron " + j; genNeuron.appendChild(o);
    });
    genLevel.max = g.n_levels - 1;
    genLevel.value = 0;
  }

  function showGen() {
    var g = currentGen(), i = +genNeuron.value, li = +genLevel.value;
    var start = (i * g.n_levels + li) * nSteps;
    var all = [];
    for (var l = 0; l < g.n_levels; l++) {
      if (l !== li) { all.push({name: "level-" + l, values: decode(g, (i * g.n_levels + l) * nSteps, nSteps), color: "#e0e0e0", width: 0.8}); }
    }
    all.push({name: "current", variable: g.variable, values: decode(g, start, nSteps), color: "#d62728", width: 2});
    var svg = document.getElementById("ss-gen-plot");
    plot(svg, all, D.voltage);
    svg.setAttribute("data-variable", g.variable);
    svg.setAttribute("data-neuron", g.neurons[i]);
    svg.setAttribute("data-level", li);
    document.getElementById("ss-gen-value").textContent =
      "neuron " + g.neurons[i] + " = " + Number(g.levels[i][li]).toPrecision(4) + " (level " + (li + 1) + "/" + g.n_levels + ")";
  }

  function start() {
    var canvases = document.querySelectorAll("canvas.ss-map, canvas.ss-cube");
    for (var i = 0; i < canvases.length; i++) {
      canvases[i].addEventListener("click", onMapClick);
      canvases[i].addEventListener("mousemove", onMapHover);
    }
    if (cubeVar) {
      cubeVar.addEventListener("change", drawCube);
      cubeStep.addEventListener("input", onCubeStep);
      cubeStep.addEventListener("change", onCubeStep);
    }
    if (shoStep) {
      shoStep.addEventListener("input", onShoStep);
      shoStep.addEventListener("change", onShoStep);
    }
    var csv = document.getElementById("ss-csv");
    if (csv) { csv.addEventListener("click", downloadCsv); }
    if (D.panels.length || D.maps.length || S) { showPixel(); }
    if (genChannel && D.generated.length) {
      genChannel.addEventListener("change", function () { fillNeurons(); showGen(); });
      genNeuron.addEventListener("change", showGen);
      genLevel.addEventListener("input", showGen);
      genLevel.addEventListener("change", showGen);
      fillNeurons(); showGen();
    }
    document.body.setAttribute("data-explorer-ready", "1");
  }

  var blocks = D.maps.concat(D.generated);
  for (var p = 0; p < D.panels.length; p++) { blocks = blocks.concat(D.panels[p].series); }
  if (D.sho) {
    blocks = blocks.concat([D.sho.re, D.sho.im]);
    for (var v in D.sho.params) { if (Object.prototype.hasOwnProperty.call(D.sho.params, v)) { blocks.push(D.sho.params[v]); } }
  }
  Promise.all(blocks.map(unpack)).then(start, function (err) {
    document.body.setAttribute("data-explorer-error", String(err));
  });
})();
