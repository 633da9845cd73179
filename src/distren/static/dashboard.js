// distren's dashboard: live updates by server-sent events. The server sends each page's changing
// parts already rendered (and escaped) by its templates, plus the frames' states for the grid.
"use strict";
(function () {
  const url = document.body.dataset.live;
  const badge = document.getElementById("live-status");
  if (!url || !window.EventSource) return;

  function say(text, cls) {
    if (!badge) return;
    badge.textContent = text;
    badge.className = "live-status " + cls;
  }

  function frames(list) {
    const grid = document.getElementById("frames");
    if (!grid) return;
    const job = grid.dataset.job;
    for (const [id, state, server, image] of list) {
      const cell = document.getElementById("f" + id);
      if (!cell) continue;
      cell.className = "frame " + state;
      cell.title = "frame " + id + ": " + state + (server ? " on " + server : "");
      const where = cell.querySelector(".server");
      if (where) where.textContent = server;
      let img = cell.querySelector("img");
      if (image && (!img || img.dataset.key !== image)) {
        if (!img) {
          img = document.createElement("img");
          img.alt = "frame " + id;
          cell.insertBefore(img, cell.firstChild);
        }
        img.dataset.key = image;
        img.src = "/jobs/" + encodeURIComponent(job) + "/frames/" + encodeURIComponent(id) + "/thumb.png?v=" + encodeURIComponent(image);
      } else if (!image && img) {
        img.remove();
      }
    }
  }

  const source = new EventSource(url);
  source.addEventListener("open", () => say("live", "on"));
  source.addEventListener("error", () => say("reconnecting", "off"));
  source.addEventListener("update", (e) => {
    const data = JSON.parse(e.data);
    for (const [id, html] of Object.entries(data.html || {})) {
      const el = document.getElementById(id);
      // Not while someone types in a form there (the priority): the next update brings it.
      const typing = document.activeElement && document.activeElement.tagName === "INPUT";
      if (el && !(typing && el.contains(document.activeElement))) el.innerHTML = html;  // escaped by the server's templates
    }
    if (data.frames) frames(data.frames);
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
    say("live", "on");
  });
  source.addEventListener("end", (e) => {
    source.close();
    let why = "stopped";
    try { why = JSON.parse(e.data).error || why; } catch (_) { /* keep the default */ }
    say(why, "off");
  });
})();
