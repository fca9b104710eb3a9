// The chat page: one WebSocket to /ws?id=<name>, kept up across abnormal closes.
//
// The server's welcome carries a resume token. After an abnormal close (1006: the
// connection was cut; 1011: heartbeat timeout; 1008: evicted as a slow consumer) the page
// reconnects with ?resume=<token> after a backoff with jitter, as wsfleet's RetryPolicy
// would, and the server hands it its held session back: groups kept, missed messages first.
// A clean close by the server (1000, 1001) ends the session; the page then offers to
// connect again.
//
// Rooms keep history: each line said in a room comes framed with its position,
// {"position": "<epoch>:<offset>", "data": "<the line>"}. The page keeps the last position
// per room; when its session could not be resumed (it expired, or the node is gone), it
// rejoins each room with {"since": position} and the server replays what it missed.
//
// The message list keeps the latest MAX_MESSAGES lines; when it drops older ones, its first
// line says how many.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const CLEAN = new Set([1000, 1001, 1005]);
  const MAX_MESSAGES = 300;

  let ws = null;
  let name = null;
  let token = null;
  let groups = [];
  const positions = {}; // room -> the last position read there
  let wanted = false;
  let attempt = 0;
  let timer = null;
  let trimmed = 0; // lines dropped from the top of the message list

  function setStatus(state, text) {
    const pill = $("status");
    pill.dataset.state = state;
    pill.textContent = text;
  }

  function log(kind, parts) {
    const item = document.createElement("li");
    item.className = kind;
    const time = document.createElement("time");
    time.textContent = new Date().toLocaleTimeString();
    item.append(time);
    for (const [cls, text] of parts) {
      const span = document.createElement("span");
      span.className = cls;
      span.textContent = text;
      item.append(span);
    }
    const list = $("messages");
    list.append(item);
    let notice = list.querySelector("li.trimmed");
    let excess = list.children.length - (notice ? 1 : 0) - MAX_MESSAGES;
    if (excess > 0) {
      if (!notice) {
        notice = document.createElement("li");
        notice.className = "trimmed";
        list.prepend(notice);
      }
      for (; excess > 0; excess -= 1) {
        notice.nextElementSibling.remove();
        trimmed += 1;
      }
      const lines = trimmed === 1 ? "1 older message was" : `${trimmed} older messages were`;
      notice.textContent = `${lines} trimmed: this list keeps the latest ${MAX_MESSAGES}`;
    }
    item.scrollIntoView({ block: "nearest" });
  }

  function clearMessages() {
    $("messages").replaceChildren();
    trimmed = 0;
  }

  function send(request) {
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify(request));
      return true;
    }
    log("error", [["text", "not connected: message not sent"]]);
    return false;
  }

  function showGroups() {
    const list = $("groups");
    const select = $("say-group");
    const chosen = select.value;
    list.replaceChildren();
    select.replaceChildren();
    for (const group of groups) {
      const item = document.createElement("li");
      item.dataset.group = group;
      item.append(document.createTextNode(group + " "));
      const leave = document.createElement("button");
      leave.type = "button";
      leave.textContent = "leave";
      leave.addEventListener("click", () => send({ op: "leave", group }));
      item.append(leave);
      list.append(item);
      const option = document.createElement("option");
      option.value = option.textContent = group;
      select.append(option);
    }
    if (groups.includes(chosen)) select.value = chosen;
  }

  function showRoom(visible) {
    $("room").hidden = !visible;
    $("login").hidden = visible;
  }

  function connect() {
    clearTimeout(timer);
    // One socket at a time: a second Connect must not leave the first one talking.
    const previous = ws;
    ws = null;
    if (previous) previous.close(1000, "replaced");
    const params = new URLSearchParams({ id: name });
    if (token) params.set("resume", token);
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/ws?${params}`);
    ws = socket;
    if (!attempt) setStatus("CONNECTING", "connecting…");
    socket.addEventListener("message", (event) => {
      if (ws === socket) receive(unframe(JSON.parse(event.data)));
    });
    socket.addEventListener("close", (event) => closed(socket, event));
  }

  function closed(socket, event) {
    if (ws !== socket) return;
    ws = null;
    if (!wanted) {
      setStatus("DISCONNECTED", "left");
      return;
    }
    if (CLEAN.has(event.code)) {
      wanted = false;
      token = null;
      const why = event.reason ? `: ${event.reason}` : "";
      setStatus("DISCONNECTED", `closed by the server (${event.code}${why})`);
      log("system", [["text", `the server closed the connection (${event.code}${why})`]]);
      showRoom(false);
      return;
    }
    attempt += 1;
    const delay = Math.min(10, 1.5 * 2 ** (attempt - 1)) * (0.9 + 0.2 * Math.random());
    setStatus("ERROR", `connection lost (${event.code}); back in ${delay.toFixed(1)} s`);
    log("system", [["text", `connection lost (${event.code}); reconnecting with the resume token`]]);
    timer = setTimeout(() => {
      setStatus("RECONNECTING", "reconnecting…");
      connect();
    }, delay * 1000);
  }

  // A line of a room that keeps history: remember where it stands, read what it carries.
  function unframe(message) {
    if (typeof message.position !== "string" || typeof message.data !== "string") return message;
    const line = JSON.parse(message.data);
    if (typeof line.group === "string") positions[line.group] = message.position;
    return line;
  }

  function receive(message) {
    switch (message.op) {
      case "welcome": {
        const lost = attempt > 0 && !message.resumed;
        attempt = 0;
        token = message.resume;
        setStatus("CONNECTED", `connected as ${message.id}${message.resumed ? " (resumed)" : ""}`);
        $("me").textContent = message.id;
        showRoom(true);
        if (message.resumed) {
          log("system", [["text", "session resumed: groups kept, missed messages delivered"]]);
          groups = message.groups;
        } else {
          // A new session: (re)join what this page was in, or the lobby the first time,
          // except the groups the name is in already (another tab of the same name).
          const wantedGroups = groups.length ? groups : ["lobby"];
          groups = message.groups;
          if (lost) log("system", [["text", "the session had expired: starting a new one"]]);
          for (const group of wantedGroups) {
            if (groups.includes(group)) log("system", [["text", `already in ${group}`]]);
            else if (positions[group]) send({ op: "join", group, since: positions[group] });
            else send({ op: "join", group });
          }
        }
        showGroups();
        break;
      }
      case "joined":
      case "left": {
        groups = message.groups;
        showGroups();
        const already = message.op === "joined" ? "already in" : "not in";
        log("system", [["text", `${message.already ? already : message.op} ${message.group}`]]);
        if (typeof message.recovered === "number") {
          log("system", [["text", `${message.recovered} missed line(s) of ${message.group} replayed`]]);
        } else if (message.lost) {
          log("system", [["text", `history of ${message.group} lost (${message.lost})`]]);
        }
        break;
      }
      case "said":
        log("said", [["where", `#${message.group}`], ["from", message.from], ["text", message.text]]);
        break;
      case "told":
        log("told", [["where", `${message.from} → ${message.to}`], ["text", message.text]]);
        break;
      case "shouted":
        log("shouted", [["where", "to everyone"], ["from", message.from], ["text", message.text]]);
        break;
      case "people": {
        // The server lists the first names of each and says how many more there are.
        const names = (list, more, none) => (list.length ? list.join(", ") + (more ? ` and ${more} more` : "") : none);
        const people = names(message.people, message.more_people, "nobody");
        $("people").textContent = `here: ${people}; groups: ${names(message.groups, message.more_groups, "none")}`;
        break;
      }
      case "error":
        log("error", [["text", message.reason]]);
        break;
      default:
        break;
    }
  }

  function onSubmit(id, handler) {
    $(id).addEventListener("submit", (event) => {
      event.preventDefault();
      handler();
    });
  }

  onSubmit("connect-form", () => {
    const value = $("name").value.trim();
    if (!value) return;
    name = value;
    token = null;
    groups = [];
    wanted = true;
    attempt = 0;
    clearMessages();
    connect();
  });
  onSubmit("join-form", () => {
    const input = $("group");
    const group = input.value.trim();
    if (group && send({ op: "join", group })) input.value = "";
  });
  onSubmit("say-form", () => {
    const input = $("say-text");
    if (input.value.trim() && send({ op: "say", group: $("say-group").value, text: input.value })) input.value = "";
  });
  onSubmit("tell-form", () => {
    const input = $("tell-text");
    const to = $("tell-to").value.trim();
    if (to && input.value.trim() && send({ op: "tell", to, text: input.value })) input.value = "";
  });
  onSubmit("shout-form", () => {
    const input = $("shout-text");
    if (input.value.trim() && send({ op: "shout", text: input.value })) input.value = "";
  });
  $("who").addEventListener("click", () => send({ op: "who" }));
  $("leave").addEventListener("click", () => {
    wanted = false;
    clearTimeout(timer);
    if (ws) ws.close(1000, "bye");
    showRoom(false);
  });

  // /?name=alice connects at once (handy for links, tests and screenshots).
  const preset = new URLSearchParams(location.search).get("name");
  if (preset) {
    $("name").value = preset;
    $("connect-form").requestSubmit();
  }
})();
