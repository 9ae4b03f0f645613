// Follows runs without reloading: polls GET /ui/live, writes the counts into the
// elements marked data-k, and re-fetches the page when a run starts or ends (the
// "gen" changes) or a minute has passed (relative times). The page works without it.
(function () {
  "use strict";
  var gen = document.body.dataset.gen, sync = document.body.dataset.sync;
  var live = "/ui/live" + (sync ? "?sync=" + encodeURIComponent(sync) : "");
  // The notice after a button (?started=…) is shown once: reloads and refreshes drop it.
  var q = new URLSearchParams(location.search);
  ["started", "queued", "running", "stopping", "failed", "full", "sync"].forEach(function (k) { q.delete(k); });
  var page = location.pathname + (String(q) ? "?" + q : ""), fetched = Date.now();
  if (page !== location.pathname + location.search) history.replaceState(null, "", page);
  function ok(r) { if (!r.ok) throw new Error(r.status); return r; }
  function refresh() {
    return fetch(page, {cache: "no-store"}).then(ok).then(function (r) { return r.text(); }).then(function (t) {
      // Only <main> is parsed: the new page's <style> and <script> carry another nonce.
      var a = t.indexOf("<main>"), b = t.lastIndexOf("</main>"), g = /data-gen="([^"]*)"/.exec(t);
      if (a < 0 || b < a || !g) return;
      var tpl = document.createElement("template");
      tpl.innerHTML = t.slice(a, b + 7);
      document.querySelector("main").replaceWith(tpl.content.firstElementChild);
      gen = g[1]; fetched = Date.now();
    });
  }
  function show(d) {
    Object.keys(d.live).forEach(function (name) {
      var box = document.getElementById("live-" + name), f = d.live[name];
      if (!box) return;
      Object.keys(f).forEach(function (k) {
        var el = box.querySelector('[data-k="' + CSS.escape(k) + '"]');
        if (!el) return;
        if (el.tagName !== "PROGRESS") el.textContent = f[k];
        else if (f[k] === "") el.removeAttribute("value");
        else el.value = f[k];
      });
    });
  }
  function tick() {
    if (document.hidden) return setTimeout(tick, 5000);
    fetch(live, {cache: "no-store", headers: {Accept: "application/json"}}).then(ok).then(function (r) { return r.json(); })
      .then(function (d) {
        var next = d.running ? 1000 : 5000;
        if (d.gen !== gen || Date.now() - fetched > 60000) return refresh().then(function () { return next; });
        show(d);
        return next;
      })
      .then(function (next) { setTimeout(tick, next); }, function () { setTimeout(tick, 10000); });
  }
  setTimeout(tick, 1000);
})();
