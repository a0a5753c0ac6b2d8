// SHA-256 and HMAC-SHA256 (FIPS 180-4, RFC 2104) for the login page, where WebCrypto
// is missing (a page served over plain HTTP on an address other than loopback).
"use strict";
var MsgsrvCrypto = (function () {
  var K = new Uint32Array([
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2]);

  function rotr(x, n) { return (x >>> n) | (x << (32 - n)); }

  function sha256(bytes) {
    var h = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
             0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
    var length = bytes.length, size = Math.ceil((length + 9) / 64) * 64;
    var block = new Uint8Array(size), view = new DataView(block.buffer), w = new Uint32Array(64);
    block.set(bytes);
    block[length] = 0x80;
    view.setUint32(size - 8, Math.floor(length / 0x20000000));
    view.setUint32(size - 4, (length * 8) >>> 0);
    for (var offset = 0; offset < size; offset += 64) {
      var t;
      for (t = 0; t < 16; t += 1) { w[t] = view.getUint32(offset + t * 4); }
      for (t = 16; t < 64; t += 1) {
        var s0 = rotr(w[t - 15], 7) ^ rotr(w[t - 15], 18) ^ (w[t - 15] >>> 3);
        var s1 = rotr(w[t - 2], 17) ^ rotr(w[t - 2], 19) ^ (w[t - 2] >>> 10);
        w[t] = (w[t - 16] + s0 + w[t - 7] + s1) | 0;
      }
      var a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
      for (t = 0; t < 64; t += 1) {
        var t1 = (k + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[t] + w[t]) | 0;
        var t2 = ((rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) | 0;
        k = g; g = f; f = e; e = (d + t1) | 0; d = c; c = b; b = a; a = (t1 + t2) | 0;
      }
      h[0] = (h[0] + a) | 0; h[1] = (h[1] + b) | 0; h[2] = (h[2] + c) | 0; h[3] = (h[3] + d) | 0;
      h[4] = (h[4] + e) | 0; h[5] = (h[5] + f) | 0; h[6] = (h[6] + g) | 0; h[7] = (h[7] + k) | 0;
    }
    var out = new Uint8Array(32), outView = new DataView(out.buffer);
    for (var i = 0; i < 8; i += 1) { outView.setUint32(i * 4, h[i] >>> 0); }
    return out;
  }

  function concat(a, b) {
    var out = new Uint8Array(a.length + b.length);
    out.set(a);
    out.set(b, a.length);
    return out;
  }

  function hmac(key, message) {
    if (key.length > 64) { key = sha256(key); }
    var inner = new Uint8Array(64), outer = new Uint8Array(64);
    for (var i = 0; i < 64; i += 1) {
      var byte = i < key.length ? key[i] : 0;
      inner[i] = byte ^ 0x36;
      outer[i] = byte ^ 0x5c;
    }
    return sha256(concat(outer, sha256(concat(inner, message))));
  }

  function hex(bytes) {
    return Array.prototype.map.call(bytes, function (b) { return (b + 256).toString(16).slice(1); }).join("");
  }

  function utf8(text) { return new TextEncoder().encode(text); }

  // The proof msgsrv.wire.auth.compute_proof checks: HMAC-SHA256(secret, context nonce NUL name).
  function proof(secret, nonce, name) {
    var key = utf8(secret), message = utf8("msgsrv-auth-v1\u0000" + nonce + "\u0000" + name);
    var subtle = window.crypto && window.crypto.subtle;
    if (!subtle) { return Promise.resolve(hex(hmac(key, message))); }
    return subtle.importKey("raw", key, {name: "HMAC", hash: "SHA-256"}, false, ["sign"])
      .then(function (k) { return subtle.sign("HMAC", k, message); })
      .then(function (signature) { return hex(new Uint8Array(signature)); });
  }

  return {sha256: sha256, hmac: hmac, hex: hex, utf8: utf8, proof: proof};
}());
