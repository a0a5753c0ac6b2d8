// msgsrv dashboard: one WebSocket (/ws/status) pushes the status document every second.
"use strict";
(function () {
  var series = {};          // service name -> [[time, connections, bytes_in, bytes_out], ...]
  var windowSeconds = 300;
  var rows = {};            // service name -> {tr, cells}
  var COLUMNS = [["name", "Service"], ["handler", "Handler"], ["transport", "Transport"],
                 ["address", "Address"], ["state", "State"], ["conns", "Connections"],
                 ["in", "In"], ["out", "Out"], ["refused", "Refused"], ["errors", "Errors"],
                 ["chart", "Last minutes"]];
  var NUMERIC = {conns: 1, "in": 1, out: 1, errors: 1};
  var retry = 1000;

  function $(id) { return document.getElementById(id); }

  function bytes(n) {
    var units = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return (i ? n.toFixed(1) : String(Math.round(n))) + " " + units[i];
  }

  function duration(s) {
    s = Math.floor(s);
    var d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
    if (d) { return d + "d " + h + "h"; }
    if (h) { return h + "h " + m + "m"; }
    if (m) { return m + "m " + (s % 60) + "s"; }
    return s + "s";
  }

  function clock(epoch) {
    return new Date(epoch * 1000).toLocaleTimeString();
  }

  function row(name) {
    if (rows[name]) { return rows[name]; }
    var tr = document.createElement("tr"), cells = {};
    tr.dataset.service = name;
    COLUMNS.forEach(function (column) {
      var td = document.createElement("td");
      td.className = column[0] + (NUMERIC[column[0]] ? " num" : "");
      td.dataset.label = column[1];
      if (column[0] === "chart") {
        var canvas = document.createElement("canvas");
        canvas.className = "chart";
        td.appendChild(canvas);
        cells.canvas = canvas;
      }
      tr.appendChild(td);
      cells[column[0]] = td;
    });
    document.querySelector("#services tbody").appendChild(tr);
    rows[name] = {tr: tr, cells: cells};
    return rows[name];
  }

  function refusals(refused) {
    var parts = Object.keys(refused).filter(function (k) { return refused[k]; })
      .map(function (k) { return k + " " + refused[k]; });
    return parts.length ? parts.join(", ") : "none";
  }

  function remember(name, sample) {
    var list = series[name] || (series[name] = []);
    list.push(sample);
    var oldest = sample[0] - windowSeconds;
    while (list.length && list[0][0] < oldest) { list.shift(); }
  }

  function draw(canvas, list, now) {
    var ratio = window.devicePixelRatio || 1;
    var w = canvas.clientWidth || 120, h = canvas.clientHeight || 34;
    canvas.width = Math.round(w * ratio);
    canvas.height = Math.round(h * ratio);
    var g = canvas.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, w, h);
    if (!list || list.length < 2) { return; }
    var rates = [], peakRate = 1, peakConns = 1;
    for (var i = 1; i < list.length; i += 1) {
      var dt = Math.max(list[i][0] - list[i - 1][0], 0.001);
      var rate = Math.max(0, (list[i][2] - list[i - 1][2] + list[i][3] - list[i - 1][3]) / dt);
      rates.push([list[i][0], rate]);
      peakRate = Math.max(peakRate, rate);
    }
    list.forEach(function (s) { peakConns = Math.max(peakConns, s[1]); });
    function x(t) { return w - (now - t) / windowSeconds * w; }
    var style = getComputedStyle(document.documentElement);
    g.beginPath();
    g.moveTo(x(rates[0][0]), h);
    rates.forEach(function (r) { g.lineTo(x(r[0]), h - 1 - r[1] / peakRate * (h - 4)); });
    g.lineTo(x(rates[rates.length - 1][0]), h);
    g.closePath();
    g.globalAlpha = 0.35;
    g.fillStyle = style.getPropertyValue("--bytes") || "#2da44e";
    g.fill();
    g.globalAlpha = 1;
    g.beginPath();
    list.forEach(function (s, index) {
      var y = h - 1 - s[1] / peakConns * (h - 4);
      if (index) { g.lineTo(x(s[0]), y); } else { g.moveTo(x(s[0]), y); }
    });
    g.strokeStyle = style.getPropertyValue("--conns") || "#1f6feb";
    g.lineWidth = 1.5;
    g.stroke();
    canvas.title = "peak " + peakConns + " connections, " + bytes(peakRate) + "/s";
  }

  function render(doc) {
    $("version").textContent = doc.version;
    $("pid").textContent = doc.pid;
    $("uptime").textContent = duration(doc.uptime);
    $("workers").textContent = doc.processes + " process" + (doc.processes === 1 ? "" : "es") +
      ", " + doc.threads + " threads";
    $("reload").textContent = doc.reload ? doc.reload.outcome + " at " + clock(doc.reload.time) +
      (doc.reload.detail ? " (" + doc.reload.detail + ")" : "") : "none since start";
    var now = doc.started + doc.uptime, seen = {};
    doc.services.forEach(function (s) {
      var r = row(s.name), c = r.cells;
      seen[s.name] = true;
      c.name.textContent = s.name;
      c.handler.textContent = s.handler;
      c.transport.textContent = s.transport + (s.tls ? " + TLS" : "");
      c.address.textContent = s.address;
      c.state.textContent = s.state;
      c.state.className = "state " + (s.state === "running" ? "running" : "disabled");
      c.conns.textContent = s.connections === null ? "-" :
        s.connections + (s.max_connections ? " / " + s.max_connections : "");
      c["in"].textContent = bytes(s.bytes_in);
      c.out.textContent = bytes(s.bytes_out);
      c.refused.textContent = refusals(s.refused);
      c.refused.className = "refused" + (c.refused.textContent === "none" ? "" : " some");
      c.errors.textContent = s.errors;
      c.errors.className = "errors num" + (s.errors ? " some" : "");
      if (s.state === "running") {
        remember(s.name, [now, s.connections || 0, s.bytes_in, s.bytes_out]);
      }
      draw(c.canvas, series[s.name], now);
    });
    Object.keys(rows).forEach(function (name) {
      if (!seen[name]) { rows[name].tr.remove(); delete rows[name]; }
    });
  }

  function live(on, text) {
    $("live").className = "live" + (on ? " on" : "");
    $("live").textContent = text;
  }

  function connect() {
    var ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") +
                           location.host + "/ws/status");
    ws.onopen = function () { retry = 1000; live(true, "live"); };
    ws.onmessage = function (event) {
      var message = JSON.parse(event.data);
      if (message.type === "history") {
        windowSeconds = message.window;
        series = message.samples;
      } else if (message.type === "status") {
        render(message);
      }
    };
    ws.onclose = function (event) {
      live(false, "disconnected" + (event.reason ? ": " + event.reason : "") + ", retrying");
      if (retry > 1000) {  // failed again: a login that expired?
        fetch("/status.json").then(function (r) {
          if (r.status === 401) { location.href = "/login?next=/"; }
        });
      }
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 30000);
    };
  }

  document.addEventListener("DOMContentLoaded", connect);
}());
