// Start a workflow and watch its execution live, resuming after a dropped connection.
// Node 18+ (global fetch); no dependencies.  Usage:
//   FLOWMAESTRO_API_KEY=fm_live_... node watch.mjs [base_url]
const BASE_URL = process.argv[2] ?? "http://127.0.0.1:8000";
const KEY = process.env.FLOWMAESTRO_API_KEY;
const headers = { Authorization: `Bearer ${KEY}`, "Content-Type": "application/json" };

async function api(method, path, body) {
  const response = await fetch(`${BASE_URL}${path}`, {
    method,
    headers,
    body: body && JSON.stringify(body),
  });
  const payload = await response.json();
  if (!response.ok) {
    const { code, message, details } = payload.error;
    throw new Error(`${response.status} ${code}: ${message} ${JSON.stringify(details ?? {})}`);
  }
  return payload.data;
}

// Yields each event's parsed data; reconnects with Last-Event-ID until a terminal event.
async function* watch(executionId) {
  let lastEventId = null;
  for (;;) {
    const response = await fetch(`${BASE_URL}/api/v1/executions/${executionId}/events`, {
      headers: { ...headers, ...(lastEventId ? { "Last-Event-ID": lastEventId } : {}) },
    });
    if (response.status === 204) return; // we already have the terminal event
    if (!response.ok) throw new Error(`${response.status}: ${await response.text()}`);
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for await (const chunk of response.body) {
        buffer += decoder.decode(chunk, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) !== -1) {
          const frame = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let data = null;
          for (const line of frame.split("\n")) {
            if (line.startsWith("id: ")) lastEventId = line.slice(4);
            else if (line.startsWith("data: ")) data = JSON.parse(line.slice(6));
          }
          if (data === null) continue; // retry: or a keepalive comment
          yield data;
          if (["execution:completed", "execution:failed", "execution:cancelled"].includes(data.type)) {
            return;
          }
        }
      }
    } catch (error) {
      console.error(`connection lost (${error.message}); resuming after ${lastEventId}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 3000));
  }
}

const started = await api("POST", "/api/v1/workflows/wf_demo/execute", {
  inputs: { nodes: 3, delay_ms: 500 },
});
console.log(`started ${started.execution_id}`);
for await (const event of watch(started.execution_id)) {
  console.log(event.type, event.node_id ?? "", event.progress ?? "");
}
const execution = await api("GET", `/api/v1/executions/${started.execution_id}`);
console.log(execution.status, JSON.stringify(execution.outputs));
