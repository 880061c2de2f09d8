/* oeleo monitor page: reads api/status and api/files, draws the plots as inline SVG, and
   sends the actions (retry, lock, unlock) with the session cookie and its CSRF token.
   Plain JavaScript, no framework, nothing from the internet (the Content-Security-Policy is
   default-src 'self': no inline script or style, no eval). Every URL is relative (api/status,
   static/app.js), so the page works as well behind a reverse proxy under a path (/oeleo/). */
"use strict";

(function () {
  var REFRESH_MS = 15000;
  var TOKEN_KEY = "oeleo-monitor-token"; // sessionStorage only: gone when the tab closes
  var SVG = "http://www.w3.org/2000/svg";

  var state = {
    csrf: null,
    loggedIn: false,
    status: null,
    search: { q: "", code: "", page: 1, pages: 1 },
    timer: null,
    allPasses: false,
  };

  // ------------------------------------------------------------------ small helpers

  function $(id) {
    return document.getElementById(id);
  }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function svg(tag, attrs, children) {
    var node = document.createElementNS(SVG, tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function setAttrs(node, attrs) {
    if (!attrs) return;
    Object.keys(attrs).forEach(function (key) {
      var value = attrs[key];
      if (value === null || value === undefined || value === false) return;
      if (key === "text") node.textContent = String(value);
      else node.setAttribute(key, String(value));
    });
  }

  function append(node, children) {
    if (children === null || children === undefined) return;
    if (!Array.isArray(children)) children = [children];
    children.forEach(function (child) {
      if (child === null || child === undefined) return;
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
  }

  function setText(id, text) {
    $(id).textContent = text === null || text === undefined ? "–" : String(text);
  }

  // A file name as it is, in <code>: a control character (a newline in a name) is shown as
  // \n or \x1b, marked, instead of the space or nothing that HTML would make of it.
  var CONTROL = /[\u0000-\u001f\u007f-\u009f]/;
  var CONTROL_NAMES = { 9: "\\t", 10: "\\n", 13: "\\r" };

  function controlShown(char) {
    var code = char.charCodeAt(0);
    return CONTROL_NAMES[code] || "\\x" + (code < 16 ? "0" : "") + code.toString(16);
  }

  function nameCode(name) {
    var node = el("code", null);
    var text = String(name);
    var plain = "";
    for (var i = 0; i < text.length; i++) {
      if (!CONTROL.test(text[i])) {
        plain += text[i];
        continue;
      }
      if (plain) node.appendChild(document.createTextNode(plain));
      plain = "";
      var shown = controlShown(text[i]);
      node.appendChild(el("span", { class: "ctl", title: "a control character in the name", text: shown }));
    }
    if (plain) node.appendChild(document.createTextNode(plain));
    return node;
  }

  // The same as plain text (in a message).
  function nameText(name) {
    return String(name).replace(new RegExp(CONTROL.source, "g"), controlShown);
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  // Numbers as people read them (the same units as oeleo.units on the console).
  function humanBytes(n) {
    if (n === null || n === undefined) return "–";
    var units = ["B", "KiB", "MiB", "GiB", "TiB"];
    var i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) {
      n /= 1024;
      i += 1;
    }
    return i === 0 ? n.toFixed(0) + " B" : n.toFixed(1) + " " + units[i];
  }

  function humanSeconds(s) {
    if (s === null || s === undefined) return "–";
    if (s < 1) return Math.round(s * 1000) + " ms";
    if (s < 60) return s.toFixed(1) + " s";
    var whole = Math.round(s);
    if (whole < 3600) return Math.floor(whole / 60) + " min " + pad2(whole % 60) + " s";
    return Math.floor(whole / 3600) + " h " + pad2(Math.floor((whole % 3600) / 60)) + " min";
  }

  function pad2(n) {
    return n < 10 ? "0" + n : String(n);
  }

  function counted(n, noun, plural) {
    return n + " " + (n === 1 ? noun : plural || noun + "s");
  }

  function parseTime(iso) {
    if (!iso) return null;
    var t = new Date(iso);
    return isNaN(t.getTime()) ? null : t;
  }

  // "2026-12-01 13:40:12" as the server wrote it (its local time), without the fraction.
  function shortTime(iso) {
    if (!iso) return "–";
    var s = String(iso).replace("T", " ");
    var cut = s.search(/[.+Z]|-\d\d:\d\d$/);
    return cut > 10 ? s.slice(0, cut) : s;
  }

  // "3 min ago" / "in 4 min", measured against the time the server generated the document
  // (the browser's clock may be another machine's).
  function relative(iso) {
    var t = parseTime(iso);
    var now = state.status ? parseTime(state.status.generated) : null;
    if (!t || !now) return "";
    var d = (t.getTime() - now.getTime()) / 1000;
    var a = Math.abs(d);
    var text;
    if (a < 5) return "just now";
    if (a < 45) text = Math.round(a) + " s";
    else if (a < 5400) text = Math.round(a / 60) + " min";
    else if (a < 129600) text = Math.round(a / 3600) + " h";
    else text = Math.round(a / 86400) + " days";
    return d < 0 ? text + " ago" : "in " + text;
  }

  function when(iso) {
    if (!iso) return "–";
    var rel = relative(iso);
    return shortTime(iso) + (rel ? " (" + rel + ")" : "");
  }

  function codeName(code) {
    return { 0: "to copy", 1: "copy if changed", 2: "locked" }[code] || String(code);
  }

  // ------------------------------------------------------------------ HTTP

  function getJSON(url) {
    return fetch(url, { credentials: "same-origin", cache: "no-store" }).then(function (response) {
      if (response.status === 401) {
        // Off loopback the pages need the session too: back to the login form.
        window.location.assign("./");
        throw new Error("not logged in");
      }
      if (!response.ok) {
        return response.text().then(function (text) {
          throw new Error(url.split("?")[0] + " answered " + response.status + errorOf(text));
        });
      }
      return response.json();
    });
  }

  function errorOf(text) {
    try {
      var body = JSON.parse(text);
      if (body && body.error) return ": " + body.error;
    } catch (e) {
      /* not JSON */
    }
    return "";
  }

  function postJSON(url, body) {
    var headers = { "Content-Type": "application/json" };
    if (state.csrf) headers["X-CSRF-Token"] = state.csrf;
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      cache: "no-store",
      headers: headers,
      body: JSON.stringify(body),
    }).then(function (response) {
      return response.text().then(function (text) {
        var data = null;
        try {
          data = JSON.parse(text);
        } catch (e) {
          data = null;
        }
        return { status: response.status, ok: response.ok, data: data || {} };
      });
    });
  }

  // ------------------------------------------------------------------ messages

  function showMessage(text, kind) {
    var node = $("message");
    node.textContent = text;
    node.className = "message " + (kind || "info");
    node.hidden = false;
  }

  function showBanner(text) {
    var node = $("banner");
    if (text) {
      node.textContent = text;
      node.hidden = false;
    } else {
      node.hidden = true;
      node.textContent = "";
    }
  }

  // ------------------------------------------------------------------ session and actions

  function setLoggedIn(yes, csrf) {
    state.loggedIn = yes;
    state.csrf = yes ? csrf : null;
    var label = $("login-state");
    label.textContent = yes ? "logged in: actions allowed" : "not logged in";
    label.className = "login-state " + (yes ? "yes" : "no");
    // logged in: only the state and Log out; else the token field and Log in
    $("token").hidden = yes;
    document.querySelector("label[for=token]").hidden = yes;
    $("login-button").hidden = yes;
    $("logout-button").hidden = !yes;
    document.body.classList.toggle("logged-in", yes);
  }

  function login(token) {
    return postJSON("api/login", { token: token }).then(function (reply) {
      if (reply.ok && reply.data.csrf) {
        try {
          sessionStorage.setItem(TOKEN_KEY, token);
        } catch (e) {
          /* storage off: the session cookie still works */
        }
        setLoggedIn(true, reply.data.csrf);
        return true;
      }
      forgetToken();
      setLoggedIn(false, null);
      showMessage("Log in refused (" + reply.status + "): " + (reply.data.error || "the token was not accepted"), "error");
      return false;
    });
  }

  function forgetToken() {
    try {
      sessionStorage.removeItem(TOKEN_KEY);
    } catch (e) {
      /* nothing kept */
    }
  }

  function logout() {
    return postJSON("api/logout", {}).then(function (reply) {
      forgetToken();
      setLoggedIn(false, null);
      showMessage(reply.ok ? "Logged out: the actions need the token again." : "Log out: " + (reply.data.error || reply.status), reply.ok ? "ok" : "warn");
    });
  }

  function loadSession() {
    return getJSON("api/session").then(function (session) {
      if (session.logged_in && session.csrf) {
        setLoggedIn(true, session.csrf);
        return;
      }
      setLoggedIn(false, null);
      var kept = keptToken();
      if (kept) return login(kept);
    });
  }

  var ACTION_WORDS = {
    retry: { verb: "Retry", done: "will be copied at the next pass" },
    lock: { verb: "Lock", done: "locked (code 2): never copied" },
    unlock: { verb: "Unlock", done: "unlocked (code 1): copied when it changes" },
  };

  function keptToken() {
    try {
      return sessionStorage.getItem(TOKEN_KEY);
    } catch (e) {
      return null;
    }
  }

  function act(action, files, again) {
    var words = ACTION_WORDS[action];
    return postJSON("api/" + action, { files: files }).then(function (reply) {
      if (reply.status === 401 && !again && keptToken()) {
        // The session is gone (oeleo serve restarted): log in again with the kept token, once.
        return login(keptToken()).then(function (ok) {
          if (ok) return act(action, files, true);
        });
      }
      if (reply.status === 401 || reply.status === 403) {
        var why = reply.data.error || "not allowed";
        showMessage(words.verb + " refused (" + reply.status + "): " + why + ". Log in with the token first.", "error");
        if (reply.status === 401) setLoggedIn(false, null);
        return;
      }
      if (!reply.ok) {
        showMessage(words.verb + " failed (" + reply.status + "): " + (reply.data.error || "no reason given"), "error");
        return;
      }
      var parts = [];
      var done = reply.data.done || [];
      var unknown = reply.data.unknown || [];
      var refused = reply.data.refused || [];
      if (done.length) parts.push(done.map(nameText).join(", ") + ": " + words.done + ".");
      if (refused.length) parts.push(refused.map(nameText).join(", ") + ": refused (a locked file is not retried; unlock it first).");
      if (unknown.length) parts.push(unknown.map(nameText).join(", ") + ": not in the books.");
      showMessage(words.verb + ": " + (parts.join(" ") || "nothing to do."), done.length ? "ok" : "warn");
      return refresh();
    });
  }

  function actionButton(action, file, label) {
    var button = el("button", {
      type: "button",
      class: "act " + action,
      "data-action": action,
      "data-file": file,
      "data-testid": action + "-button",
      "aria-label": label + " " + nameText(file),
      text: label,
    });
    button.addEventListener("click", function () {
      button.disabled = true;
      act(action, [file])
        .catch(function (error) {
          showMessage(label + " failed: " + error.message, "error");
        })
        .then(function () {
          button.disabled = false;
        });
    });
    return button;
  }

  // ------------------------------------------------------------------ rendering

  function renderHeartbeat(hb) {
    var badge = $("heartbeat-state");
    if (!hb) {
      badge.textContent = "no scheduler";
      badge.className = "badge unknown";
      setText("hb-scheduler", "none writes a heartbeat here (runs by hand or by a system task?)");
      setText("hb-last", null);
      setText("hb-result", null);
      setText("hb-next", null);
      return;
    }
    badge.textContent = hb.state;
    badge.className = "badge " + hb.state;
    setText("hb-scheduler", hb.scheduler + (hb.pid ? " (pid " + hb.pid + ")" : ""));
    if (hb.pass_started && !hb.pass_finished) setText("hb-last", "running since " + when(hb.pass_started));
    else setText("hb-last", hb.pass_finished ? when(hb.pass_finished) : "none yet");
    setText("hb-result", hb.result || "–");
    setText("hb-next", hb.state === "stopped" ? "none: stopped" : hb.next_pass ? when(hb.next_pass) : "–");
  }

  function renderLastPass(pass) {
    var badge = $("lp-status");
    if (!pass) {
      badge.textContent = "none yet";
      badge.className = "badge unknown";
      ["lp-started", "lp-duration", "lp-copied", "lp-failed"].forEach(function (id) {
        setText(id, null);
      });
      return;
    }
    badge.textContent = pass.status;
    badge.className = "badge " + statusClass(pass.status);
    setText("lp-started", when(pass.started));
    setText("lp-duration", pass.duration_s === null ? "running" : humanSeconds(pass.duration_s));
    setText("lp-copied", counted(pass.files_copied, "file") + ", " + humanBytes(pass.bytes_copied));
    setText("lp-failed", counted(pass.files_failed, "file"));
  }

  function statusClass(status) {
    if (status === "ok") return "ok";
    if (status === "running") return "running";
    if (status === "failed") return "failing";
    return "warn";
  }

  function renderCounts(counts) {
    ["should_be_copied", "copy_if_changed", "do_not_copy", "failed", "total"].forEach(function (key) {
      setText("count-" + key, counts ? counts[key] : null);
    });
    var failed = counts ? counts.failed : 0;
    document.querySelector(".count.failed").classList.toggle("some", failed > 0);
  }

  function renderFailures(failures, counts) {
    var body = $("failures-table").querySelector("tbody");
    clear(body);
    failures.forEach(function (f) {
      body.appendChild(
        el("tr", { "data-testid": "failure-row", "data-file": f.file }, [
          el("td", { class: "file", "data-testid": "failure-file" }, nameCode(f.file)),
          el("td", { class: "reason", "data-testid": "failure-reason", text: f.error }),
          el("td", { class: "when", text: when(f.when) }),
          el("td", { class: "actions" }, [actionButton("retry", f.file, "Retry"), actionButton("lock", f.file, "Lock")]),
        ])
      );
    });
    var total = counts ? counts.failed : failures.length;
    $("failures-count").textContent = total ? String(total) : "";
    $("failures-none").hidden = failures.length > 0;
    $("failures-table").hidden = failures.length === 0;
    $("failures").classList.toggle("has-failures", failures.length > 0);
  }

  var SHORT_PASSES = 10;

  function renderPasses(passes) {
    var body = $("passes-table").querySelector("tbody");
    clear(body);
    var shown = state.allPasses ? passes : passes.slice(0, SHORT_PASSES);
    shown.forEach(function (p) {
      body.appendChild(
        el("tr", { "data-testid": "pass-row", "data-pass": p.id }, [
          el("td", { class: "t", text: when(p.started) }),
          el("td", { class: "t", text: p.duration_s === null ? "running" : humanSeconds(p.duration_s) }),
          el("td", null, el("span", { class: "badge small " + statusClass(p.status), text: p.status })),
          el("td", { class: "num", text: p.files_copied }),
          el("td", { class: "num" + (p.files_failed ? " bad" : ""), text: p.files_failed }),
          el("td", { class: "num", text: humanBytes(p.bytes_copied) }),
          el("td", { class: "msg", text: p.message || "" }),
        ])
      );
    });
    $("passes-none").hidden = passes.length > 0;
    $("passes-table").hidden = passes.length === 0;
    var more = $("passes-more");
    more.hidden = passes.length <= SHORT_PASSES;
    more.textContent = state.allPasses ? "Show the last " + SHORT_PASSES + " only" : "Show all " + passes.length + " passes";
    more.setAttribute("aria-expanded", state.allPasses ? "true" : "false");
  }

  function renderOrigins(origins, selected) {
    var section = $("origins");
    if (!origins || origins.length < 2) {
      section.hidden = true;
      return;
    }
    section.hidden = false;
    var body = $("origins-table").querySelector("tbody");
    clear(body);
    origins.forEach(function (o) {
      var lp = o.last_pass;
      var hb = o.heartbeat;
      var c = o.counts || {};
      var here = o.origin === selected;
      body.appendChild(
        el("tr", { "data-testid": "origin-row", "data-origin": o.origin, class: here ? "here" : null }, [
          el("td", null, el("span", { class: "badge small " + o.health, "data-testid": "origin-health", text: o.health })),
          el("td", { class: "host" }, [o.host, here ? el("span", { class: "here-tag", text: "this view" }) : null]),
          el("td", null, nameCode(o.folder)),
          el("td", { class: "t", text: lp ? when(lp.finished || lp.started) + " · " + lp.status : "never" }),
          el("td", { class: "num", text: lp ? lp.files_copied : "–" }),
          el("td", { class: "num" + (c.failed ? " bad" : ""), text: c.failed === undefined ? "–" : c.failed }),
          el("td", { class: "t", text: hb ? hb.state + " · " + hb.scheduler : "none" }),
          el("td", { class: "num", text: c.total === undefined ? "–" : c.total }),
        ])
      );
    });
  }

  // Round a maximum up to 1, 2, 3, 4, 5, 6 or 8 times a power of ten, so the axis reads well
  // and the tallest bar fills more than half of the plot.
  function niceMax(value) {
    if (!(value > 0)) return 1;
    var power = Math.pow(10, Math.floor(Math.log10(value)));
    var steps = [1, 2, 3, 4, 5, 6, 8, 10];
    for (var i = 0; i < steps.length; i++) {
      if (value <= steps[i] * power) return steps[i] * power;
    }
    return 10 * power;
  }

  // The same for bytes, in the unit the axis shows (KiB, MiB, GiB...).
  function niceBytes(value) {
    var unit = 1;
    while (value >= 1024 * unit && unit < Math.pow(1024, 4)) unit *= 1024;
    return niceMax(value / unit) * unit;
  }

  function niceSeconds(value) {
    if (value < 60) return niceMax(value);
    if (value < 3600) return niceMax(value / 60) * 60;
    return niceMax(value / 3600) * 3600;
  }

  function tickBytes(v) {
    return v === 0 ? "0" : humanBytes(v).replace(".0 ", " ");
  }

  function tickSeconds(v) {
    if (v === 0) return "0 s";
    if (v < 1) return +(v * 1000).toPrecision(3) + " ms";
    if (v < 60) return (v < 10 ? v.toFixed(1).replace(".0", "") : Math.round(v)) + " s";
    return humanSeconds(v).replace(" 00 s", "").replace(" 00 min", "");
  }

  var PLOT = { w: 600, h: 220, left: 64, right: 12, top: 14, bottom: 34 };

  function axes(node, maxValue, label) {
    var innerH = PLOT.h - PLOT.top - PLOT.bottom;
    [0, 0.5, 1].forEach(function (f) {
      var y = PLOT.top + innerH * (1 - f);
      node.appendChild(svg("line", { x1: PLOT.left, x2: PLOT.w - PLOT.right, y1: y, y2: y, class: f ? "grid" : "axis" }));
      node.appendChild(svg("text", { x: PLOT.left - 6, y: y + 4, class: "tick y", text: label(maxValue * f) }));
    });
  }

  function renderDaily(daily) {
    var area = $("daily-plot");
    clear(area);
    var maxBytes = 0;
    var files = 0;
    var bytes = 0;
    daily.forEach(function (d) {
      maxBytes = Math.max(maxBytes, d.bytes);
      files += d.files;
      bytes += d.bytes;
    });
    var top = niceBytes(maxBytes);
    var node = svg("svg", {
      viewBox: "0 0 " + PLOT.w + " " + PLOT.h,
      role: "img",
      "aria-label": "Bytes copied per day, last " + daily.length + " days",
      "data-testid": "daily-svg",
      preserveAspectRatio: "xMidYMid meet",
    });
    axes(node, top, tickBytes);
    var innerW = PLOT.w - PLOT.left - PLOT.right;
    var innerH = PLOT.h - PLOT.top - PLOT.bottom;
    var slot = innerW / Math.max(daily.length, 1);
    var barW = Math.max(slot * 0.72, 1);
    daily.forEach(function (d, i) {
      var h = top ? (d.bytes / top) * innerH : 0;
      if (d.bytes > 0) h = Math.max(h, 2); // a day with a small file still shows
      var x = PLOT.left + i * slot + (slot - barW) / 2;
      var bar = svg("rect", {
        x: x.toFixed(1),
        y: (PLOT.top + innerH - h).toFixed(1),
        width: barW.toFixed(1),
        height: h.toFixed(1),
        class: "bar" + (i === daily.length - 1 ? " today" : ""),
        "data-testid": "daily-bar",
        "data-day": d.day,
        "data-bytes": d.bytes,
        "data-files": d.files,
      });
      bar.appendChild(svg("title", { text: d.day + ": " + counted(d.files, "file") + ", " + humanBytes(d.bytes) }));
      node.appendChild(bar);
      if (i === 0 || i === daily.length - 1 || i === Math.floor(daily.length / 2)) {
        node.appendChild(
          svg("text", {
            x: (x + barW / 2).toFixed(1),
            y: PLOT.h - PLOT.bottom + 18,
            class: "tick x",
            text: i === daily.length - 1 ? "today" : d.day.slice(5),
          })
        );
      }
    });
    area.appendChild(node);
    $("daily-sum").textContent = counted(files, "file") + ", " + humanBytes(bytes) + " in " + daily.length + " days";
  }

  function renderDurations(passes) {
    var area = $("duration-plot");
    clear(area);
    var done = passes
      .filter(function (p) {
        return p.duration_s !== null && p.duration_s !== undefined;
      })
      .slice()
      .reverse(); // oldest on the left
    if (!done.length) {
      area.appendChild(el("p", { class: "none", text: "No finished pass yet." }));
      $("durations-sum").textContent = "";
      return;
    }
    var longest = 0;
    done.forEach(function (p) {
      longest = Math.max(longest, p.duration_s);
    });
    var top = niceSeconds(longest);
    var node = svg("svg", {
      viewBox: "0 0 " + PLOT.w + " " + PLOT.h,
      role: "img",
      "aria-label": "Duration of the last " + counted(done.length, "pass", "passes"),
      "data-testid": "durations-svg",
      preserveAspectRatio: "xMidYMid meet",
    });
    axes(node, top, tickSeconds);
    var innerW = PLOT.w - PLOT.left - PLOT.right;
    var innerH = PLOT.h - PLOT.top - PLOT.bottom;
    var step = done.length > 1 ? innerW / (done.length - 1) : 0;
    var points = done.map(function (p, i) {
      var x = done.length > 1 ? PLOT.left + i * step : PLOT.left + innerW / 2;
      var y = PLOT.top + innerH - (p.duration_s / top) * innerH;
      return { x: x, y: y, pass: p };
    });
    if (points.length > 1) {
      node.appendChild(
        svg("polyline", {
          class: "line",
          points: points
            .map(function (pt) {
              return pt.x.toFixed(1) + "," + pt.y.toFixed(1);
            })
            .join(" "),
        })
      );
    }
    points.forEach(function (pt) {
      var p = pt.pass;
      var dot = svg("circle", {
        cx: pt.x.toFixed(1),
        cy: pt.y.toFixed(1),
        r: 4,
        class: "point " + statusClass(p.status),
        "data-testid": "duration-point",
        "data-pass": p.id,
        "data-seconds": p.duration_s,
      });
      dot.appendChild(
        svg("title", {
          text: shortTime(p.started) + ": " + humanSeconds(p.duration_s) + ", " + p.status + ", " + counted(p.files_copied, "file") + " copied",
        })
      );
      node.appendChild(dot);
    });
    var first = done[0];
    var last = done[done.length - 1];
    var oneDay = shortTime(first.started).slice(0, 10) === shortTime(last.started).slice(0, 10);
    var label = function (iso) {
      return oneDay ? shortTime(iso).slice(11, 19) : shortTime(iso).slice(5, 16);
    };
    node.appendChild(svg("text", { x: PLOT.left, y: PLOT.h - PLOT.bottom + 18, class: "tick x start", text: label(first.started) }));
    if (done.length > 1) {
      node.appendChild(
        svg("text", { x: PLOT.w - PLOT.right, y: PLOT.h - PLOT.bottom + 18, class: "tick x end", text: label(last.started) })
      );
    }
    area.appendChild(node);
    var failed = done.filter(function (p) {
      return p.status === "failed";
    }).length;
    $("durations-sum").textContent =
      counted(done.length, "pass", "passes") + ", longest " + humanSeconds(longest) + (failed ? " · red: with failed files" : "");
  }

  function render(status) {
    state.status = status;
    var origin = status.origin || "no origin on this PC";
    setText("origin", origin);
    document.title = "oeleo monitor · " + origin;
    renderHeartbeat(status.heartbeat);
    renderLastPass(status.last_pass);
    renderCounts(status.counts);
    renderFailures(status.failures || [], status.counts);
    renderPasses(status.passes || []);
    renderOrigins(status.origins || [], status.origin);
    renderDaily(status.daily || []);
    renderDurations(status.passes || []);
    setText("version", "oeleo " + status.oeleo);
    setText("books", "books: " + status.books);
    setText("updated", "updated " + shortTime(status.generated) + ", every " + REFRESH_MS / 1000 + " s");
  }

  // ------------------------------------------------------------------ search

  function renderFiles(result) {
    var table = $("files-table");
    var body = table.querySelector("tbody");
    clear(body);
    result.files.forEach(function (f) {
      var buttons = [];
      if (f.error && f.code !== 2) buttons.push(actionButton("retry", f.file, "Retry"));
      buttons.push(f.code === 2 ? actionButton("unlock", f.file, "Unlock") : actionButton("lock", f.file, "Lock"));
      body.appendChild(
        el("tr", { "data-testid": "file-row", "data-file": f.file, "data-code": f.code }, [
          el("td", { class: "file" }, nameCode(f.file)),
          el("td", { "data-testid": "file-code" }, el("span", { class: "code c" + f.code, text: f.code + " · " + codeName(f.code) })),
          el("td", { class: "num", text: humanBytes(f.size) }),
          el("td", { class: "t", text: f.copied ? shortTime(f.copied) : "not yet" }),
          el("td", { class: "reason", text: f.error || "" }),
          el("td", { class: "actions" }, buttons),
        ])
      );
    });
    table.hidden = result.files.length === 0;
    state.search.page = result.page;
    state.search.pages = result.pages;
    var what = state.search.q ? ' whose name contains "' + state.search.q + '"' : "";
    $("search-summary").textContent = result.total
      ? counted(result.total, "file") + what + (result.pages > 1 ? ", " + result.per_page + " a page" : "")
      : "No file" + what + ".";
    $("page-info").textContent = result.pages > 1 ? "page " + result.page + " of " + result.pages : "";
    $("pager").hidden = result.pages <= 1;
    $("page-prev").disabled = result.page <= 1;
    $("page-next").disabled = result.page >= result.pages;
  }

  function searching() {
    return state.search.q !== "" || state.search.code !== "";
  }

  var asked = 0; // the newest search: an older answer that comes late is not drawn
  var typing = null; // the search that typing will start

  function search() {
    var s = state.search;
    var mine = ++asked;
    if (!searching()) {
      clear($("files-table").querySelector("tbody"));
      $("files-table").hidden = true;
      $("pager").hidden = true;
      $("page-info").textContent = "";
      $("page-prev").disabled = true;
      $("page-next").disabled = true;
      $("search-summary").textContent = "Type part of a file's name, or pick which files to list.";
      return Promise.resolve();
    }
    var query = "?q=" + encodeURIComponent(s.q) + "&page=" + s.page + (s.code !== "" ? "&code=" + encodeURIComponent(s.code) : "");
    return getJSON("api/files" + query).then(function (result) {
      if (mine === asked) renderFiles(result);
    });
  }

  function newSearch(page) {
    clearTimeout(typing);
    state.search.q = $("search-q").value.trim();
    state.search.code = $("search-code").value;
    state.search.page = page || 1;
    return search().catch(function (error) {
      showMessage("Search failed: " + error.message, "error");
    });
  }

  // ------------------------------------------------------------------ refresh

  function refresh() {
    var status = getJSON("api/status").then(function (s) {
      render(s);
      showBanner(null);
    });
    var files = search();
    return Promise.all([status, files]).catch(function (error) {
      var network = error instanceof TypeError; // fetch itself failed: no answer at all
      var what = network ? "oeleo serve does not answer (" + error.message + ")" : error.message;
      var shown = state.status ? " The page shows what it said at " + shortTime(state.status.generated) + "." : "";
      showBanner("Cannot read the monitor: " + what + "." + shown + " Trying again every " + REFRESH_MS / 1000 + " s.");
    });
  }

  function start() {
    $("login-form").addEventListener("submit", function (event) {
      event.preventDefault();
      var field = $("token");
      var token = field.value.trim();
      if (!token) {
        showMessage("Enter the token (OELEO_MONITOR_TOKEN, or the one oeleo serve printed at start).", "warn");
        field.focus();
        return;
      }
      login(token).then(function (ok) {
        if (ok) {
          field.value = "";
          showMessage("Logged in: Retry, Lock and Unlock are allowed.", "ok");
        }
      });
    });
    $("passes-more").addEventListener("click", function () {
      state.allPasses = !state.allPasses;
      if (state.status) renderPasses(state.status.passes || []);
    });
    $("logout-button").addEventListener("click", function () {
      logout().catch(function (error) {
        showMessage("Log out failed: " + error.message, "error");
      });
    });
    $("search-form").addEventListener("submit", function (event) {
      event.preventDefault();
      newSearch(1);
    });
    $("search-q").addEventListener("input", function () {
      clearTimeout(typing);
      typing = setTimeout(function () {
        newSearch(1);
      }, 300);
    });
    $("search-code").addEventListener("change", function () {
      newSearch(1);
    });
    $("page-prev").addEventListener("click", function () {
      newSearch(Math.max(1, state.search.page - 1));
    });
    $("page-next").addEventListener("click", function () {
      newSearch(Math.min(state.search.pages, state.search.page + 1));
    });
    Array.prototype.forEach.call(document.querySelectorAll(".count[data-code]"), function (button) {
      button.addEventListener("click", function () {
        $("search-code").value = button.getAttribute("data-code");
        $("search-q").value = "";
        newSearch(1).then(function () {
          $("search").scrollIntoView({ behavior: "smooth", block: "start" });
        });
      });
    });
    loadSession()
      .catch(function (error) {
        showBanner("Cannot read the session: " + error.message);
      })
      .then(refresh)
      .then(function () {
        document.body.setAttribute("data-loaded", "yes");
      });
    state.timer = setInterval(refresh, REFRESH_MS);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
