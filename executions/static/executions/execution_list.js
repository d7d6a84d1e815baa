/*
 * The executions list: while a row on the page is pending or running, fetch the page's
 * rows again every few seconds (the same URL with ?partial=rows, which answers only the
 * table's rows, rendered and escaped by the server) and stop once none is.
 */
(() => {
  "use strict";

  const rows = document.querySelector("[data-live-rows]");
  if (!rows) return;

  const url = rows.dataset.rowsUrl;
  const interval = Number(rows.dataset.refreshMs) || 3000;
  const ACTIVE = "[data-status='pending'], [data-status='running']";

  function schedule() {
    if (rows.querySelector(ACTIVE)) setTimeout(refresh, interval);
  }

  function replaceRows(html) {
    // Parsed in a document of its own, where nothing runs, then moved into the table.
    const parsed = new DOMParser().parseFromString(
      `<table><tbody>${html}</tbody></table>`,
      "text/html",
    );
    // Keep the keyboard focus on the row it was in, which is replaced too.
    const focused = rows.contains(document.activeElement)
      ? document.activeElement.closest("[data-execution-id]")
      : null;
    rows.replaceChildren(...parsed.querySelector("tbody").children);
    if (focused) {
      for (const row of rows.querySelectorAll("[data-execution-id]")) {
        if (row.dataset.executionId === focused.dataset.executionId) {
          row.querySelector("a")?.focus();
        }
      }
    }
  }

  async function refresh() {
    if (!document.hidden) {
      try {
        const response = await fetch(url, {
          credentials: "same-origin",
          headers: { Accept: "text/html" },
        });
        // A redirect leads to the login page (the session ended): stop rather than show it.
        if (response.redirected) return;
        if (response.ok) replaceRows(await response.text());
      } catch {
        // The network failed this time: the rows stay as they are until the next try.
      }
    }
    schedule();
  }

  schedule();
})();
