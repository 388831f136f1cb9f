// cqrs console: live overview, log tail, actions with progress. Plain JavaScript, no
// build step. Every HTML fragment it inserts was rendered and escaped by the server;
// values it writes itself go through textContent.
"use strict";

(function () {
  // Overview: refresh the counts and projections every 2 s.
  const overview = document.getElementById("overview");
  if (overview) {
    const refresh = async () => {
      try {
        const response = await fetch(overview.dataset.refresh, { headers: { Accept: "text/html" } });
        if (response.ok) overview.innerHTML = await response.text();
      } catch (_) { /* the next tick tries again */ }
    };
    setInterval(refresh, 2000);
  }

  // Log: live tail over server-sent events.
  const tailButton = document.getElementById("tail");
  if (tailButton) {
    const rows = document.getElementById("log-rows");
    const status = document.getElementById("tail-status");
    let source = null;
    tailButton.addEventListener("click", () => {
      if (source) {
        source.close();
        source = null;
        tailButton.setAttribute("aria-pressed", "false");
        status.textContent = "";
        return;
      }
      const after = tailButton.dataset.after || "0";
      source = new EventSource(tailButton.dataset.tail + "?after=" + encodeURIComponent(after));
      tailButton.setAttribute("aria-pressed", "true");
      status.textContent = "live";
      source.addEventListener("row", (event) => {
        const empty = document.getElementById("log-empty");
        if (empty) empty.remove();
        rows.insertAdjacentHTML("beforeend", event.data);
        const row = rows.lastElementChild;
        if (row) row.classList.add("fresh");
        tailButton.dataset.after = event.lastEventId;
      });
      source.addEventListener("failure", (event) => {
        status.textContent = "stopped: " + event.data;
      });
      source.onerror = () => { status.textContent = "reconnecting…"; };
      source.onopen = () => { status.textContent = "live"; };
    });
  }

  // Actions: POST with the token in a header, then poll the job until it ends.
  const forms = document.querySelectorAll("form[data-action]");
  const token = document.getElementById("token");
  const job = document.getElementById("job");
  const error = document.getElementById("action-error");
  const show = (message) => {
    error.textContent = message;
    error.hidden = false;
  };
  const poll = async (url, buttons) => {
    const bar = document.getElementById("job-progress");
    const percent = document.getElementById("job-percent");
    const state = document.getElementById("job-state");
    const message = document.getElementById("job-message");
    for (;;) {
      const response = await fetch(url);
      const body = await response.json();
      if (!response.ok) { show(body.error || response.statusText); break; }
      bar.value = body.percent;
      percent.textContent = body.percent + " %";
      state.textContent = body.state + " · " + body.done + " / " + body.total;
      message.textContent = body.message;
      job.dataset.state = body.state;
      if (body.state !== "running") break;
      await new Promise((resolve) => setTimeout(resolve, 300));
    }
    buttons.forEach((b) => { b.disabled = false; });
  };
  forms.forEach((form) => {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      error.hidden = true;
      const buttons = document.querySelectorAll("form[data-action] button");
      const body = new URLSearchParams(new FormData(form));
      const headers = { "Content-Type": "application/x-www-form-urlencoded" };
      if (token && token.value) headers["X-Console-Token"] = token.value;
      let response;
      try {
        response = await fetch(form.action, { method: "POST", headers, body, credentials: "omit" });
      } catch (e) {
        show("request failed: " + e);
        return;
      }
      const answer = await response.json().catch(() => ({}));
      if (!response.ok) {
        show(response.status + " " + (answer.error || response.statusText));
        return;
      }
      buttons.forEach((b) => { b.disabled = true; });
      job.hidden = false;
      job.dataset.state = "running";
      document.getElementById("job-title").textContent =
        form.dataset.action === "replay" ? "Replay progress" : "Snapshot progress";
      poll(answer.progress, buttons).catch((e) => {
        show("progress failed: " + e);
        buttons.forEach((b) => { b.disabled = false; });
      });
    });
  });
})();
