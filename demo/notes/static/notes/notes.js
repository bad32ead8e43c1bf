// The notes page: one WebSocket to whichever worker the kernel picked, notes edited in place,
// who is here, and the topology panel that the worker pushes. No framework, no build step.
"use strict";

const config = JSON.parse(document.getElementById("demo-config").textContent);
const $ = (id) => document.getElementById(id);
const EDIT_DEBOUNCE_MS = 200;
const RECONNECT_DELAYS_MS = [500, 1000, 2000, 5000];

const state = {
  socket: null,
  me: null,
  pid: null,
  notes: new Map(), // id -> {note, element}
  deleted: new Set(), // ids: a late copy of a deleted note must not bring it back
  people: new Map(),
  pending: new Map(), // ref -> element: notes sent, not yet broadcast back (say, mid-failover)
  lastFailover: null,
  refs: 0,
  reconnects: 0, // since the last hello: sets the next delay
  closes: 0, // since the page loaded: a failover should leave it at 0
};

// -- the socket ------------------------------------------------------------------------------

function myName() {
  let name = localStorage.getItem("demo-name");
  if (!name) {
    const animals = ["Otter", "Heron", "Lynx", "Puffin", "Marten", "Ibex", "Gecko", "Wren"];
    name = `${animals[Math.floor(Math.random() * animals.length)]} ${Math.floor(Math.random() * 90 + 10)}`;
    localStorage.setItem("demo-name", name);
  }
  return name;
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const query = new URLSearchParams({ name: myName() });
  const socket = new WebSocket(`${scheme}://${location.host}/ws/rooms/${config.room}/?${query}`);
  state.socket = socket;
  setStatus("connecting", "connecting…");
  socket.onmessage = (event) => handle(JSON.parse(event.data));
  socket.onclose = (event) => {
    if (state.socket !== socket) return;
    state.closes += 1;
    const delay = RECONNECT_DELAYS_MS[Math.min(state.reconnects, RECONNECT_DELAYS_MS.length - 1)];
    state.reconnects += 1;
    setStatus("closed", `closed (code ${event.code}); reconnecting in ${delay / 1000} s`);
    setTimeout(connect, delay);
  };
}

function send(message) {
  if (!state.socket || state.socket.readyState !== WebSocket.OPEN) {
    toast("Not connected: the change was not sent.");
    return null;
  }
  const ref = `${state.me?.id ?? "tab"}-${++state.refs}`;
  state.socket.send(JSON.stringify({ ...message, ref, sent_at: Date.now() / 1000 }));
  return ref;
}

function setStatus(kind, text) {
  const status = $("status");
  status.className = `status status-${kind}`;
  status.textContent = text;
}

const handlers = {
  hello(message) {
    state.me = message.you;
    state.pid = message.pid;
    state.reconnects = 0;
    setStatus("connected", "connected");
    $("worker-pid").textContent = message.pid;
    $("me").textContent = message.you.name;
    $("room").textContent = message.room;
    resetNotes(message.notes);
    for (const ref of [...state.pending.keys()]) settle(ref); // the server's notes are the truth
    state.people = new Map(message.people.map((person) => [person.id, person]));
    renderPeople();
  },
  note(message) {
    settle(message.ref);
    upsertNote(message.note, message.origin === state.me?.id);
  },
  deleted(message) {
    removeNote(message.id);
  },
  presence(message) {
    if (message.event === "join") state.people.set(message.person.id, message.person);
    else state.people.delete(message.person.id);
    renderPeople();
  },
  topology(message) {
    renderWorker(message.worker);
    if (message.sandbox) renderSandbox(message.sandbox);
  },
  error(message) {
    settle(message.ref);
    toast(message.message);
  },
};

function handle(message) {
  const handler = handlers[message.type];
  if (handler) handler(message);
}

// -- notes -----------------------------------------------------------------------------------

function resetNotes(notes) {
  for (const { element } of state.notes.values()) element.remove();
  state.notes.clear();
  for (const note of notes) upsertNote(note, false);
}

function upsertNote(note, mine) {
  if (state.deleted.has(note.id)) return;
  const known = state.notes.get(note.id);
  if (known && known.note.version >= note.version) return; // a stale or repeated copy
  if (!known) {
    state.notes.set(note.id, { note, element: noteElement(note) });
    $("notes").append(state.notes.get(note.id).element);
  } else {
    known.note = note;
    const input = known.element.querySelector("input");
    // While you type in a note, your own echoes lag behind your keys: leave the field alone.
    if (!(mine && document.activeElement === input)) setValue(input, note.text);
    known.element.querySelector(".meta").textContent = meta(note);
    flash(known.element);
  }
  updateEmpty();
}

function noteElement(note) {
  const item = document.createElement("li");
  item.className = "note";
  item.dataset.id = note.id;
  const input = document.createElement("input");
  input.value = note.text;
  input.maxLength = 280;
  input.setAttribute("aria-label", "note text");
  let timer = null;
  input.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => send({ type: "edit", id: note.id, text: input.value }), EDIT_DEBOUNCE_MS);
  });
  const remove = document.createElement("button");
  remove.type = "button";
  remove.className = "remove";
  remove.title = "Delete this note";
  remove.textContent = "×";
  remove.addEventListener("click", () => send({ type: "delete", id: note.id }));
  const metaLine = document.createElement("div");
  metaLine.className = "meta";
  metaLine.textContent = meta(note);
  const row = document.createElement("div");
  row.className = "row";
  row.append(input, remove);
  item.append(row, metaLine);
  flash(item);
  return item;
}

