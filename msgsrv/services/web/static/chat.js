// msgsrv chat in the browser: the chat service's own line protocol over one WebSocket
// (/ws/chat).  Every message sent is one line a terminal client would type; every message
// received holds server lines (docs/PROTOCOL.rst, "Chat protocol").
"use strict";
(function () {
  var ws = null, me = null, current = null, joined = [];
  var quiet = {rooms: 0, who: 0};   // answers to our own sidebar refreshes: not printed
  var refreshTimer = null;
  var NICK = /^[A-Za-z][A-Za-z0-9_\-\[\]{}^|]{0,31}$/;

  function $(id) { return document.getElementById(id); }

  function words(line, count) {   // the first `count` words, then the rest of the line
    var parts = [], rest = line;
    for (var i = 0; i < count; i += 1) {
      var at = rest.indexOf(" ");
      if (at < 0) { parts.push(rest); rest = ""; } else { parts.push(rest.slice(0, at)); rest = rest.slice(at + 1); }
    }
    parts.push(rest);
    return parts;
  }

  function show(raw, kind, text) {
    var log = $("log"), atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    var div = document.createElement("div");
    div.className = "line " + kind;
    div.dataset.raw = raw;
    div.textContent = text;
    log.appendChild(div);
    while (log.childNodes.length > 2000) { log.removeChild(log.firstChild); }
    if (atBottom) { log.scrollTop = log.scrollHeight; }
  }

  function room(kind, raw, p, prefix) {
    // p: [room, nick, text]
    show(raw, kind, prefix + "[" + p[0] + "] " + (kind === "act" || kind === "hist act" ?
      "* " + p[1] + " " + p[2] : "<" + p[1] + "> " + p[2]));
  }

  function notice(raw, rest) {
    var p = words(rest, 1), kind = p[0], f;
    switch (kind) {
    case "nick":
      f = words(p[1], 2);
      if (f[0] === "*" || f[0] === me) { setNick(f[1]); }
      show(raw, "notice", f[0] === "*" ? "you are " + f[1] : f[0] + " is now " + f[1]);
      return;
    case "join":
      f = words(p[1], 2);
      if (f[1] === me) {
        joined = joined.filter(function (r) { return r !== f[0]; });
        joined.push(f[0]);
        current = f[0];
      }
      soon();
      show(raw, "notice", f[1] + " joined " + f[0]);
      return;
    case "leave":
      f = words(p[1], 2);
      if (f[1] === me) {
        joined = joined.filter(function (r) { return r !== f[0]; });
        current = joined[joined.length - 1] || null;
      }
      soon();
      show(raw, "notice", f[1] + " left " + f[0]);
      return;
    case "quit":
      f = words(p[1], 1);
      show(raw, "notice", f[0] + " quit (" + f[1] + ")");
      soon();
      return;
    case "rooms":
      sidebarRooms(p[1] ? p[1].split(" ") : []);
      if (quiet.rooms) { quiet.rooms -= 1; return; }
      break;
    case "who":
      f = p[1].split(" ");
      if (f[0] === current) { sidebarMembers(f.slice(1)); }
      if (quiet.who) { quiet.who -= 1; return; }
      break;
    case "history-end":
      return;
    }
    show(raw, "notice", rest);
  }

  function handle(raw) {
    var p = words(raw, 1), verb = p[0], rest = p[1];
    if (verb === "MSG") { room("msg", raw, words(rest, 2), ""); }
    else if (verb === "ACT") { room("act", raw, words(rest, 2), ""); }
    else if (verb === "PRIV") {
      var v = words(rest, 2);
      show(raw, "priv", "[private] " + v[0] + " \u2192 " + v[1] + ": " + v[2]);
    } else if (verb === "HIST") {
      var h = words(rest, 1), inner = words(h[1], 1);
      var when = new Date(parseFloat(h[0]) * 1000).toLocaleTimeString();
      room(inner[0] === "ACT" ? "hist act" : "hist", raw, words(inner[1], 2), when + " ");
    } else if (verb === "*") { notice(raw, rest); }
    else if (verb === "!") {
      var e = words(rest, 1);
      show(raw, "error", "error " + e[0] + ": " + e[1]);
    } else { show(raw, "notice", raw); }
  }

  function send(line) {
    if (ws && ws.readyState === WebSocket.OPEN) { ws.send(line); return true; }
    return false;
  }

  function setNick(nick) {
    me = nick;
    $("nick-form").hidden = true;
    where();
  }

  function where() {
    $("where").textContent = me ? me + "@" + (current || "-") : "";
  }

  function soon() {   // one sidebar refresh for a burst of joins and leaves
    where();
    if (refreshTimer === null) {
      refreshTimer = setTimeout(function () { refreshTimer = null; refresh(); }, 300);
    }
  }

  function refresh() {
    where();
    if (!me) { return; }
    if (send("/rooms")) { quiet.rooms += 1; }
    if (current && send("/who " + current)) { quiet.who += 1; }
  }

  function button(text, onclick) {
    var li = document.createElement("li"), b = document.createElement("button");
    b.type = "button";
    b.textContent = text;
    b.addEventListener("click", onclick);
    li.appendChild(b);
    return li;
  }

  function sidebarRooms(pairs) {
    var list = $("rooms");
    list.textContent = "";
    pairs.forEach(function (pair) {
      var at = pair.lastIndexOf(":"), name = pair.slice(0, at), count = pair.slice(at + 1);
      var li = button(name + " (" + count + ")", function () { send("/join " + name); });
      li.dataset.room = name;
      if (name === current) { li.className = "current"; }
      list.appendChild(li);
    });
  }

  function sidebarMembers(nicks) {
    var list = $("members");
    list.textContent = "";
    $("members-title").textContent = "In " + current;
    nicks.forEach(function (nick) {
      var li = button(nick, function () { $("line").value = "/msg " + nick + " "; $("line").focus(); });
      li.dataset.nick = nick;
      list.appendChild(li);
    });
  }

  function live(on, text) {
    $("live").className = "live" + (on ? " on" : "");
    $("live").textContent = text;
  }

  function connect() {
    ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws/chat");
    ws.onopen = function () { live(true, "connected"); };
    ws.onmessage = function (event) {
      event.data.split("\n").forEach(function (line) { if (line) { handle(line); } });
    };
    ws.onclose = function (event) {
      live(false, "disconnected" + (event.reason ? ": " + event.reason : "") + " (reload the page to rejoin)");
      show("", "error", "disconnected" + (event.reason ? ": " + event.reason : ""));
    };
    setInterval(refresh, 15000);
  }

  document.addEventListener("DOMContentLoaded", function () {
    $("nick-form").addEventListener("submit", function (event) {
      event.preventDefault();
      var nick = $("nick").value.trim();
      if (nick) { send("/nick " + nick); }
      $("line").focus();
    });
    $("say-form").addEventListener("submit", function (event) {
      event.preventDefault();
      var line = $("line").value;
      if (line && send(line)) { $("line").value = ""; }
    });
    $("join-form").addEventListener("submit", function (event) {
      event.preventDefault();
      var name = $("room").value.trim();
      if (name && send("/join " + name)) { $("room").value = ""; }
    });
    $("nick").addEventListener("input", function () {
      $("nick").setCustomValidity(NICK.test($("nick").value.trim()) || !$("nick").value ? "" :
        "a letter, then letters, digits or _-[]{}^| (at most 32)");
    });
    connect();
  });
}());
