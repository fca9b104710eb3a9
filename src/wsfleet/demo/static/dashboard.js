// The dashboard: one WebSocket to /admin, a member of the "admins" group.
//
// The server pushes a snapshot at most four times a second (rows, counts, drops, the
// changes since the last one); this page only draws them. Rows are updated in place, by
// key, so a button is never replaced under the pointer. Times in state tick locally from
// the server's clock. The buttons send {"op": ..., "key": ...} and show the server's ack.
//
// Every snapshot fits the server's message size limit: a row lists its first groups and how
// many more there are, and the snapshot says how many rows ("hidden") and changes
// ("skipped") it left out; this page says so too.
//
// Some states last microseconds (a held session goes ERROR -> RECONNECTING at once), far
// less than one snapshot. So a row's state cell replays the connection's changes from the
// feed, each shown for at least REPLAY_MS, before it settles on the snapshot's state.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const STATES = ["CONNECTED", "IDLE", "ERROR", "RECONNECTING", "DISCONNECTED"];
  const FEED_KEPT = 200;
  const REPLAY_MS = 700;
  const COLUMNS = ["key", "identifier", "state", "age", "groups", "queued", "trail", "reason", "actions"];

  let ws = null;
  let token = null;
  let offset = 0; // server clock minus this page's clock, in seconds
  let attempt = 0;
  const rows = new Map(); // key -> <tr>
  const shown = new Map(); // key -> {state, since (ms), queue of states still to show}
  const seen = new Set(); // event numbers already in the feed

  const serverNow = () => Date.now() / 1000 + offset;

  function age(seconds) {
    seconds = Math.max(0, seconds);
    if (seconds < 60) return `${seconds.toFixed(0)} s`;
    const minutes = Math.floor(seconds / 60);
    return `${minutes} min ${Math.floor(seconds % 60)} s`;
  }

  function setText(element, text) {
    if (element.textContent !== text) element.textContent = text;
  }

  function button(op, key, label) {
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.op = op;
    b.dataset.key = key;
    b.textContent = label;
    return b;
  }

  function makeRow(row) {
    const tr = document.createElement("tr");
    tr.dataset.key = row.key;
    tr.dataset.identifier = row.identifier;
    for (const column of COLUMNS) {
      const td = document.createElement("td");
      td.className = column;
      tr.append(td);
    }
    const pill = document.createElement("span"); // the state, drawn by replay()
    pill.className = "pill";
    tr.querySelector(".state").append(pill);
    tr.querySelector(".actions").append(button("idle", row.key, "idle"), button("drop", row.key, "drop"));
    return tr;
  }

  function updateRow(tr, row) {
    const cell = (name) => tr.querySelector(`.${name}`);
    tr.dataset.state = row.state;
    tr.dataset.kind = row.kind;
    tr.dataset.since = row.since;
    setText(cell("key"), row.key);
    const ident = cell("identifier");
    setText(ident, row.identifier);
    ident.dataset.kind = row.kind;
    if (!shown.has(row.key)) shown.set(row.key, { state: row.state, since: 0, queue: [] });
    setText(cell("age"), age(serverNow() - row.since));
    setText(cell("groups"), row.groups.join(", ") + (row.more_groups ? ` and ${row.more_groups} more` : ""));
    setText(cell("queued"), String(row.queued));
    setText(cell("trail"), row.trail.join(" → "));
    setText(cell("reason"), row.reason || "");
    const live = row.state !== "DISCONNECTED";
    tr.querySelector('[data-op="idle"]').disabled = row.state !== "CONNECTED";
    tr.querySelector('[data-op="drop"]').disabled = !(row.state === "CONNECTED" || row.state === "IDLE");
    tr.classList.toggle("gone", !live);
  }

  // One step of the replay: the next queued state once the current one has been shown long
  // enough, else the snapshot's state.
  function replay() {
    const now = Date.now();
    for (const [key, tr] of rows) {
      const view = shown.get(key);
      if (now - view.since >= REPLAY_MS) {
        const next = view.queue.length ? view.queue.shift() : tr.dataset.state;
        if (next !== view.state) {
          view.state = next;
          view.since = now;
        }
      }
      const pill = tr.querySelector(".state .pill");
      pill.dataset.state = view.state;
      setText(pill, view.state);
    }
  }

  function drawRows(list) {
    const body = document.querySelector("#connections tbody");
    const keys = new Set(list.map((row) => row.key));
    for (const [key, tr] of rows) {
      if (!keys.has(key)) {
        tr.remove();
        rows.delete(key);
        shown.delete(key);
      }
    }
    let previous = null;
    for (const row of list) {
      let tr = rows.get(row.key);
      if (!tr) {
        tr = makeRow(row);
        rows.set(row.key, tr);
      }
      updateRow(tr, row);
      const expected = previous ? previous.nextElementSibling : body.firstElementChild;
      if (expected !== tr) body.insertBefore(tr, expected); // move only when out of order
      previous = tr;
    }
    for (const key of shown.keys()) if (!keys.has(key)) shown.delete(key);
    replay();
  }

  function drawHidden(hidden) {
    const note = $("hidden");
    note.hidden = !hidden;
    setText(note, hidden ? `and ${hidden} more connection${hidden === 1 ? "" : "s"}, not listed: one update must stay under the message size limit` : "");
  }

  function addSkipped(skipped) {
    if (!skipped) return;
    const item = document.createElement("li");
    item.className = "skipped";
    item.textContent = `${skipped} state change${skipped === 1 ? "" : "s"} not shown (too many at once)`;
    $("feed").prepend(item);
  }

  function drawCounts(states, gone, dashboards) {
    // DISCONNECTED connections leave the manager at once; the table keeps them a minute.
    // The server leaves the dashboards (this one included) out of the counts.
    states = { ...states, DISCONNECTED: (states.DISCONNECTED || 0) + gone };
    for (const state of STATES) setText($(`count-${state}`), String(states[state] || 0));
    setText($("watching"), `not counted: ${dashboards} dashboard${dashboards === 1 ? "" : "s"} watching`);
    for (const node of document.querySelectorAll("#diagram g.node")) {
      const state = node.querySelector("title").textContent;
      node.classList.add(`s-${state}`);
      node.classList.toggle("lit", (states[state] || 0) > 0);
    }
  }

  function drawTable(id, entries, empty) {
    const body = document.querySelector(`#${id} tbody`);
    body.replaceChildren();
    for (const [name, value] of entries) {
      const tr = document.createElement("tr");
      const th = document.createElement("th");
      th.textContent = name;
      const td = document.createElement("td");
      td.textContent = String(value);
      tr.append(th, td);
      body.append(tr);
    }
    if (!entries.length) {
      const tr = document.createElement("tr");
      const td = document.createElement("td");
      td.className = "hint";
      td.textContent = empty;
      tr.append(td);
      body.append(tr);
    }
  }

  function flash(event) {
    const title = `${event.old || "new"}->${event.new}`;
    for (const edge of document.querySelectorAll("#diagram g.edge")) {
      if (edge.querySelector("title").textContent === title) {
        edge.classList.remove("flash");
        void edge.getBoundingClientRect(); // restart the animation
        edge.classList.add("flash");
      }
    }
  }

  function addEvents(events, live) {
    const feed = $("feed");
    for (const event of events) {
      if (seen.has(event.n)) continue;
      seen.add(event.n);
      const item = document.createElement("li");
      item.dataset.n = String(event.n);
      item.dataset.key = event.key;
      item.dataset.identifier = event.identifier;
      item.dataset.state = event.new;
      const time = document.createElement("time");
      time.textContent = new Date(event.at * 1000).toLocaleTimeString();
      const who = document.createElement("span");
      who.className = "who";
      who.textContent = `${event.identifier} (${event.key})`;
      const change = document.createElement("span");
      change.className = "change";
      change.textContent = `${event.old || "new"} → ${event.new}`;
      const reason = document.createElement("span");
      reason.className = "reason";
      reason.textContent = event.reason || "";
      item.append(time, who, change, reason);
      feed.prepend(item);
      if (live) {
        flash(event);
        const view = shown.get(event.key);
        if (view) view.queue.push(event.new);
        else shown.set(event.key, { state: event.new, since: Date.now(), queue: [] });
      }
    }
    while (feed.children.length > FEED_KEPT) {
      seen.delete(Number(feed.lastElementChild.dataset.n));
      feed.lastElementChild.remove();
    }
  }

  function receive(message) {
    switch (message.type) {
      case "hello": {
        token = message.resume;
        addEvents(message.feed, false);
        const list = $("policies");
        list.replaceChildren();
        for (const [name, text] of Object.entries(message.policies)) {
          const dt = document.createElement("dt");
          dt.textContent = name;
          const dd = document.createElement("dd");
          dd.textContent = text;
          list.append(dt, dd);
        }
        break;
      }
      case "snapshot": {
        offset = message.now - Date.now() / 1000;
        const node = message.node ? `node ${message.node}, backplane ${message.backplane}` : "in-memory backplane";
        setText($("where"), `${message.backend} · ${node}`);
        addSkipped(message.skipped);
        addEvents(message.events, true); // first: the rows replay these changes
        drawRows(message.rows);
        drawHidden(message.hidden);
        drawCounts(message.states, message.gone, message.dashboards);
        drawTable("drops", Object.entries(message.drops), "nothing dropped");
        drawTable("stats", Object.entries(message.stats), "");
        break;
      }
      case "ack": {
        const ack = $("ack");
        ack.textContent = message.detail;
        ack.dataset.ok = String(message.ok);
        break;
      }
      default:
        break;
    }
  }

  function setLink(state, text) {
    const pill = $("link");
    pill.dataset.state = state;
    pill.textContent = text;
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const query = token ? `?resume=${encodeURIComponent(token)}` : "";
    const socket = new WebSocket(`${scheme}://${location.host}/admin${query}`);
    ws = socket;
    socket.addEventListener("open", () => {
      attempt = 0;
      setLink("CONNECTED", "live");
    });
    socket.addEventListener("message", (event) => receive(JSON.parse(event.data)));
    socket.addEventListener("close", (event) => {
      if (ws !== socket) return;
      ws = null;
      attempt += 1;
      const delay = Math.min(10, 1 * 2 ** (attempt - 1));
      setLink("ERROR", `disconnected (${event.code}); again in ${delay} s`);
      setTimeout(() => {
        setLink("RECONNECTING", "reconnecting…");
        connect();
      }, delay * 1000);
    });
  }

  function press(request) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(request));
  }

  document.querySelector("#connections tbody").addEventListener("click", (event) => {
    const target = event.target.closest("button[data-op]");
    if (target) press({ op: target.dataset.op, key: target.dataset.key });
  });
  $("stall").addEventListener("click", () => press({ op: "stall" }));
  $("kill").addEventListener("click", () => press({ op: "kill" }));
  setInterval(replay, 100);
  setInterval(() => {
    for (const tr of rows.values()) setText(tr.querySelector(".age"), age(serverNow() - Number(tr.dataset.since)));
  }, 500);
  connect();
})();
