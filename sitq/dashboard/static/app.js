// sitq dashboard: keep [data-live] regions fresh and confirm actions.
// Every region is re-fetched from its data-live URL (an HTML fragment rendered by
// the server) every few seconds while the page is visible: no reloads.
(() => {
  "use strict";
  const period = Number(document.body.dataset.refreshMs) || 2000;
  const status = document.getElementById("live-status");
  const busy = new WeakSet();

  async function refresh(region) {
    if (busy.has(region)) return;
    busy.add(region);
    try {
      const response = await fetch(region.dataset.live, {
        credentials: "same-origin",
        cache: "no-store",
        headers: { "X-Requested-With": "sitq-dashboard" },
      });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      region.innerHTML = await response.text();
      if (status) {
        status.textContent = `live, updated ${new Date().toLocaleTimeString()}`;
        status.classList.remove("stale");
      }
    } catch (error) {
      if (status) {
        status.textContent = `not updating (${error.message}); retrying`;
        status.classList.add("stale");
      }
    } finally {
      busy.delete(region);
    }
  }

  function tick() {
    if (document.hidden) return;
    document.querySelectorAll("[data-live]").forEach(refresh);
  }

  setInterval(tick, period);
  document.addEventListener("visibilitychange", tick);

  // Each action form asks first.
  document.addEventListener("submit", (event) => {
    const question = event.target.dataset.confirm;
    if (question && !window.confirm(question)) event.preventDefault();
  });
})();
