// rlhp labeling page. Two pairs of <video> players share one spot on the page: the active pair shows
// the current query, the hidden pair preloads the next one. Answering swaps them at once, then tells
// the local server (which already has the query after that leased and its clips in memory).
(() => {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const timings = (window.rlhpTimings = []); // {query_id, ms, playing_ms, preloaded} per answer
  const debug = (window.rlhpState = { shown: null, preloaded: null, polls: 0, errors: 0 });
  const FMT = (() => {
    const v = document.createElement("video");
    if (v.canPlayType('video/mp4; codecs="avc1.64001f"') || v.canPlayType("video/mp4")) return "mp4";
    if (v.canPlayType('video/webm; codecs="vp9"')) return "webm";
    return "mp4";
  })();

  const pairs = {
    active: document.querySelector(".pair.active"),
    hidden: document.querySelector(".pair.preload"),
  };
  let shown = null; // the query on screen
  let shownAt = 0; // performance.now() when it appeared
  let preloaded = null; // the query loaded in the hidden pair
  let pendingT0 = null; // answer time while nothing was preloaded (timing of the next pair)
  let mutations = 0; // answers/skips issued; responses to older requests are ignored
  let pollTimer = null;
  let chain = Promise.resolve(); // answers go to the server in order
  let speed = 1;

  // ------------------------------------------------------------------ players
  const videos = (pair) => [pair.querySelector("video.left"), pair.querySelector("video.right")];

  function loadPair(pair, q) {
    pair.dataset.query = q.id;
    const [l, r] = videos(pair);
    l.src = q.clips.left;
    r.src = q.clips.right;
    for (const v of [l, r]) {
      v.playbackRate = speed;
      v.load();
    }
  }

  function clearPair(pair) {
    clearTimeout(pair._endTimer);
    pair._endTimer = null;
    pair.dataset.query = "";
    for (const v of videos(pair)) {
      v.pause();
      if (v.hasAttribute("src")) {
        v.removeAttribute("src");
        v.load();
      }
    }
  }

  // Both clips restart together: when one ends, wait (briefly) for the other, then seek both to 0.
  function restart(pair) {
    clearTimeout(pair._endTimer);
    pair._endTimer = null;
    for (const v of videos(pair)) {
      v.playbackRate = speed;
      if (v.currentTime !== 0) v.currentTime = 0;
      const p = v.play();
      if (p && p.catch) p.catch(() => {});
    }
  }

  for (const pair of [pairs.active, pairs.hidden]) {
    const [l, r] = videos(pair);
    const onEnded = () => {
      if (!pair.classList.contains("active")) return;
      if (l.ended && r.ended) restart(pair);
      else if (!pair._endTimer) pair._endTimer = setTimeout(() => restart(pair), 300);
    };
    for (const v of [l, r]) {
      v.loop = false;
      v.addEventListener("ended", onEnded);
      v.addEventListener("error", () => {
        if (!v.getAttribute("src")) return;
        debug.errors += 1;
        if (pair.classList.contains("active")) {
          message("Could not load a clip of this query; trying again…", true);
          schedulePoll(2000);
        } else {
          preloaded = null;
          debug.preloaded = null;
          clearPair(pair);
        }
      });
    }
  }

  function swap() {
    const old = pairs.active;
    pairs.active = pairs.hidden;
    pairs.hidden = old;
    pairs.active.classList.replace("preload", "active");
    pairs.hidden.classList.replace("active", "preload");
    pairs.active.removeAttribute("aria-hidden");
    pairs.hidden.setAttribute("aria-hidden", "true");
    clearPair(pairs.hidden);
  }

  // Put query q on screen (its clips already in pairs.active) and time how soon it plays.
  function show(q, t0, wasPreloaded) {
    shown = q;
    debug.shown = q.id;
    shownAt = performance.now();
    document.body.classList.remove("idle");
    status(null);
    $("experiment").textContent = `${q.experiment} · ${q.env_id}` + (q.model_version ? ` · model v${q.model_version}` : "");
    $("goal-text").textContent = q.goal || "";
    $("goal").hidden = !q.goal;
    setButtons(true);
    const pair = pairs.active;
    restart(pair);
    if (t0 == null) return;
    const [l] = videos(pair);
    const rec = { query_id: q.id, ms: null, playing_ms: null, preloaded: wasPreloaded };
    timings.push(rec);
    l.addEventListener("playing", () => { rec.playing_ms = performance.now() - t0; if (!("requestVideoFrameCallback" in l)) rec.ms = rec.playing_ms; }, { once: true });
    if ("requestVideoFrameCallback" in l) {
      // First new frame presented after play(): the clip is visibly playing.
      l.requestVideoFrameCallback(() => { rec.ms = performance.now() - t0; });
    }
  }

  // ------------------------------------------------------------------ page state
  function status(text, kind, detail) {
    const el = $("status");
    if (!text) {
      el.hidden = true;
      return;
    }
    el.hidden = false;
    el.className = "status " + (kind || "");
    el.textContent = text;
    if (detail) {
      const d = document.createElement("span");
      d.className = "detail";
      d.textContent = detail;
      el.appendChild(d);
    }
  }

  function message(text, isError) {
    const el = $("message");
    el.textContent = text || "";
    el.className = "small" + (isError ? " error" : "");
  }

  function setButtons(enabled) {
    for (const b of document.querySelectorAll("#buttons button, #btn-skip")) b.disabled = !enabled;
  }

  function idle(text, kind, detail) {
    shown = null;
    debug.shown = null;
    clearPair(pairs.active);
    document.body.classList.add("idle");
    setButtons(false);
    $("experiment").textContent = "—";
    $("goal").hidden = true;
    status(text, kind, detail);
  }

  function counts(s) {
    if (typeof s.answered === "number") $("answered").textContent = s.answered;
    if (typeof s.pending === "number") $("pending").textContent = s.pending;
    if (s.me) {
      const m = s.me;
      const parts = [`${m.labels} labels`, `median ${m.median_seconds} s`];
      if (m.gold[1]) parts.push(`gold ${m.gold[0]}/${m.gold[1]} right`);
      if (m.agreement[1]) parts.push(`agreed ${m.agreement[0]}/${m.agreement[1]}`);
      $("me").textContent = "You: " + parts.join(" · ")
        + (m.excluded ? " — your labels are not used for training at the moment" : "");
    }
  }

  function apply(s) {
    counts(s);
    if (!s.available) {
      if (preloaded) {
        preloaded = null;
        debug.preloaded = null;
        clearPair(pairs.hidden);
      }
      if (!shown) {
        const why = s.waiting_for || "waiting for the agent to produce clips";
        idle("Waiting for the agent to produce clips…", "waiting",
             why.charAt(0).toUpperCase() + why.slice(1) + ". This page checks again every 2 s.");
      }
      schedulePoll(2000);
      return;
    }
    if (!shown || shown.id !== s.query.id) {
      const q = { ...s.query, clips: s.clips };
      if (preloaded && preloaded.id === q.id) {
        swap();
        preloaded = null;
        show(q, pendingT0, true);
      } else {
        clearPair(pairs.active);
        loadPair(pairs.active, q);
        show(q, pendingT0, false);
      }
      pendingT0 = null;
    }
    if (s.next) {
      if (!preloaded || preloaded.id !== s.next.id) {
        preloaded = s.next;
        debug.preloaded = s.next.id;
        clearPair(pairs.hidden);
        loadPair(pairs.hidden, s.next);
      }
    } else if (preloaded) {
      preloaded = null;
      debug.preloaded = null;
      clearPair(pairs.hidden);
    }
    // Until the next pair is ready, ask again soon; afterwards only to keep the counts fresh.
    schedulePoll(s.next ? 10000 : 700);
  }

  function failed(err) {
    debug.errors += 1;
    const body = err && err.body;
    if (body && typeof body.available === "boolean") apply(body);
    if (body && body.unreachable) {
      const where = body.server ? ` at ${body.server}` : "";
      if (!shown) idle(`Cannot reach the query service${where}. Retrying every 2 s…`, "error waiting", body.error);
      else message(`Cannot reach the query service${where}; retrying…`, true);
    } else if (body && body.error) {
      if (!shown) idle(body.error, "error");
      else message(body.error, true);
    } else if (!shown) {
      idle("Lost the connection to this labeling page's server (is `rlhp label` still running?). Retrying…",
           "error waiting");
    } else {
      message("Lost the connection to the labeling server; retrying…", true);
    }
    schedulePoll(2000);
  }

  // ------------------------------------------------------------------ server calls
  async function call(method, url, body) {
    const init = { method, headers: {}, cache: "no-store" };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(url, init);
    let data = null;
    try {
      data = await resp.json();
    } catch (e) {
      data = { error: `unexpected answer from the labeling server (HTTP ${resp.status})` };
    }
    if (!resp.ok) {
      const err = new Error(data.error || `HTTP ${resp.status}`);
      err.body = data;
      throw err;
    }
    return data;
  }

  function schedulePoll(ms) {
    clearTimeout(pollTimer);
    pollTimer = setTimeout(poll, ms);
  }

  function poll() {
    clearTimeout(pollTimer);
    const seq = mutations;
    debug.polls += 1;
    call("GET", `/api/next?fmt=${FMT}`)
      .then((s) => { if (seq === mutations) { message(""); apply(s); } })
      .catch((e) => { if (seq === mutations) failed(e); });
  }

  function act(kind, ans) {
    if (!shown) return;
    const q = shown;
    const seconds = (performance.now() - shownAt) / 1000;
    const t0 = performance.now();
    const seq = ++mutations;
    clearTimeout(pollTimer);
    message("");
    if (preloaded) {
      const next = preloaded;
      swap();
      preloaded = null;
      debug.preloaded = null;
      show(next, t0, true);
    } else {
      pendingT0 = t0;
      idle("Loading the next pair…", "waiting");
    }
    const request = kind === "answer"
      ? () => call("POST", "/api/answer", { query_id: q.id, answer: ans, seconds })
      : () => call("POST", "/api/skip", { query_id: q.id });
    chain = chain
      .then(request)
      .then((s) => {
        if (s.result && s.result.status !== "ACCEPTED" && s.result.message) message(s.result.message);
        if (seq === mutations) apply(s);
        else counts(s);
      })
      .catch((e) => { if (seq === mutations) failed(e); });
  }

  // ------------------------------------------------------------------ input
  const KEYS = { ArrowLeft: "LEFT", ArrowRight: "RIGHT", ArrowUp: "EQUAL", ArrowDown: "INCOMPARABLE" };
  document.addEventListener("keydown", (e) => {
    if (e.altKey || e.ctrlKey || e.metaKey || e.repeat) return;
    if (e.target && (e.target.tagName === "SELECT" || e.target.tagName === "INPUT")) return;
    const ans = KEYS[e.key];
    if (!ans) return;
    e.preventDefault();
    const btn = document.querySelector(`#buttons button[data-answer="${ans}"]`);
    if (btn) {
      btn.classList.add("pressed");
      setTimeout(() => btn.classList.remove("pressed"), 120);
    }
    act("answer", ans);
  });
  for (const b of document.querySelectorAll("#buttons button")) {
    b.addEventListener("click", () => { b.blur(); act("answer", b.dataset.answer); });
  }
  $("btn-skip").addEventListener("click", (e) => { e.target.blur(); act("skip"); });
  $("speed").addEventListener("change", (e) => {
    speed = parseFloat(e.target.value) || 1;
    for (const pair of [pairs.active, pairs.hidden]) for (const v of videos(pair)) v.playbackRate = speed;
    e.target.blur();
  });

  idle("Connecting to the query service…", "waiting");
  poll();
})();
