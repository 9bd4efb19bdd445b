// confab's browser client: one WebSocket per room, events rendered as they stream. Reconnects
// on its own and resumes from the last seq it saw (the server replays what was missed).
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const st = { ws: null, room: "", name: "", lastSeq: 0, epoch: undefined, me: null, turns: new Map(), active: null, retry: 0, leaving: false, typingAt: 0 };

  function status(text) { $("status").textContent = text; }

  // The tenant's API key, from `#key=…` (a fragment never reaches the server or its logs),
  // kept for this tab only. Not needed when the server runs in dev mode.
  const KEY = (() => {
    const m = /(?:^#|&)key=([^&]+)/.exec(location.hash);
    if (m) {
      sessionStorage.setItem("confab.key", decodeURIComponent(m[1]));
      history.replaceState(null, "", location.pathname + location.search);
    }
    return sessionStorage.getItem("confab.key") || "";
  })();
  const authHeaders = KEY ? { Authorization: `Bearer ${KEY}` } : {};
  // Browsers cannot set headers on a WebSocket: the key travels as a subprotocol.
  const protocols = KEY ? ["confab.v1", `confab.bearer.${KEY}`] : ["confab.v1"];

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function turn(id) {
    let t = st.turns.get(id);
    if (!t) {
      const item = el("li");
      const user = el("div", "msg user");
      const answer = el("div", "msg assistant");
      answer.hidden = true;
      item.append(user, answer);
      $("log").append(item);
      t = { item, user, answer, text: "", sources: [] };
      st.turns.set(id, t);
    }
    return t;
  }

  function showPrompt(t, from, text) {
    t.user.replaceChildren(el("div", "who", from), el("div", "text", text));
  }

  function showAnswer(t, model) {
    t.answer.hidden = false;
    t.answer.replaceChildren(el("div", "who", "assistant" + (model ? " · " + model : "")), el("div", "text"), el("div", "meta"));
  }

  function answerText(t) { return t.answer.querySelector(".text"); }

  // The finished answer with its [n] turned into links that open the source's snippet.
  function renderCitations(id, t) {
    const box = answerText(t);
    box.replaceChildren();
    const parts = t.text.split(/(\[\d+\])/);
    for (const part of parts) {
      const m = part.match(/^\[(\d+)\]$/);
      const src = m && t.sources.find((s) => s.n === Number(m[1]));
      if (!src) { box.append(part); continue; }
      const b = el("button", "link cite", part);
      b.type = "button";
      b.setAttribute("aria-controls", `src-${id}-${src.n}`);
      b.addEventListener("click", () => {
        const d = $(`src-${id}-${src.n}`);
        if (d) { d.open = true; d.querySelector("summary").focus(); }
      });
      box.append(b);
    }
    if (!t.sources.length) return;
    const list = el("div", "sources");
    for (const s of t.sources) {
      const d = el("details");
      d.id = `src-${id}-${s.n}`;
      const where = [s.title, s.section !== s.title ? s.section : "", s.page ? `page ${s.page}` : ""].filter(Boolean).join(" › ");
      d.append(el("summary", "", `[${s.n}] ${where}`), el("p", "snippet", s.snippet));
      list.append(d);
    }
    t.answer.querySelector(".meta").before(list);
  }

  function people(members) {
    $("people").replaceChildren(...members.map((m) => el("li", "", m.name + (m.session_id === st.me ? " (you)" : ""))));
  }

  function setActive(id) {
    st.active = id;
    $("cancel").disabled = !id;
  }

  function handle(ev) {
    if (ev.seq) {
      if (ev.seq <= st.lastSeq && ev.type !== "resync") return; // already seen (replay overlap)
      st.lastSeq = ev.seq;
    }
    switch (ev.type) {
      case "welcome":
        st.me = ev.session_id;
        // Resume where this page was: its last seq, in the log epoch it was seen in.
        send({ type: "join", room: st.room, name: st.name, last_seq: st.lastSeq || undefined, epoch: st.epoch });
        break;
      case "resync": {
        $("log").replaceChildren();
        st.turns.clear();
        const snap = ev.snapshot;
        st.epoch = snap.epoch;
        for (const t of snap.turns.concat(snap.active ? [snap.active] : [])) {
          const v = turn(t.turn_id);
          showPrompt(v, t.from.name, t.prompt);
          showAnswer(v);
          v.text = t.answer;
          answerText(v).textContent = t.answer;
        }
        setActive(snap.active ? snap.active.turn_id : null);
        people(snap.members);
        break;
      }
      case "presence":
        people(ev.members);
        status(`In room “${st.room}” as ${st.name}`);
        $("prompt").disabled = false;
        $("send").disabled = false;
        break;
      case "typing":
        $("typing").textContent = ev.active ? `${ev.member.name} is typing…` : "";
        break;
      case "message":
        showPrompt(turn(ev.turn_id), ev.from.name, ev.text);
        break;
      case "start": {
        const t = turn(ev.turn_id);
        showAnswer(t, ev.model);
        t.text = "";
        setActive(ev.turn_id);
        $("typing").textContent = "";
        break;
      }
      case "tool": {
        const t = turn(ev.turn_id);
        t.sources = (ev.output && ev.output.results) || [];
        break;
      }
      case "delta": {
        const t = turn(ev.turn_id);
        if (t.answer.hidden) showAnswer(t);
        t.text += ev.text;
        answerText(t).textContent = t.text;
        break;
      }
      case "metrics": {
        const t = turn(ev.turn_id);
        const cost = ev.cost_usd ? ` · $${ev.cost_usd.toFixed(5)}` : "";
        const cached = ev.cached ? " · from cache" : "";
        if (!t.answer.hidden) t.answer.querySelector(".meta").textContent = `${ev.model} · ${ev.duration_ms} ms${cost}${cached}`;
        break;
      }
      case "end": {
        const t = turn(ev.turn_id);
        if (!t.answer.hidden) {
          renderCitations(ev.turn_id, t);
          if (ev.finish_reason !== "stop") t.answer.querySelector(".meta").append(` · ${ev.finish_reason}${ev.partial ? " (partial)" : ""}`);
        }
        if (st.active === ev.turn_id) setActive(null);
        break;
      }
      case "error": {
        const line = el("li", "msg error", `⚠ ${ev.message}`);
        line.setAttribute("role", "alert");
        $("log").append(line);
        break;
      }
    }
  }

  function send(msg) {
    if (st.ws && st.ws.readyState === WebSocket.OPEN) st.ws.send(JSON.stringify(msg));
  }

  function connect() {
    const proto = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${proto}://${location.host}/v1/ws?room=${encodeURIComponent(st.room)}`, protocols);
    st.ws = ws;
    status("Connecting…");
    st.opened = false;
    ws.onopen = () => { st.retry = 0; st.opened = true; };
    ws.onmessage = (m) => { try { handle(JSON.parse(m.data)); } catch (e) { console.error(e); } };
    ws.onclose = (e) => {
      if (st.ws !== ws || st.leaving) return;
      $("prompt").disabled = true;
      $("send").disabled = true;
      // 1012: the server restarts and says when to come back; otherwise back off.
      const hinted = /reconnect_after_ms=(\d+)/.exec(e.reason || "");
      const wait = hinted ? Number(hinted[1]) : Math.min(5000, 300 * 2 ** st.retry++);
      status(st.opened ? `Disconnected (${e.code}); reconnecting…`
        : "Cannot connect; if this server needs an API key, open the page with #key=YOUR_KEY");
      if (!st.opened && st.retry > 3) return;
      setTimeout(connect, wait);
    };
  }

  $("join").addEventListener("submit", (e) => {
    e.preventDefault();
    const room = $("room").value.trim(), name = $("name").value.trim();
    if (!room || !name) return;
    if (st.ws) { st.leaving = true; st.ws.close(1000); }
    Object.assign(st, { room, name, lastSeq: 0, epoch: undefined, turns: new Map(), leaving: false });
    $("log").replaceChildren();
    connect();
  });

  $("ask").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("prompt").value.trim();
    if (!text) return;
    send({ type: "prompt", text, client_msg_id: crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) });
    send({ type: "typing", active: false });
    $("prompt").value = "";
  });
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("ask").requestSubmit(); }
  });
  $("prompt").addEventListener("input", () => {
    const now = Date.now();
    if (now - st.typingAt > 1000) { st.typingAt = now; send({ type: "typing", active: true }); }
  });
  $("cancel").addEventListener("click", () => { if (st.active) send({ type: "cancel", turn_id: st.active }); });

  $("upload").addEventListener("submit", async (e) => {
    e.preventDefault();
    const file = $("file").files[0];
    if (!file) return;
    const item = el("li", "", `${file.name}: uploading…`);
    const bar = el("progress");
    bar.max = 1; bar.value = 0;
    bar.setAttribute("aria-label", `${file.name} progress`);
    $("docs").prepend(item);
    item.append(bar);
    const form = new FormData();
    form.append("file", file, file.name);
    const resp = await fetch("/v1/documents", { method: "POST", body: form, headers: authHeaders });
    let doc = await resp.json().catch(() => ({}));
    if (!resp.ok) { item.firstChild.textContent = `${file.name}: ${doc.message || resp.status}`; item.classList.add("error"); bar.remove(); return; }
    while (doc.status !== "indexed" && doc.status !== "failed") {
      item.firstChild.textContent = `${file.name}: ${doc.status} ${doc.chunks_done || 0}/${doc.chunks_total || "?"}`;
      bar.max = doc.chunks_total || 1; bar.value = doc.chunks_done || 0;
      await new Promise((r) => setTimeout(r, 1000)); // one request a second: within per-user rate limits
      const r = await fetch(`/v1/documents/${doc.id}`, { headers: authHeaders });
      if (!r.ok) break;
      doc = await r.json();
    }
    item.firstChild.textContent = doc.status === "indexed" ? `${file.name}: indexed (${doc.chunks} chunk${doc.chunks === 1 ? "" : "s"})` : `${file.name}: failed — ${doc.error || "unknown error"}`;
    if (doc.status !== "indexed") item.classList.add("error");
    bar.max = 1; bar.value = doc.status === "indexed" ? 1 : 0;
  });

  const params = new URLSearchParams(location.search);
  if (params.get("room")) $("room").value = params.get("room");
  if (params.get("name")) $("name").value = params.get("name");
})();
