/*
 * The live execution page: the server renders the execution as the database holds it,
 * and this script follows its event stream from there with the browser's EventSource.
 *
 * Each event is applied once. Events carry their sequence number as their id; the page
 * holds everything up to data-last-seq, and an event whose id is at or below the highest
 * applied is a replay and is dropped (a reconnect resumes with Last-Event-ID, which the
 * browser sends, or with ?last_event_id= when this script opens the stream again). Nodes
 * are looked up by their node id, so no event can add a node twice.
 *
 * Everything an event carries is written with textContent: outputs are data, never markup.
 */
(() => {
  "use strict";

  const root = document.getElementById("execution");
  if (!root) return;

  const STATUS_LABELS = {
    pending: "Pending",
    running: "Running",
    completed: "Completed",
    failed: "Failed",
    cancelled: "Cancelled",
  };
  // The contract's three stream states (the page starts as "reconnecting", "Connecting…").
  const STREAM_LABELS = {
    live: "Live",
    reconnecting: "Reconnecting…",
    finished: "Finished",
  };
  const FINISHED = new Set(["completed", "failed", "cancelled"]);
  const TERMINAL_EVENTS = new Set([
    "execution:completed",
    "execution:failed",
    "execution:cancelled",
  ]);
  // When the browser gives up on the stream (an error status, say a proxy's 502 while the
  // server restarts), the script opens it again itself, waiting longer each time up to this.
  const MAX_RETRY_DELAY_MS = 30000;

  const streamState = root.querySelector("[data-stream-state]");
  const timeline = root.querySelector("[data-role='timeline']");
  const nodeTemplate = document.getElementById("node-template");
  const progressBar = root.querySelector("progress");
  // Elapsed times are measured against the server's timestamps, so on the server's clock.
  const clockOffset = Date.parse(root.dataset.serverTime) - Date.now() || 0;
  const nodes = new Map();
  for (const element of timeline.querySelectorAll("[data-node-id]")) {
    nodes.set(element.dataset.nodeId, element);
  }
  let lastId = Number(root.dataset.lastSeq) || 0;
  let source = null;
  let retries = 0;
  let ticker = null;
  let finished = false;

  // Formatting, as the server writes it (executions.pages) -------------------------------

  function formatDuration(ms) {
    if (ms === null || ms === undefined || Number.isNaN(ms)) return "—";
    ms = Math.max(0, Math.floor(ms));
    if (ms < 1000) return `${ms} ms`;
    if (ms < 60000) {
      const tenths = Math.floor(ms / 100);
      return tenths % 10 === 0
        ? `${Math.floor(tenths / 10)} s`
        : `${Math.floor(tenths / 10)}.${tenths % 10} s`;
    }
    const seconds = Math.floor(ms / 1000);
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${seconds % 60} s`;
    return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
  }

  function timeElement(iso) {
    const time = document.createElement("time");
    time.setAttribute("datetime", iso);
    const date = new Date(iso);
    const pad = (number) => String(number).padStart(2, "0");
    time.textContent =
      `${date.getUTCFullYear()}-${pad(date.getUTCMonth() + 1)}-${pad(date.getUTCDate())} ` +
      `${pad(date.getUTCHours())}:${pad(date.getUTCMinutes())}:${pad(date.getUTCSeconds())} UTC`;
    return time;
  }

  function progressText(percent, completedNodes, totalNodes) {
    if (totalNodes) return `${percent}% (${completedNodes} of ${totalNodes} nodes)`;
    return `${percent}%`;
  }

  function resultSummary(status, durationMs) {
    const label = STATUS_LABELS[status];
    if (durationMs === null) return `${label}.`;
    const preposition = status === "completed" ? "in" : "after";
    return `${label} ${preposition} ${formatDuration(durationMs)}.`;
  }

  // The page's elements ------------------------------------------------------------------

  function part(element, role) {
    return element.querySelector(`[data-role='${role}']`);
  }

  function setText(element, role, text) {
    const target = part(element, role);
    if (target) target.textContent = text;
    return target;
  }

  function showJson(container, value) {
    // container is a <details> holding a <pre>: shown only when there is something to show.
    container.hidden = value === null || value === undefined;
    container.querySelector("pre").textContent = container.hidden
      ? ""
      : JSON.stringify(value, null, 2);
  }

  function showError(element, role, message) {
    const box = part(element, role);
    box.hidden = !message;
    setText(box, `${role}-text`, message || "");
  }

  function setStreamState(state) {
    streamState.dataset.streamState = state;
    streamState.textContent = STREAM_LABELS[state];
  }

  function setStatus(status) {
    root.dataset.status = status;
    setText(root, "execution-status", STATUS_LABELS[status] || status);
  }

  function setTime(role, iso) {
    part(root, role).replaceChildren(timeElement(iso));
  }

  // The node count the last progress event gave, for the completion to say "3 of 3".
  let knownTotal = null;

  function setProgress(percent, completedNodes, totalNodes) {
    if (totalNodes != null) knownTotal = totalNodes;
    progressBar.value = percent;
    const text = progressText(percent, completedNodes, totalNodes);
    progressBar.textContent = text;
    setText(root, "progress-text", text);
  }

  function spanMs(fromIso, toIso) {
    const span = Date.parse(toIso) - Date.parse(fromIso);
    return Number.isNaN(span) ? null : span;
  }

  // Nodes --------------------------------------------------------------------------------

  function nodeElement(data) {
    let element = nodes.get(data.node_id);
    if (!element) {
      element = nodeTemplate.content.firstElementChild.cloneNode(true);
      element.dataset.nodeId = data.node_id;
      setText(element, "node-id", data.node_id);
      nodes.set(data.node_id, element);
      timeline.append(element);
      part(root, "timeline-empty").hidden = true;
    }
    if (data.node_type) setText(element, "node-type", data.node_type);
    return element;
  }

  function setNodeStatus(element, status) {
    element.dataset.status = status;
    setText(element, "status", STATUS_LABELS[status]);
  }

  function finishNode(element, status, durationMs) {
    setNodeStatus(element, status);
    setText(element, "duration", formatDuration(durationMs));
  }

  function closeRunningNodes(status, atIso, error) {
    // The server closes the nodes an execution leaves running, with no event of their own.
    for (const element of nodes.values()) {
      if (element.dataset.status !== "running") continue;
      finishNode(element, status, spanMs(element.dataset.startedAt, atIso));
      if (error) showError(element, "error", error);
    }
  }

  // Live elapsed times -------------------------------------------------------------------

  function tick() {
    const now = Date.now() + clockOffset;
    for (const element of nodes.values()) {
      if (element.dataset.status === "running" && element.dataset.startedAt) {
        setText(element, "duration", formatDuration(now - Date.parse(element.dataset.startedAt)));
      }
    }
    if (root.dataset.status === "running" && root.dataset.startedAt) {
      setText(root, "execution-duration", formatDuration(now - Date.parse(root.dataset.startedAt)));
    }
  }

  // Events -------------------------------------------------------------------------------

  function finishExecution(status, atIso, durationMs) {
    setStatus(status);
    setTime("completed-at", atIso);
    const duration = durationMs ?? (root.dataset.startedAt ? spanMs(root.dataset.startedAt, atIso) : null);
    setText(root, "execution-duration", formatDuration(duration));
    const result = part(root, "result");
    setText(result, "result-summary", resultSummary(status, duration));
    result.hidden = false;
  }

  const handlers = {
    "execution:started"(data) {
      setStatus("running");
      root.dataset.startedAt = data.started_at;
      setTime("started-at", data.started_at);
    },
    "execution:progress"(data) {
      setProgress(data.progress, data.completed_nodes, data.total_nodes);
    },
    "node:started"(data) {
      const element = nodeElement(data);
      // A node runs once: one that the page already shows finished stays finished.
      if (FINISHED.has(element.dataset.status)) return;
      element.dataset.startedAt = data.started_at;
      setNodeStatus(element, "running");
      tick();
    },
    "node:completed"(data) {
      const element = nodeElement(data);
      finishNode(element, "completed", data.duration_ms);
      showJson(part(element, "outputs"), data.outputs);
    },
    "node:failed"(data) {
      const element = nodeElement(data);
      finishNode(element, "failed", data.duration_ms);
      showError(element, "error", data.error);
    },
    "execution:completed"(data) {
      finishExecution("completed", data.completed_at, data.duration_ms);
      setProgress(100, knownTotal, knownTotal);
      showJson(part(root, "execution-outputs"), data.outputs);
    },
    "execution:failed"(data) {
      closeRunningNodes("failed", data.completed_at, data.error);
      finishExecution("failed", data.completed_at);
      showError(root, "execution-error", data.error);
    },
    "execution:cancelled"(data) {
      closeRunningNodes("cancelled", data.cancelled_at);
      finishExecution("cancelled", data.cancelled_at);
    },
  };

  function finish() {
    finished = true;
    if (source) source.close();
    clearInterval(ticker);
    setStreamState("finished");
    const cancel = part(root, "cancel");
    if (cancel) cancel.hidden = true;
  }

  function onEvent(event) {
    const id = Number(event.lastEventId);
    if (finished || !Number.isSafeInteger(id) || id <= lastId) return;
    lastId = id;
    handlers[event.type](JSON.parse(event.data));
    if (TERMINAL_EVENTS.has(event.type)) finish();
  }

  function onError() {
    if (finished) return;
    setStreamState("reconnecting");
    if (source.readyState === EventSource.CLOSED) {
      const delay = Math.min(MAX_RETRY_DELAY_MS, 1000 * 2 ** retries);
      retries += 1;
      setTimeout(connect, delay);
    }
    // Otherwise the browser reconnects by itself, with Last-Event-ID.
  }

  function connect() {
    const url = new URL(root.dataset.eventsUrl, window.location.href);
    url.searchParams.set("last_event_id", String(lastId));
    source = new EventSource(url);
    source.addEventListener("connected", () => {
      retries = 0;
      setStreamState("live");
    });
    for (const type of Object.keys(handlers)) source.addEventListener(type, onEvent);
    source.addEventListener("error", onError);
  }

  // A finished execution is all on the page already: no stream to open.
  if (FINISHED.has(root.dataset.status) || !root.dataset.eventsUrl) {
    setStreamState("finished");
    return;
  }
  ticker = setInterval(tick, 1000);
  connect();
})();
