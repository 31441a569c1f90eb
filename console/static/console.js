// buildfleet console: live countdowns and elapsed times, and a quiet refresh of pages marked
// data-live. No framework, no build step.
(function () {
  "use strict";
  function human(ms) {
    var s = Math.abs(ms) / 1000;
    if (s < 10) return s.toFixed(1) + "s";
    if (s < 60) return Math.floor(s) + "s";
    var m = Math.floor(s / 60);
    if (m < 60) return m + "m " + String(Math.floor(s % 60)).padStart(2, "0") + "s";
    return Math.floor(m / 60) + "h " + String(m % 60).padStart(2, "0") + "m";
  }
  function tick() {
    var now = Date.now();
    document.querySelectorAll("[data-deadline]").forEach(function (el) {
      var left = Date.parse(el.getAttribute("data-deadline")) - now;
      el.textContent = left > 0 ? "in " + human(left) : "passed " + human(left) + " ago";
      el.classList.toggle("late", left <= 0);
      el.title = el.getAttribute("data-deadline");
    });
    document.querySelectorAll("[data-since]").forEach(function (el) {
      var t = Date.parse(el.getAttribute("data-since"));
      if (isNaN(t)) return;
      var d = now - t;
      if (el.hasAttribute("data-elapsed")) {
        el.textContent = human(Math.max(d, 0));
      } else {
        el.textContent = d < 1000 ? "just now" : human(d) + " ago";
      }
    });
  }
  var failures = 0;
  // lastHTML is the last content fetched: the page is replaced only when the server's view
  // changed, so that selections and open details survive quiet refreshes.
  var lastHTML = null;
  function refresh() {
    if (document.hidden) return;
    fetch(location.href, { headers: { "X-Console-Partial": "1" }, credentials: "same-origin" })
      .then(function (r) {
        if (r.status === 401) { location.reload(); throw new Error("signed out"); }
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.text();
      })
      .then(function (html) {
        if (lastHTML !== null && html !== lastHTML) document.getElementById("main").innerHTML = html;
        lastHTML = html;
        failures = 0;
        setLive(true);
        tick();
      })
      .catch(function () { failures++; if (failures > 1) setLive(false); });
  }
  function setLive(ok) {
    var el = document.getElementById("live");
    if (!el) return;
    el.textContent = ok ? "live" : "offline";
    el.classList.toggle("off", !ok);
  }
  document.addEventListener("DOMContentLoaded", function () {
    tick();
    setInterval(tick, 1000);
    if (document.body.hasAttribute("data-live")) setInterval(refresh, 2000);
  });
})();