function removeNote(id) {
  state.deleted.add(id);
  const known = state.notes.get(id);
  if (known) known.element.remove();
  state.notes.delete(id);
  updateEmpty();
}

function updateEmpty() {
  $("empty").hidden = state.notes.size > 0 || state.pending.size > 0;
}

function setValue(input, text) {
  if (input.value === text) return;
  const focused = document.activeElement === input;
  const [start, end] = [input.selectionStart, input.selectionEnd];
  input.value = text;
  if (focused) input.setSelectionRange(Math.min(start, text.length), Math.min(end, text.length));
}

function meta(note) {
  return `${note.version > 1 ? "edited" : "added"} by ${note.by} · ${clock(note.at)} · v${note.version}`;
}

function flash(element) {
  element.classList.remove("flash");
  void element.offsetWidth; // restart the animation
  element.classList.add("flash");
}

$("add-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = $("new-note");
  const text = input.value.trim();
  const ref = text ? send({ type: "add", text }) : null;
  if (ref) {
    input.value = "";
    showPending(ref, text);
  }
});

// A note sent but not yet back from the group: shown greyed out, so that a note typed while
// Redis fails over visibly waits for the new master instead of vanishing.
function showPending(ref, text) {
  const item = document.createElement("li");
  item.className = "note pending";
  const body = document.createElement("div");
  body.className = "row";
  body.textContent = text;
  const metaLine = document.createElement("div");
  metaLine.className = "meta";
  metaLine.textContent = "sending…";
  item.append(body, metaLine);
  $("notes").append(item);
  state.pending.set(ref, item);
  updateEmpty();
}

function settle(ref) {
  const item = ref && state.pending.get(ref);
  if (!item) return;
  item.remove();
  state.pending.delete(ref);
  updateEmpty();
}

// -- people ----------------------------------------------------------------------------------

function renderPeople() {
  const list = $("people");
  list.replaceChildren();
  const people = [...state.people.values()].sort((a, b) => a.name.localeCompare(b.name));
  for (const person of people) {
    const item = document.createElement("li");
    const dot = document.createElement("span");
    dot.className = "dot";
    dot.style.background = workerColour(person.pid);
    const name = document.createElement("span");
    name.textContent = person.id === state.me?.id ? `${person.name} (you)` : person.name;
    const pid = document.createElement("code");
    pid.className = "muted";
    pid.textContent = `worker ${person.pid}`;
    item.append(dot, name, pid);
    list.append(item);
  }
  $("people-count").textContent = people.length;
}

function workerColour(pid) {
  return `hsl(${(pid * 137) % 360} 65% 48%)`;
}

// -- the topology panel ----------------------------------------------------------------------

function renderWorker(worker) {
  $("layer").textContent = worker.layer;
  $("mode").textContent = worker.mode;
  $("nodes-via").textContent = `via ${worker.nodes.join(", ")}`;
  const stats = worker.statistics;
  if (!stats) {
    $("master").textContent = "not reported by this layer";
    for (const id of ["server-changes", "reconnects"]) $(id).textContent = "–";
    state.lastFailover = null;
    renderAge();
    return;
  }
  $("master").textContent = stats.master ? stats.master.replace(/^tcp:\/\//, "") : "not connected yet";
  $("server-changes").textContent = stats.server_changes;
  $("reconnects").textContent = stats.reconnects;
  state.lastFailover = stats.last_server_change;
  renderAge();
}

function renderAge() {
  $("last-failover").textContent = state.lastFailover
    ? `${clock(state.lastFailover)} (${Math.round(Date.now() / 1000 - state.lastFailover)} s ago)`
    : "none seen";
}

function renderSandbox(sandbox) {
  $("sandbox").hidden = false;
  if (sandbox.error) {
    $("phase").textContent = "unreachable";
    $("kill-master").disabled = true;
    return;
  }
  const phase = $("phase");
  phase.textContent = sandbox.phase;
  phase.className = `pill phase-${sandbox.phase.replace(/ /g, "-")}`;
  $("kill-master").disabled = sandbox.phase !== "healthy";
  $("nodes").replaceChildren(
    ...sandbox.nodes.map((node) => row([node.name, node.address, node.role, node.pid ?? "–"], `role-${node.role}`)),
  );
  $("sentinels").replaceChildren(...sandbox.sentinels.map((s) => row([s.name, s.master ?? "no answer"])));
  $("events").replaceChildren(
    ...sandbox.events.slice().reverse().map((event) => {
      const item = document.createElement("li");
      const time = document.createElement("code");
      time.textContent = clock(event.at);
      item.append(time, event.text);
      return item;
    }),
  );
}

function row(cells, className) {
  const tr = document.createElement("tr");
  if (className) tr.className = className;
  for (const cell of cells) {
    const td = document.createElement("td");
    td.textContent = cell;
    tr.append(td);
  }
  return tr;
}

$("kill-master").addEventListener("click", async () => {
  const button = $("kill-master");
  button.disabled = true;
  const token = document.querySelector('meta[name="csrf-token"]').content;
  try {
    const response = await fetch("/api/sandbox/kill-master", { method: "POST", headers: { "X-CSRFToken": token } });
    const reply = await response.json();
    toast(response.ok ? `Killed ${reply.killed} (pid ${reply.pid}). Keep typing.` : reply.error);
  } catch (error) {
    toast(`The kill request failed: ${error}`);
  }
});

// -- small things ----------------------------------------------------------------------------

function clock(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString([], { hour12: false });
}

let toastTimer = null;
function toast(text) {
  const box = $("toast");
  box.textContent = text;
  box.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (box.hidden = true), 4000);
}

$("sandbox").hidden = !config.sandbox;
setInterval(renderAge, 1000);
connect();
