// The trace page: draws the timeline, the tree and the selected log's details from the
// trace JSON, and polls it while the trace is still running.
//
// Everything in a log is untrusted text (model output, user input). It reaches the page only
// through textContent and DOM properties, never innerHTML, so it is shown and never parsed.
"use strict";

(() => {
  const POLL_MS = 1000;
  const RETRY_MS = 3000;
  const MIN_BAR_PERCENT = 0.4;

  const apiPath = document.body.dataset.api;
  let selectedId = document.body.dataset.selected;
  let trace = null;
  let shownDetailsKey = null;

  // --- small DOM helpers -----------------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function badge(status) {
    return el("span", "status status-" + status, status);
  }

  function formatMs(ms) {
    if (ms === null || ms === undefined) return "-";
    if (ms < 1) return "<1 ms";
    if (ms < 1000) return Math.round(ms) + " ms";
    if (ms < 60000) return (ms / 1000).toFixed(2) + " s";
    const seconds = Math.floor(ms / 1000);
    return Math.floor(seconds / 60) + "m " + String(seconds % 60).padStart(2, "0") + "s";
  }

  function durationText(log) {
    if (log.duration_ms !== null && log.duration_ms !== undefined) return formatMs(log.duration_ms);
    return log.running ? "running" : "-";
  }

  function formatTime(iso) {
    return iso ? iso.replace("T", " ") : "-";
  }

  function section(title, content, className) {
    const box = el("section", "detail-section" + (className ? " " + className : ""));
    box.append(el("h3", null, title), content);
    return box;
  }

  function collapsible(title, content, open) {
    const box = el("details", "detail-section collapsible");
    box.open = Boolean(open);
    box.append(el("summary", null, title), content);
    return box;
  }

  // --- JSON as a collapsible tree --------------------------------------------------------

  function jsonScalar(value) {
    const kind = value === null ? "null" : typeof value;
    const text = kind === "string" ? JSON.stringify(value) : String(value);
    return el("span", "json-" + kind, text);
  }

  function jsonTree(value, key, depth) {
    const isContainer = value !== null && typeof value === "object";
    const entries = isContainer
      ? (Array.isArray(value) ? value.map((item, index) => [index, item]) : Object.entries(value))
      : [];
    if (!isContainer || entries.length === 0) {
      const row = el("div", "json-row");
      if (key !== null) row.append(el("span", "json-key", key + ": "));
      row.append(isContainer ? el("span", "json-empty", Array.isArray(value) ? "[]" : "{}")
        : jsonScalar(value));
      return row;
    }
    const box = el("details", "json-node");
    box.open = depth < 2;
    const label = Array.isArray(value) ? "[" + entries.length + "]" : "{" + entries.length + "}";
    const summary = el("summary");
    if (key !== null) summary.append(el("span", "json-key", key + ": "));
    summary.append(el("span", "json-count", label));
    const children = el("div", "json-children");
    for (const [childKey, child] of entries) children.append(jsonTree(child, childKey, depth + 1));
    box.append(summary, children);
    return box;
  }

  function json(value) {
    const box = el("div", "json");
    box.append(jsonTree(value, null, 0));
    return box;
  }

  // --- chat messages ---------------------------------------------------------------------

  function messageContent(content) {
    const box = el("div", "message-content");
    if (typeof content === "string") {
      box.textContent = content;
    } else if (Array.isArray(content)) {
      for (const part of content) {
        if (part.type === "text") box.append(el("div", "part-text", part.text));
        else if (part.type === "image_url") {
          // Shown as its address: the page loads nothing a log points at.
          box.append(el("div", "part-image", "image: " + part.image_url.url));
        }
      }
    }
    return box;
  }

  function chat(messages) {
    const box = el("div", "chat");
    for (const message of messages) {
      const bubble = el("div", "message");
      bubble.classList.add("role-" + message.role);
      const who = message.name ? message.role + " · " + message.name : message.role;
      bubble.append(el("div", "message-role", who));
      if (message.content !== null && message.content !== undefined) {
        bubble.append(messageContent(message.content));
      }
      for (const call of message.tool_calls || []) {
        const args = call.function.arguments || "";
        bubble.append(el("pre", "tool-call", "→ " + call.function.name + "(" + args + ")"));
      }
      if (message.tool_call_id) {
        bubble.append(el("div", "tool-call-id", "answers tool call " + message.tool_call_id));
      }
      box.append(bubble);
    }
    return box;
  }

  // --- the three views -------------------------------------------------------------------

  function kindBadge(log) {
    return log.kind && log.kind !== "flow" ? el("span", "kind kind-" + log.kind, log.kind) : null;
  }

  function formatCost(dollars) {
    if (dollars === null || dollars === undefined) return null;
    if (dollars === 0) return "$0";
    // cents and up to the tenth of a cent; below, two significant digits ($0.0038)
    return "$" + (dollars >= 0.01 ? dollars.toFixed(3) : String(Number(dollars.toPrecision(2))));
  }

  function tokensText(input, output) {
    if ((input === null || input === undefined) && (output === null || output === undefined)) {
      return null;
    }
    return (input || 0) + " in · " + (output || 0) + " out";
  }

  function renderTree() {
    const rows = trace.logs.map((log) => {
      const row = el("button", "tree-row");
      row.type = "button";
      row.dataset.logId = log.id;
      row.style.paddingLeft = 0.5 + log.depth * 1.25 + "em";
      row.classList.toggle("selected", log.id === selectedId);
      row.append(el("span", "tree-name", log.path));
      const kind = kindBadge(log);
      if (kind) row.append(kind);
      row.append(badge(log.status), el("span", "tree-duration", durationText(log)));
      row.addEventListener("click", () => select(log.id));
      return row;
    });
    document.getElementById("tree").replaceChildren(...rows);
  }

  function renderWaterfall() {
    const span = trace.span_ms > 0 ? trace.span_ms : 1;
    const rows = trace.logs.map((log) => {
      const row = el("div", "wf-row");
      row.classList.toggle("selected", log.id === selectedId);
      const label = el("div", "wf-label", log.path);
      label.style.paddingLeft = log.depth * 0.9 + "em";
      const track = el("div", "wf-track");
      if (log.offset_ms !== null && log.offset_ms !== undefined) {
        const bar = el("div", "wf-bar wf-" + log.status + (log.running ? " wf-running" : ""));
        const left = (log.offset_ms / span) * 100;
        const width = Math.max(((log.end_ms - log.offset_ms) / span) * 100, MIN_BAR_PERCENT);
        bar.style.left = Math.min(left, 100 - MIN_BAR_PERCENT) + "%";
        bar.style.width = Math.min(width, 100 - left) + "%";
        bar.title = log.path + " · " + durationText(log);
        track.append(bar);
      }
      row.append(label, track, el("div", "wf-duration", durationText(log)));
      row.addEventListener("click", () => select(log.id));
      return row;
    });
    const scale = el("div", "wf-scale");
    scale.append(el("span", null, "0"), el("span", null, formatMs(trace.span_ms)));
    document.getElementById("waterfall").replaceChildren(scale, ...rows);
  }

  function facts(log) {
    const list = el("dl", "facts");
    const rows = [
      ["log id", log.id], ["status", log.status], ["start", formatTime(log.start_time)],
      ["end", formatTime(log.end_time)], ["duration", durationText(log)],
      ["created", log.created_at ? formatTime(log.created_at) : null],
      ["provider latency", log.provider_latency !== undefined ? log.provider_latency + " s" : null],
      ["user", log.user], ["source", log.source], ["environment", log.environment],
      ["run", log.run_id], ["datapoint", log.source_datapoint_id],
      ["parent", log.trace_parent_id], ["flow version", log.version_id],
    ];
    for (const [name, value] of rows) {
      if (value === null || value === undefined) continue;
      list.append(el("dt", null, name), el("dd", null, value));
    }
    return list;
  }

  // An LLM call: model, provider, tokens, cost, latency, finish reason.
  function llmFacts(log) {
    const list = el("dl", "facts llm-facts");
    const cost = (log.prompt_cost || 0) + (log.output_cost || 0);
    const known = log.prompt_cost !== undefined || log.output_cost !== undefined;
    const rows = [
      ["model", log.kernel.model], ["provider", log.kernel.provider],
      ["temperature", log.kernel.temperature], ["max tokens", log.kernel.max_tokens],
      ["tokens", tokensText(log.prompt_tokens, log.output_tokens)],
      ["cache read", log.cache_read_tokens], ["cache write", log.cache_write_tokens],
      ["reasoning", log.reasoning_tokens],
      ["cost", known ? formatCost(cost) : null],
      ["latency", log.provider_latency !== undefined ? formatMs(log.provider_latency * 1000) : null],
      ["finish reason", log.finish_reason],
      ["tool choice", log.tool_choice !== undefined ? JSON.stringify(log.tool_choice) : null],
    ];
    for (const [name, value] of rows) {
      if (value === null || value === undefined) continue;
      list.append(el("dt", null, name), el("dd", null, value));
    }
    return list;
  }

  function renderTotals() {
    const totals = trace.totals || {};
    const parts = [];
    const tokens = tokensText(totals.prompt_tokens, totals.output_tokens);
    if (tokens) parts.push(tokens + " tokens");
    const cost = (totals.prompt_cost || 0) + (totals.output_cost || 0);
    if (totals.prompt_cost !== undefined || totals.output_cost !== undefined) {
      parts.push(formatCost(cost));
    }
    if (totals.pending) parts.push(totals.pending + " pending");
    document.getElementById("trace-totals").textContent = parts.length ? "· " + parts.join(" · ") : "";
  }

  function isEmpty(value) {
    return value === null || value === undefined
      || (typeof value === "object" && Object.keys(value).length === 0);
  }

  function renderDetails(log) {
    const parts = [];
    const heading = el("h2", "detail-title");
    heading.append(el("span", "flow-path", log.path));
    const kind = kindBadge(log);
    if (kind) heading.append(kind);
    heading.append(badge(log.status));
    parts.push(heading);
    if (log.status === "pending") {
      parts.push(el("p", "pending-note",
        "Pending: logs under it arrived, but this parent span has not (yet)."));
    }
    if (log.kind === "prompt") parts.push(section("LLM call", llmFacts(log), "llm-section"));
    parts.push(facts(log));
    if (log.error !== undefined) {
      const box = el("div", "error-box");
      box.append(el("pre", "error-message", log.error));
      if (log.traceback) box.append(el("pre", "traceback", log.traceback));
      parts.push(section("Error", box, "error-section"));
    }
    if (!isEmpty(log.inputs)) parts.push(section("Inputs", json(log.inputs)));
    if (log.messages && log.messages.length) parts.push(section("Messages", chat(log.messages)));
    if (log.output_message) parts.push(section("Output message", chat([log.output_message])));
    if (log.output !== undefined) parts.push(section("Output", el("pre", "output", log.output)));
    if (log.stdout) parts.push(section("Stdout", el("pre", "terminal", log.stdout)));
    if (!isEmpty(log.flowtrace)) parts.push(section("Recorder flags", json(log.flowtrace)));
    if (!isEmpty(log.metadata)) parts.push(section("Metadata", json(log.metadata)));
    if (log.provider_request !== undefined) {
      parts.push(collapsible("Provider request", json(log.provider_request), false));
    }
    if (log.provider_response !== undefined) {
      parts.push(collapsible("Provider response", json(log.provider_response), false));
    }
    parts.push(collapsible("Version attributes", json(log.attributes), true));
    document.getElementById("details").replaceChildren(...parts);
  }

  // --- selection, loading, polling -------------------------------------------------------

  function selectedLog() {
    return trace.logs.find((log) => log.id === selectedId) || trace.logs[0];
  }

  function detailsKey(log) {
    // end_ms of a running log moves with the clock; the details do not show it.
    return JSON.stringify({ ...log, end_ms: null });
  }

  function render() {
    const log = selectedLog();
    selectedId = log.id;
    renderWaterfall();
    renderTree();
    renderTotals();
    const key = detailsKey(log);
    if (key !== shownDetailsKey) {
      renderDetails(log);
      shownDetailsKey = key;
    }
    const traceStatus = document.getElementById("trace-status");
    traceStatus.textContent = trace.status;
    traceStatus.className = "status status-" + trace.status;
    document.getElementById("live-note").textContent = trace.live ? "live · updating" : "";
    document.body.classList.toggle("live", trace.live);
  }

  function select(logId) {
    selectedId = logId;
    history.replaceState(null, "", "/traces/" + encodeURIComponent(logId));
    render();
  }

  async function load() {
    let next = null;
    try {
      const response = await fetch(apiPath, { credentials: "same-origin", cache: "no-store" });
      if (!response.ok) throw new Error("the server answered " + response.status);
      trace = await response.json();
      render();
      if (trace.live) next = POLL_MS;
    } catch (error) {
      document.getElementById("live-note").textContent = "could not load the trace: " + error.message;
      next = RETRY_MS;
    }
    if (next !== null) setTimeout(load, next);
  }

  load();
})();
