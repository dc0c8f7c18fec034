// The layout probe of the rendering check (pure_utils/book/browser.py): run in the page after it
// loaded, it writes what a reader would see wrong with the layout into a hidden element
// <div id="pure-layout-probe" data-problems="[...]" data-theme="..." data-width="...">, and,
// run in a frame, posts it to the host page, which writes the same element (browser.py).
// Then, where browser.py injected axe-core and its marker <div id="pure-axe" data-state="waiting"
// data-options="{...}">, it runs axe.run with those options and writes the violations into the
// marker (data-violations: [{id, impact, nodes, target}], data-state: "done"; "error" with
// data-error; "missing" when axe did not load), and posts the page again. A marker left
// "running" in the page's DOM means axe's promise did not resolve before the DOM was dumped.
(function () {
  var TALL_ROW = 200;  // px, a quarter of a phone screen: a row taller than this holds a paragraph
  function describe(el) {
    var s = el.tagName.toLowerCase();
    if (el.id) { s += "#" + el.id; }
    else if (typeof el.className === "string" && el.className.trim()) {
      s += "." + el.className.trim().split(/\s+/).slice(0, 2).join(".");
    }
    var t = (el.textContent || "").trim().replace(/\s+/g, " ").slice(0, 40);
    return s + (t ? ' "' + t + '"' : "");
  }
  function visible(el, r) {
    if (r.width < 2 || r.height < 2) { return false; }
    var cs = getComputedStyle(el);
    return cs.visibility !== "hidden" && cs.position !== "fixed";
  }
  // the nearest ancestor below the article column that does not let its content overflow
  function box(el, art) {
    for (var a = el.parentElement; a && a !== art; a = a.parentElement) {
      var ox = getComputedStyle(a).overflowX;
      if (ox !== "visible") { return [a, ox]; }
    }
    return null;
  }
  function run() {
    var out = [];
    var art = document.querySelector("article.bd-article") || document.querySelector("main article") ||
      document.querySelector("main") || document.body;
    var col = art.getBoundingClientRect();
    var seen = [];
    var all = art.querySelectorAll("*");
    for (var i = 0; i < all.length && out.length < 20; i++) {
      var el = all[i];
      if (seen.some(function (s) { return s.contains(el); })) { continue; }
      // inside a drawing (an SVG clips its own parts) or MathJax's text for screen readers
      if (el.parentElement && el.parentElement.closest("svg, mjx-assistive-mml")) { continue; }
      if (el.tagName.toLowerCase() === "mjx-assistive-mml") { continue; }
      var r = el.getBoundingClientRect();
      if (!visible(el, r) || (r.right <= col.right + 1 && r.left >= col.left - 1)) { continue; }
      var b = box(el, art);
      if (b === null) {
        out.push("wider than the article column without its own scroll box (" + Math.round(r.width) +
                 " px in a " + Math.round(col.width) + " px column): " + describe(el));
        seen.push(el);
      } else if (b[1] === "hidden" || b[1] === "clip") {
        out.push("clipped by overflow: " + b[1] + " of " + describe(b[0]) + ": " + describe(el));
        seen.push(b[0]);
      }
    }
    var cells = art.querySelectorAll("td, th");
    for (var j = 0; j < cells.length; j++) {
      var c = cells[j], cs = getComputedStyle(c);
      var hides = /hidden|clip/.test(cs.overflowX + " " + cs.overflowY);
      if (hides && (c.scrollWidth > c.clientWidth + 1 || c.scrollHeight > c.clientHeight + 1)) {
        out.push("a table cell clipped by overflow: hidden: " + describe(c));
        break;
      }
    }
    var tables = art.querySelectorAll("table");
    for (var k = 0; k < tables.length; k++) {  // a long text in a cell makes a row a screen tall
      var rows = tables[k].querySelectorAll("tr");
      for (var m = 0; m < rows.length; m++) {
        var h = rows[m].getBoundingClientRect().height;
        if (h > TALL_ROW) {
          out.push("a table row " + Math.round(h) + " px tall (a long text in a cell; put it in a note): " +
                   describe(rows[m]));
          break;
        }
      }
    }
    var doc = document.documentElement;
    if (doc.scrollWidth > window.innerWidth + 1) {
      out.push("the page scrolls sideways (" + doc.scrollWidth + " px wide in a " + window.innerWidth +
               " px window)");
    }
    var probe = document.createElement("div");
    probe.id = "pure-layout-probe";
    probe.hidden = true;
    probe.setAttribute("data-problems", JSON.stringify(out));
    probe.setAttribute("data-theme", doc.getAttribute("data-theme") || "");
    probe.setAttribute("data-width", String(window.innerWidth));
    document.body.appendChild(probe);
    return probe;
  }
  function post(probe) {
    if (window.parent !== window) {  // in the host page's frame of the view's width
      window.parent.postMessage({pureLayoutProbe: {problems: JSON.parse(probe.getAttribute("data-problems")),
                                                   theme: probe.getAttribute("data-theme"),
                                                   width: window.innerWidth,
                                                   dom: document.documentElement.outerHTML}}, "*");
    }
  }
  // the first node's CSS selector (a node in a shadow root or a frame: its selectors joined)
  function target(node) {
    return (node.target || []).map(function (t) { return Array.isArray(t) ? t.join(" >>> ") : t; }).join(" | ");
  }
  function runAxe(mark, done) {
    if (typeof axe === "undefined") { mark.setAttribute("data-state", "missing"); done(); return; }
    mark.setAttribute("data-state", "running");
    axe.run(document, JSON.parse(mark.getAttribute("data-options") || "{}")).then(function (result) {
      mark.setAttribute("data-violations", JSON.stringify(result.violations.map(function (v) {
        return {id: v.id, impact: v.impact, nodes: v.nodes.length, target: v.nodes.length ? target(v.nodes[0]) : ""};
      })));
      mark.setAttribute("data-state", "done");
      done();
    }, function (err) {
      mark.setAttribute("data-error", String((err && err.message) || err));
      mark.setAttribute("data-state", "error");
      done();
    });
  }
  window.addEventListener("load", function () {
    setTimeout(function () {
      var script = document.getElementById("pure-axe-script");
      if (script) { script.remove(); }  // axe stays loaded; its 600 kB of text leave the posted DOM
      var probe = run(), mark = document.getElementById("pure-axe");
      post(probe);
      if (mark) { runAxe(mark, function () { post(probe); }); }
    }, 2000);
  });
})();
