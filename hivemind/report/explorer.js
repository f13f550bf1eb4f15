/* hivemind explorer: the query list from explorer/index.js, one query's file (explorer/q/N.js)
   loaded when it is opened. Data files call hivemindData({...}); no other request is made.
   The location hash holds the view: q=<query id>, pair=<row>-<row>, view=responses|map|pairs,
   dep, cond, cat, search, sort, desc, kind+lo+hi (a similarity bin of dep), dep2 (with dep). */
(function () {
  "use strict";
  var COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
    "#7f7f7f", "#bcbd22", "#393b79", "#ad494a", "#637939", "#7b4173", "#843c39", "#3182bd"];
  var index = null, shards = {}, waiting = {}, current = null, params = {};
  var $ = function (id) { return document.getElementById(id); };

  function esc(s) {
    return String(s == null ? "" : s).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }
  function fmt(v, d) { return v == null ? "-" : Number(v).toFixed(d == null ? 3 : d); }
  function color(d) { return COLORS[d % COLORS.length]; }

  window.hivemindData = function (data) {
    if (data.queries) { index = data; start(); return; }
    shards[data.n] = data;
    var cb = waiting[data.n]; delete waiting[data.n];
    if (cb) cb(data);
  };
  function load(src, onerror) {
    var s = document.createElement("script");
    s.src = src; s.onerror = onerror || null;
    document.head.appendChild(s);
  }
  function shard(n, cb) {
    if (shards[n]) { cb(shards[n]); return; }
    waiting[n] = cb;
    load("explorer/q/" + n + ".js", function () {
      $("detail").innerHTML = '<p class="warnbox">Could not load explorer/q/' + n + ".js.</p>";
    });
  }

  // --- location hash ------------------------------------------------------------------------
  function readHash() {
    var out = {};
    location.hash.replace(/^#/, "").split("&").forEach(function (kv) {
      if (!kv) return;
      var i = kv.indexOf("=");
      out[decodeURIComponent(i < 0 ? kv : kv.slice(0, i))] = i < 0 ? "" : decodeURIComponent(kv.slice(i + 1));
    });
    return out;
  }
  function hashOf(p) {
    return "#" + Object.keys(p).filter(function (k) { return p[k] !== "" && p[k] != null; })
      .map(function (k) { return encodeURIComponent(k) + "=" + encodeURIComponent(p[k]); }).join("&");
  }
  function go(changes) {
    var p = Object.assign({}, params, changes);
    location.hash = hashOf(p);
  }

  // --- the list ------------------------------------------------------------------------------
  function condition() { return params.cond || index.baseline || index.conditions[0]; }
  function figure(q, i) { var f = q.figures[condition()]; return f ? f[i] : null; }
  var COLUMNS = [
    { key: "text", label: "query", cls: "t", get: function (q) { return q.text.toLowerCase(); } },
    { key: "category", label: "category", cls: "t", get: function (q) { return q.category; } },
    { key: "intra", label: "intra", get: function (q) { return figure(q, 0); } },
    { key: "inter", label: "inter", get: function (q) { return figure(q, 1); } },
    { key: "gap", label: "gap", get: function (q) { return figure(q, 2); } },
    { key: "n_dup", label: "near-dup pairs", get: function (q) { return q.n_dup; } },
    { key: "n_responses", label: "responses", get: function (q) { return q.n_responses; } }
  ];
  function binValue(q) {
    var per = (q.per_deployment[condition()] || {})[params.dep];
    return per ? per[params.kind === "inter" ? 1 : 0] : null;
  }
  function rows() {
    var term = (params.search || "").toLowerCase(), cond = params.cond;
    var lo = params.lo != null && params.lo !== "" ? Number(params.lo) : null;
    var hi = params.hi != null && params.hi !== "" ? Number(params.hi) : null;
    var out = index.queries.filter(function (q) {
      if (params.dep && q.deployments.indexOf(params.dep) < 0) return false;
      if (params.dep2 && q.deployments.indexOf(params.dep2) < 0) return false;
      if (cond && q.conditions.indexOf(cond) < 0) return false;
      if (params.cat && q.category !== params.cat) return false;
      if (lo != null && params.dep) {
        var v = binValue(q);
        if (v == null || (lo > 0 && v < lo) || (hi < 1 && v >= hi)) return false;
      }
      if (term && (q.text + " " + q.id + " " + q.category).toLowerCase().indexOf(term) < 0) return false;
      return true;
    });
    var col = COLUMNS.filter(function (c) { return c.key === params.sort; })[0];
    if (col) {
      var sign = params.desc === "0" ? 1 : -1;
      out.sort(function (a, b) {
        var x = col.get(a), y = col.get(b);
        if (x == null) return 1; if (y == null) return -1;
        return (x < y ? -1 : x > y ? 1 : 0) * sign;
      });
    }
    return out;
  }
  function renderList() {
    var list = rows(), head = COLUMNS.map(function (c) {
      var mark = params.sort === c.key ? (params.desc === "0" ? " \u25b2" : " \u25bc") : "";
      return '<th class="' + (c.cls || "") + '" data-sort="' + c.key + '">' + c.label + mark + "</th>";
    }).join("");
    var body = list.map(function (q) {
      return '<tr data-query="' + esc(q.id) + '"' + (params.q === q.id ? ' class="sel"' : "") + '><td class="t">' +
        '<a href="' + hashOf(Object.assign({}, params, { q: q.id, pair: "", view: "" })) + '">' +
        esc(q.text.length > 160 ? q.text.slice(0, 157) + "..." : q.text) + '</a> <span class="muted">' +
        esc(q.id) + "</span></td><td class=\"t\">" + esc(q.category) + "</td><td>" + fmt(figure(q, 0)) +
        "</td><td>" + fmt(figure(q, 1)) + "</td><td>" + fmt(figure(q, 2)) + "</td><td>" + q.n_dup + "</td><td>" +
        q.n_responses + "</td></tr>";
    }).join("");
    $("list").innerHTML = "<table><thead><tr>" + head + "</tr></thead><tbody>" + body + "</tbody></table>";
    $("count").textContent = list.length + " of " + index.queries.length + " queries";
    if (window.performance && performance.mark && !performance.getEntriesByName("hivemind-list").length)
      performance.mark("hivemind-list");
    var chip = [];
    if (params.lo != null && params.lo !== "" && params.dep)
      chip.push(params.dep + " " + (params.kind || "intra") + " similarity in [" + params.lo + ", " + params.hi + ")");
    if (params.dep2) chip.push("answered by " + params.dep + " and " + params.dep2);
    $("chip").style.display = chip.length ? "inline-block" : "none";
    $("chip").innerHTML = chip.length ? esc(chip.join("; ")) + ' <a href="#" id="unchip">\u00d7 clear</a>' : "";
    if (chip.length) $("unchip").onclick = function (e) { e.preventDefault(); go({ lo: "", hi: "", kind: "", dep2: "" }); };
  }

  // --- one query -----------------------------------------------------------------------------
  function byRow(data) {
    var m = {};
    data.responses.forEach(function (r) { m[r.r] = r; });
    return m;
  }
  function label(r) { return index.deployments[r.d] + " #" + r.s; }
  function respHtml(r, cls, rowmap) {
    var nn = r.nn != null ? rowmap[r.nn] : null;
    var link = nn ? ' &middot; nearest other deployment: <a class="nn" href="' +
      hashOf(Object.assign({}, params, { pair: r.r + "-" + nn.r, view: "responses" })) + '">' + esc(label(nn)) +
      "</a> (cosine " + fmt(r.nc) + ")" : "";
    return '<div class="resp" id="r' + r.r + '" data-response="' + r.r + '" data-deployment="' +
      esc(index.deployments[r.d]) + '" data-condition="' + esc(index.conditions[r.c]) + '" data-class="' +
      esc(cls) + '"><div class="tx">' + esc(r.t) + '</div><div class="meta">#' + r.s + link + "</div></div>";
  }
  function responsesHtml(data, rowmap) {
    var grouping = params.classes === "imported" && index.imported_classes ? "imported" : "hivemind";
    var conds = index.conditions.filter(function (c, i) {
      return data.responses.some(function (r) { return r.c === i && (!params.cond || params.cond === c); });
    });
    var out = "";
    if (index.imported_classes) {
      out += '<p>Group by <select id="grouping"><option value="hivemind">hivemind classes (cosine \u2265 ' +
        index.threshold + ')</option><option value="imported"' + (grouping === "imported" ? " selected" : "") +
        ">imported classes</option></select></p>";
    }
    conds.forEach(function (c) {
      var ci = index.conditions.indexOf(c);
      var deps = index.deployments.map(function (d, i) { return i; }).filter(function (i) {
        return data.responses.some(function (r) { return r.c === ci && r.d === i; });
      });
      out += "<h3>Condition " + esc(c) + '</h3><div class="cols" style="grid-template-columns:repeat(' +
        deps.length + ',minmax(220px,1fr))">';
      deps.forEach(function (d) {
        var mine = data.responses.filter(function (r) { return r.c === ci && r.d === d; });
        var groups = {}, order = [];
        mine.forEach(function (r) {
          var k = grouping === "imported" ? (r.x != null ? r.x : "none") : r.k;
          if (!(k in groups)) { groups[k] = []; order.push(k); }
          groups[k].push(r);
        });
        order.sort(function (a, b) { return groups[b].length - groups[a].length; });
        out += '<div class="col"><h4 style="background:' + color(d) + '">' + esc(index.deployments[d]) + " &middot; " +
          mine.length + " responses, " + order.length + " classes</h4>";
        order.forEach(function (k) {
          out += '<div class="class"><div class="h">class ' + esc(k) + " &middot; " + groups[k].length +
            " response" + (groups[k].length > 1 ? "s" : "") + "</div>" +
            groups[k].map(function (r) { return respHtml(r, k, rowmap); }).join("") + "</div>";
        });
        out += "</div>";
      });
      out += "</div>";
    });
    return out;
  }
  function words(text) {
    var out = [], re = /[\p{L}\p{N}_']+/gu, m;
    while ((m = re.exec(text))) out.push({ w: m[0].toLowerCase(), a: m.index, b: m.index + m[0].length });
    return out;
  }
  function highlight(text, other, n) {
    var a = words(text), b = words(other), grams = {}, marked = new Array(a.length), i, j;
    for (i = 0; i + n <= b.length; i++) grams[b.slice(i, i + n).map(function (t) { return t.w; }).join(" ")] = 1;
    for (i = 0; i + n <= a.length; i++) {
      if (grams[a.slice(i, i + n).map(function (t) { return t.w; }).join(" ")]) for (j = i; j < i + n; j++) marked[j] = 1;
    }
    var out = "", pos = 0, shared = 0;
    for (i = 0; i < a.length; i++) {
      if (!marked[i]) continue;
      j = i; while (j + 1 < a.length && marked[j + 1]) j++;
      out += esc(text.slice(pos, a[i].a)) + "<mark>" + esc(text.slice(a[i].a, a[j].b)) + "</mark>";
      shared += j - i + 1; pos = a[j].b; i = j;
    }
    return { html: out + esc(text.slice(pos)), shared: shared, total: a.length };
  }
  function pairHtml(data, rowmap) {
    if (!params.pair) return "";
    var ids = params.pair.split("-"), a = rowmap[ids[0]], b = rowmap[ids[1]];
    if (!a || !b) return '<p class="warnbox">Pair ' + esc(params.pair) + " is not in this query.</p>";
    var n = Number(params.ngram || 5), ha = highlight(a.t, b.t, n), hb = highlight(b.t, a.t, n);
    var x = data.responses.indexOf(a), y = data.responses.indexOf(b);
    var cos = null;
    data.pairs.forEach(function (p) { if ((p[0] === x && p[1] === y) || (p[0] === y && p[1] === x)) cos = p[2]; });
    if (cos == null && a.nn === b.r) cos = a.nc;
    if (cos == null && b.nn === a.r) cos = b.nc;
    var opts = [2, 3, 4, 5, 8].map(function (k) {
      return "<option" + (k === n ? " selected" : "") + ">" + k + "</option>";
    }).join("");
    return '<div class="pair" id="pair"><div class="h"><b>Pair</b>' + (cos != null ? " &middot; cosine <b>" + fmt(cos) + "</b>" : "") +
      " &middot; verbatim-shared <select id=\"ngram\">" + opts + "</select>-grams highlighted (" + ha.shared + " of " +
      ha.total + " words, " + hb.shared + " of " + hb.total + ') &middot; <a href="' +
      hashOf(Object.assign({}, params, { pair: "" })) + '">close</a></div>' +
      '<div><b style="color:' + color(a.d) + '">' + esc(label(a)) + "</b> (" + esc(index.conditions[a.c]) +
      ")<pre>" + ha.html + '</pre></div><div><b style="color:' + color(b.d) + '">' + esc(label(b)) + "</b> (" +
      esc(index.conditions[b.c]) + ")<pre>" + hb.html + "</pre></div></div>";
  }
  function pairsHtml(data) {
    if (!data.pairs.length) return '<p class="muted">No pair of responses from different deployments reached cosine ' +
      index.threshold + " on this query.</p>";
    return '<p class="muted">' + data.n_pairs + " pairs at cosine \u2265 " + index.threshold +
      (data.n_pairs > data.pairs.length ? "; the " + data.pairs.length + " most similar" : "") +
      ':</p><table><thead><tr><th>cosine</th><th class="t">a</th><th class="t">b</th></tr></thead><tbody>' +
      data.pairs.map(function (p) {
        var a = data.responses[p[0]], b = data.responses[p[1]];
        return '<tr class="dup"><td><a href="' + hashOf(Object.assign({}, params, { pair: a.r + "-" + b.r, view: "responses" })) +
          '">' + fmt(p[2]) + '</a></td><td class="t"><b>' + esc(label(a)) + "</b> " + esc(a.t.slice(0, 140)) +
          '</td><td class="t"><b>' + esc(label(b)) + "</b> " + esc(b.t.slice(0, 140)) + "</td></tr>";
      }).join("") + "</tbody></table>";
  }
  function mapHtml(data) {
    if (!data.mapped) return '<p class="warnbox">No map: the embeddings of this study are not in the store\'s cache.</p>';
    var W = 620, H = 520, pad = 24, pts = data.responses.filter(function (r) {
      return !params.cond || index.conditions[r.c] === params.cond;
    });
    var marks = ["circle", "rect", "diamond"];
    var svg = '<svg id="mapsvg" width="' + W + '" height="' + H + '" viewBox="0 0 ' + W + " " + H + '" role="img" aria-label="2-D map of the responses">';
    pts.forEach(function (r) {
      var x = pad + (r.xy[0] + 1) / 2 * (W - 2 * pad), y = pad + (1 - (r.xy[1] + 1) / 2) * (H - 2 * pad);
      var shape = marks[r.c % marks.length], attrs = ' data-response="' + r.r + '" data-deployment="' +
        esc(index.deployments[r.d]) + '" data-condition="' + esc(index.conditions[r.c]) + '" data-class="' + r.k +
        '" fill="' + color(r.d) + '" fill-opacity="0.75" stroke="#fff" class="pt"';
      if (shape === "circle") svg += '<circle cx="' + x.toFixed(1) + '" cy="' + y.toFixed(1) + '" r="6"' + attrs + "/>";
      else if (shape === "rect") svg += '<rect x="' + (x - 5).toFixed(1) + '" y="' + (y - 5).toFixed(1) + '" width="10" height="10"' + attrs + "/>";
      else svg += '<path d="M' + x.toFixed(1) + " " + (y - 7).toFixed(1) + "l7 7l-7 7l-7 -7z\"" + attrs + "/>";
    });
    svg += "</svg>";
    var legend = '<div class="legend">' + index.deployments.map(function (d, i) {
      return data.responses.some(function (r) { return r.d === i; }) ?
        '<span><i class="sw" style="background:' + color(i) + '"></i>' + esc(d) + "</span>" : "";
    }).join("") + (index.conditions.length > 1 ? " &middot; shape: condition (" + index.conditions.map(function (c, i) {
      return esc(c) + " " + ["\u25cf", "\u25a0", "\u25c6"][i % 3];
    }).join(", ") + ")" : "") + "</div>";
    return '<p class="muted">Principal-component projection of this query\'s embeddings (' + esc(index.embedder || "") +
      "); hover a point for its text, click it to read it among the responses.</p>" + legend + '<div id="map">' + svg + "</div>";
  }
  function renderQuery(data) {
    current = data;
    var rowmap = byRow(data), view = params.view || "responses", q = index.queries[data.n];
    var tabs = [["responses", "Responses"], ["map", "Map"], ["pairs", "Near-duplicate pairs (" + data.n_pairs + ")"]];
    var figs = q.figures[condition()] || [];
    var html = '<div class="muted">' + esc(data.id) + " &middot; " + esc(data.category) + " &middot; condition " +
      esc(condition()) + ": intra " + fmt(figs[0]) + ", inter " + fmt(figs[1]) + ", gap " + fmt(figs[2]) + "</div>" +
      '<div class="prompt">' + esc(data.text) + "</div>" + pairHtml(data, rowmap) +
      '<div class="tabs">' + tabs.map(function (t) {
        return '<button data-view="' + t[0] + '"' + (t[0] === view ? ' class="on"' : "") + ">" + t[1] + "</button>";
      }).join("") + "</div>";
    html += view === "map" ? mapHtml(data) : view === "pairs" ? pairsHtml(data) : responsesHtml(data, rowmap);
    $("detail").innerHTML = html;
    $("detail").scrollTop = 0;
    var g = $("grouping");
    if (g) g.onchange = function () { go({ classes: g.value === "imported" ? "imported" : "" }); };
    var ng = $("ngram");
    if (ng) ng.onchange = function () { go({ ngram: ng.value }); };
    Array.prototype.forEach.call(document.querySelectorAll(".tabs button"), function (b) {
      b.onclick = function () { go({ view: b.getAttribute("data-view") }); };
    });
    if (params.pair) {
      params.pair.split("-").forEach(function (r) { var el = $("r" + r); if (el) el.classList.add("hl"); });
    }
    if (view === "map") wireMap(rowmap);
    if (window.performance && performance.mark) performance.mark("hivemind-query");
  }
  function wireMap(rowmap) {
    var tip = $("tip");
    Array.prototype.forEach.call(document.querySelectorAll("#mapsvg .pt"), function (el) {
      var r = rowmap[el.getAttribute("data-response")];
      el.onmouseenter = function () {
        tip.textContent = label(r) + " (" + index.conditions[r.c] + ", class " + r.k + ")\n" +
          (r.t.length > 500 ? r.t.slice(0, 497) + "..." : r.t);
        tip.style.display = "block";
      };
      el.onmousemove = function (e) {
        tip.style.left = Math.min(e.clientX + 14, window.innerWidth - 430) + "px"; tip.style.top = (e.clientY + 14) + "px";
      };
      el.onmouseleave = function () { tip.style.display = "none"; };
      el.onclick = function () {
        tip.style.display = "none";
        go({ view: "responses", pair: r.nn != null ? r.r + "-" + r.nn : "" });
      };
    });
  }

  // --- wiring --------------------------------------------------------------------------------
  function route() {
    params = readHash();
    if (!index) return;
    if ($("search").value !== (params.search || "")) $("search").value = params.search || "";
    $("fdep").value = params.dep || ""; $("fcond").value = params.cond || ""; $("fcat").value = params.cat || "";
    renderList();
    var q = null;
    index.queries.forEach(function (x) { if (x.id === params.q) q = x; });
    if (params.q && !q) { $("detail").innerHTML = '<p class="warnbox">No query ' + esc(params.q) + " in this study.</p>"; return; }
    if (q) shard(q.n, function (data) { if (params.q === data.id) renderQuery(data); });
  }
  function options(select, values) {
    values.forEach(function (v) { var o = document.createElement("option"); o.value = v; o.textContent = v; select.appendChild(o); });
  }
  function start() {
    var cats = {}, n = 0;
    index.queries.forEach(function (q) { cats[q.category] = 1; n += q.n_responses; });
    $("sub").textContent = index.queries.length + " queries, " + n + " responses, " + index.deployments.length +
      " deployments (" + index.deployments.join(", ") + ")" +
      ((index.references || []).length ? "; reference arm: " + index.references.join(", ") + " (not a model under test)" : "") +
      ", conditions: " + index.conditions.join(", ") + ".";
    options($("fdep"), index.deployments); options($("fcond"), index.conditions); options($("fcat"), Object.keys(cats).sort());
    var timer = null;
    $("search").addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(function () { go({ search: $("search").value }); }, 150);
    });
    $("fdep").onchange = function () { go({ dep: $("fdep").value }); };
    $("fcond").onchange = function () { go({ cond: $("fcond").value }); };
    $("fcat").onchange = function () { go({ cat: $("fcat").value }); };
    $("list").addEventListener("click", function (e) {
      var th = e.target.closest("th[data-sort]");
      if (th) {
        var key = th.getAttribute("data-sort");
        go({ sort: key, desc: params.sort === key && params.desc !== "0" ? "0" : "1" });
        return;
      }
      var tr = e.target.closest("tr[data-query]");
      if (tr && !e.target.closest("a")) go({ q: tr.getAttribute("data-query"), pair: "", view: "" });
    });
    window.addEventListener("hashchange", route);
    route();
  }
  load("explorer/index.js", function () {
    $("sub").textContent = "Could not load explorer/index.js: keep the explorer/ folder beside this page.";
  });
})();
