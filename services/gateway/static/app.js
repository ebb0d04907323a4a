// The live page: follows one board's top 10 and one athlete over a raw WebSocket,
// reconnecting with backoff and resuming each subscription from its last seq.
"use strict";

(() => {
  const TOP_N = 10;
  const AROUND = 2;
  const MIN_RETRY_MS = 500;
  const MAX_RETRY_MS = 10000;
  const MAX_OVERTAKES_SHOWN = 20;

  const elements = {
    status: document.getElementById("status"),
    form: document.getElementById("choose"),
    board: document.getElementById("board"),
    period: document.getElementById("period"),
    group: document.getElementById("group"),
    groupField: document.getElementById("group-field"),
    athlete: document.getElementById("athlete"),
    top: document.getElementById("top"),
    topTitle: document.getElementById("top-title"),
    topMeta: document.getElementById("top-meta"),
    topEmpty: document.getElementById("top-empty"),
    meSection: document.getElementById("me-section"),
    me: document.getElementById("me"),
    neighbours: document.getElementById("neighbours"),
    overtakes: document.getElementById("overtakes"),
  };

  const state = {
    url: null,
    socket: null,
    boards: new Map(),
    // Subscription id -> {request, seq}; seq is null until the first snapshot.
    subscriptions: new Map(),
    generation: 0,
    retryMs: MIN_RETRY_MS,
    retryTimer: null,
    follow: null,
  };

  function setStatus(kind, text, resumed) {
    elements.status.dataset.state = kind;
    elements.status.dataset.resumed = resumed ? "true" : "false";
    elements.status.textContent = text;
  }

  function send(message) {
    if (state.socket && state.socket.readyState === WebSocket.OPEN) {
      state.socket.send(JSON.stringify(message));
    }
  }

  function subscribeAll() {
    for (const [id, subscription] of state.subscriptions) {
      const message = { type: "subscribe", id, ...subscription.request };
      if (subscription.seq !== null) {
        message.since = subscription.seq;
      }
      send(message);
    }
  }

  function connect() {
    clearTimeout(state.retryTimer);
    setStatus("connecting", "Connecting…", false);
    const socket = new WebSocket(state.url);
    state.socket = socket;
    socket.addEventListener("message", (event) => onMessage(JSON.parse(event.data)));
    socket.addEventListener("close", (event) => {
      if (state.socket !== socket) {
        return;
      }
      state.socket = null;
      const delayMs = Math.round(state.retryMs * (0.75 + Math.random() / 2));
      state.retryMs = Math.min(state.retryMs * 2, MAX_RETRY_MS);
      setStatus("reconnecting", `Disconnected (code ${event.code}); reconnecting in ${Math.ceil(delayMs / 1000)} s…`, false);
      state.retryTimer = setTimeout(connect, delayMs);
    });
  }

  function onMessage(message) {
    if (message.type === "welcome") {
      state.retryMs = MIN_RETRY_MS;
      subscribeAll();
      return;
    }
    if (message.type === "error") {
      elements.topMeta.textContent = `Error: ${message.message}`;
      return;
    }
    const subscription = state.subscriptions.get(message.id);
    if (!subscription) {
      return; // A reply to a subscription replaced by a newer choice.
    }
    if (message.type === "overtake") {
      showOvertake(message);
      return;
    }
    if (message.type === "update" && subscription.seq !== null && message.seq <= subscription.seq) {
      return;
    }
    subscription.seq = message.seq;
    if (message.type === "snapshot") {
      setStatus("live", message.resumed ? "Live (resumed)" : "Live", message.resumed);
    }
    if (message.id.startsWith("top")) {
      renderTop(message);
    } else {
      renderFollowed(message);
    }
  }

  function rowFor(list, entry, followed) {
    let row = list.querySelector(`li[data-user-id="${CSS.escape(entry.user_id)}"]`);
    if (!row) {
      row = document.createElement("li");
      row.dataset.userId = entry.user_id;
      for (const part of ["rank", "name", "score"]) {
        const span = document.createElement("span");
        span.className = part;
        row.appendChild(span);
      }
    }
    const previousRank = row.dataset.rank ? Number(row.dataset.rank) : null;
    row.classList.remove("up", "down");
    if (previousRank !== null && previousRank !== entry.rank) {
      void row.offsetWidth; // Restart the animation when the class comes back.
      row.classList.add(entry.rank < previousRank ? "up" : "down");
    }
    row.dataset.rank = String(entry.rank);
    row.classList.toggle("me", entry.user_id === followed);
    const unit = state.boards.get(elements.board.value)?.unit || "";
    row.querySelector(".rank").textContent = `#${entry.rank}`;
    row.querySelector(".name").textContent = entry.display_name || entry.user_id;
    row.querySelector(".score").textContent = unit ? `${entry.score} ${unit}` : String(entry.score);
    row.setAttribute("aria-label", `Rank ${entry.rank}: ${entry.display_name || entry.user_id}, ${row.querySelector(".score").textContent}`);
    return row;
  }

  function renderList(list, entries, followed) {
    // Rows slide from their old place to their new one (first, last, invert, play).
    const before = new Map();
    for (const row of list.children) {
      before.set(row.dataset.userId, row.getBoundingClientRect().top);
    }
    const keep = new Set();
    for (const entry of entries) {
      const row = rowFor(list, entry, followed);
      list.appendChild(row);
      keep.add(entry.user_id);
    }
    for (const row of [...list.children]) {
      if (!keep.has(row.dataset.userId)) {
        row.remove();
      }
    }
    for (const row of list.children) {
      const top = before.get(row.dataset.userId);
      const delta = top === undefined ? 0 : top - row.getBoundingClientRect().top;
      if (delta) {
        row.style.transition = "none";
        row.style.transform = `translateY(${delta}px)`;
        requestAnimationFrame(() => {
          row.style.transition = "";
          row.style.transform = "";
        });
      }
    }
  }

  function renderTop(message) {
    renderList(elements.top, message.entries, state.follow);
    elements.topEmpty.hidden = message.entries.length > 0;
    const group = message.group ? `, group ${message.group}` : "";
    const final = message.type === "final" ? " (final standings)" : "";
    elements.topMeta.textContent = `Period ${message.period}${group}${final}`;
  }

  function renderFollowed(message) {
    const standing = message.standing;
    elements.meSection.hidden = false;
    if (!standing) {
      elements.me.textContent = `${state.follow} has no score in this period yet.`;
      elements.me.dataset.rank = "";
      renderList(elements.neighbours, [], state.follow);
      return;
    }
    const name = standing.display_name || standing.user_id;
    elements.me.dataset.rank = String(standing.rank);
    elements.me.textContent = `${name}: rank ${standing.rank} of ${standing.participants}, score ${standing.score}`;
    const around = [...standing.neighbours, standing].sort((a, b) => a.rank - b.rank || a.user_id.localeCompare(b.user_id));
    renderList(elements.neighbours, around, state.follow);
  }

  function showOvertake(message) {
    const lines = [];
    if (message.passed.length) {
      lines.push(`passed ${message.passed.join(", ")}`);
    }
    if (message.passed_by.length) {
      lines.push(`was passed by ${message.passed_by.join(", ")}`);
    }
    const more = message.more ? ` and ${message.more} more` : "";
    const item = document.createElement("li");
    item.textContent = `${message.user_id} ${lines.join(" and ")}${more}: rank ${message.old_rank} → ${message.new_rank}`;
    elements.overtakes.prepend(item);
    while (elements.overtakes.children.length > MAX_OVERTAKES_SHOWN) {
      elements.overtakes.lastElementChild.remove();
    }
  }

  function choose() {
    // New ids per choice, so late replies to the previous choice are recognised and dropped.
    for (const id of state.subscriptions.keys()) {
      send({ type: "unsubscribe", id });
    }
    state.subscriptions.clear();
    state.generation += 1;
    const board = state.boards.get(elements.board.value);
    const request = { board: elements.board.value, period: elements.period.value };
    if (board && board.scope === "group") {
      request.group = elements.group.value.trim();
    }
    state.follow = elements.athlete.value.trim() || null;
    elements.topTitle.textContent = `Top ${TOP_N}: ${board?.title || elements.board.value}`;
    elements.top.replaceChildren();
    elements.neighbours.replaceChildren();
    elements.overtakes.replaceChildren();
    elements.meSection.hidden = state.follow === null;
    state.subscriptions.set(`top${state.generation}`, { request: { ...request, top: TOP_N }, seq: null });
    if (state.follow !== null) {
      state.subscriptions.set(`me${state.generation}`, { request: { ...request, top: 0, user: state.follow, around: AROUND }, seq: null });
    }
    const query = new URLSearchParams({ board: request.board, period: request.period });
    if (state.follow) {
      query.set("athlete", state.follow);
    }
    history.replaceState(null, "", `?${query}`);
    subscribeAll();
  }

  async function start() {
    const [config, boards] = await Promise.all([
      fetch("/v1/live/config").then((response) => response.json()),
      fetch("/v1/boards").then((response) => response.json()),
    ]);
    state.url = config.ws_url;
    for (const board of boards.boards) {
      state.boards.set(board.id, board);
      const option = document.createElement("option");
      option.value = board.id;
      option.textContent = board.title || board.id;
      elements.board.appendChild(option);
    }
    const params = new URLSearchParams(location.search);
    if (params.get("board") && state.boards.has(params.get("board"))) {
      elements.board.value = params.get("board");
    }
    elements.period.value = params.get("period") === "previous" ? "previous" : "current";
    elements.athlete.value = params.get("athlete") || "";
    const showGroup = () => {
      elements.groupField.hidden = state.boards.get(elements.board.value)?.scope !== "group";
    };
    elements.board.addEventListener("change", showGroup);
    showGroup();
    elements.form.addEventListener("submit", (event) => {
      event.preventDefault();
      choose();
    });
    choose();
    connect();
  }

  start().catch((error) => setStatus("reconnecting", `Could not load the page settings: ${error}`, false));
})();
