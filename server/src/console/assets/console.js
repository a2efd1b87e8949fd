// ota console: live regions (server-sent events), confirmations, bake countdowns.
// No framework and no build step; served from the binary as /console.js.
"use strict";

// Live regions: <div data-live="/live/..."> is replaced by each `update` event's HTML; a
// `done` event carries the last state and closes the stream.
function startLive(region) {
  const source = new EventSource(region.dataset.live);
  source.addEventListener("update", (event) => {
    region.innerHTML = event.data;
    region.dataset.updated = String(Date.now());
  });
  source.addEventListener("done", (event) => {
    region.innerHTML = event.data;
    region.dataset.done = "true";
    source.close();
  });
}

// Forms with data-confirm ask first (also the ones a live update put in).
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form instanceof HTMLFormElement && form.dataset.confirm) {
    if (!window.confirm(form.dataset.confirm)) {
      event.preventDefault();
    }
  }
});

// <span class="countdown" data-until="UNIX_SECONDS"> shows the time left.
function tick() {
  for (const span of document.querySelectorAll(".countdown[data-until]")) {
    const left = Math.max(0, Math.round(Number(span.dataset.until) - Date.now() / 1000));
    const minutes = Math.floor(left / 60);
    const seconds = left % 60;
    span.textContent = minutes > 0 ? `${minutes} min ${seconds} s` : `${seconds} s`;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  for (const region of document.querySelectorAll("[data-live]")) {
    startLive(region);
  }
  tick();
  setInterval(tick, 1000);
});
