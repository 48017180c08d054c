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

  function drawMap(canvas, map) {
    var ctx = canvas.getContext("2d");
    var R = D.sub_grid[0], C = D.sub_grid[1];
    var vals = decode(map, 0, nSub);
    var img = ctx.createImageData(C, R);
    for (var i = 0; i < nSub; i++) {
      var col = colorFor(map, vals[i]);
      img.data[4 * i] = col[0]; img.data[4 * i + 1] = col[1]; img.data[4 * i + 2] = col[2];
      img.data[4 * i + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    ctx.fillStyle = "rgba(255,0,0,0.9)";
    ctx.fillRect(selected.c, selected.r, 1, 1);
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

  /* Draw line series [{name, values, color, width}] into an <svg>, x = voltage. */
  function plot(svg, series, xs) {
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    var W = 420, H = 220, L = 66, B = 28, T = 8, Rm = 8;
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    var ymin = Infinity, ymax = -Infinity, xmin = Infinity, xmax = -Infinity;
    xs.forEach(function (x) { xmin = Math.min(xmin, x); xmax = Math.max(xmax, x); });
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
      t.textContent = Number(p[0]).toPrecision(3) + " V"; svg.appendChild(t);
    });
    series.forEach(function (s) {
      var segs = [], cur = [];
      s.values.forEach(function (v, i) {
        if (v === null || !isFinite(v)) { if (cur.length) { segs.push(cur); cur = []; } }
        else { cur.push(px(xs[i]).toFixed(1) + "," + py(v).toFixed(1)); }
      });
      if (cur.length) { segs.push(cur); }
      var g = el("g", {"class": "ss-series", "data-series": s.name, "data-var": s.variable || "",
                       "data-values": JSON.stringify(s.values)});
      segs.forEach(function (seg) {
        g.appendChild(el("polyline", {points: seg.join(" "), fill: "none", stroke: s.color,
                                      "stroke-width": s.width || 1.5}));
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
  }

  function onMapClick(ev) {
    var canvas = ev.currentTarget, rect = canvas.getBoundingClientRect();
    var c = Math.floor((ev.clientX - rect.left) / rect.width * D.sub_grid[1]);
    var r = Math.floor((ev.clientY - rect.top) / rect.height * D.sub_grid[0]);
    selected = {r: Math.max(0, Math.min(D.sub_grid[0] - 1, r)), c: Math.max(0, Math.min(D.sub_grid[1] - 1, c))};
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
    var canvases = document.querySelectorAll("canvas.ss-map");
    for (var i = 0; i < canvases.length; i++) { canvases[i].addEventListener("click", onMapClick); }
    if (D.panels.length || D.maps.length) { showPixel(); }
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
  Promise.all(blocks.map(unpack)).then(start, function (err) {
    document.body.setAttribute("data-explorer-error", String(err));
  });
})();
