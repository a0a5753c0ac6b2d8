// The login form: a challenge from the server, the proof computed here, a session cookie back.
"use strict";
(function () {
  function $(id) { return document.getElementById(id); }

  function post(path, body) {
    return fetch(path, {method: "POST", headers: {"Content-Type": "application/json"},
                        body: JSON.stringify(body), credentials: "same-origin"});
  }

  function next() {
    var target = new URLSearchParams(location.search).get("next") || "/";
    return /^\/(?!\/)/.test(target) ? target : "/";   // our own pages only
  }

  document.addEventListener("DOMContentLoaded", function () {
    $("login-form").addEventListener("submit", function (event) {
      event.preventDefault();
      var name = $("key").value.trim(), secret = $("secret").value;
      $("error").textContent = "";
      post("/auth/challenge", {}).then(function (r) { return r.json(); }).then(function (c) {
        return MsgsrvCrypto.proof(secret, c.nonce, name).then(function (proof) {
          return post("/auth/login", {key: name, nonce: c.nonce, proof: proof});
        });
      }).then(function (r) {
        if (r.ok) { location.href = next(); return; }
        $("error").textContent = r.status === 429 ? "too many failed logins: wait a minute" :
          "login failed: wrong key name or secret";
      }).catch(function (e) { $("error").textContent = "login failed: " + e; });
    });
  });
}());
