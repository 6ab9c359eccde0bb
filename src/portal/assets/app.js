// kneenode portal: live progress and confirmations. Pages work without this script; it only
// refreshes progress bars from /api/jobs/{id}/progress and asks before destructive actions.
(function () {
  "use strict";

  var FINAL = { complete: true, error: true, cancelled: true };
  var POLL_MS = 2000;

  function update(el, p) {
    var pct = Math.round(p.status === "complete" ? 100 : p.percent || 0);
    el.dataset.percent = String(pct);
    el.dataset.status = p.status;
    var bar = el.querySelector("progress");
    if (bar) bar.value = pct;
    var label = el.querySelector(".progress-label");
    if (label) {
      var text = pct + " % " + (p.step || "");
      if (p.status === "queued" && p.position) {
        text = "queued, position " + p.position + (p.eta_s ? ", about " + Math.round(p.eta_s / 60) + " min" : "");
      }
      if (p.status === "error" && p.error_message) text = p.error_message;
      label.textContent = text;
    }
    var badge = el.querySelector(".badge");
    if (badge) {
      badge.textContent = p.status;
      badge.className = "badge status-" + p.status;
    }
  }

  function poll(el) {
    var id = el.dataset.job;
    fetch("/api/jobs/" + encodeURIComponent(id) + "/progress", { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (r.status === 401) { window.location = "/login?next=" + encodeURIComponent(window.location.pathname); return null; }
        return r.ok ? r.json() : null;
      })
      .then(function (p) {
        if (!p) { setTimeout(function () { poll(el); }, POLL_MS * 2); return; }
        var was = el.dataset.status;
        update(el, p);
        if (FINAL[p.status]) {
          // The job page shows results only when rendered after completion.
          if (el.dataset.reload && !FINAL[was]) window.location.reload();
          return;
        }
        setTimeout(function () { poll(el); }, POLL_MS);
      })
      .catch(function () { setTimeout(function () { poll(el); }, POLL_MS * 2); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var bars = document.querySelectorAll(".progress[data-job]");
    for (var i = 0; i < bars.length; i++) {
      if (!FINAL[bars[i].dataset.status]) poll(bars[i]);
    }
    document.addEventListener("submit", function (ev) {
      var b = ev.submitter;
      if (b && b.dataset.confirm && !window.confirm(b.dataset.confirm)) ev.preventDefault();
    });
  });
})();
