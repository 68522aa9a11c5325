// SAE Explorer's own script: draws the Plotly figures that pages embed as JSON (loading Plotly only when a page has
// one), in the reader's light or dark theme, on load and after every HTMX swap; copy-link buttons.
(function () {
  // Error answers of pages are HTML meant to be seen (a form's message, a 503 page): swap them in like any other
  if (window.htmx) {
    htmx.config.responseHandling = [
      { code: "204", swap: false },
      { code: "[23]..", swap: true },
      { code: "[45]..", swap: true, error: true },
    ];
  }

  var darkQuery = window.matchMedia ? window.matchMedia("(prefers-color-scheme: dark)") : null;
  function dark() { return !!(darkQuery && darkQuery.matches); }

  // Colours of chart chrome per theme: no bright grids or white zero cells on a dark page
  var THEMES = {
    light: { font: "#222", grid: "#e3e8ee", zero: "#9aa5b1", line: "#c5ced8", cell: "#f3f5f8", hover: "#fff" },
    dark: { font: "#e6e6e6", grid: "#2e363e", zero: "#6b7785", line: "#3a444e", cell: "#1c2126", hover: "#1c2126" },
  };
  var WHITE = /^(#fff(fff)?|white|rgba?\(\s*255\s*,\s*255\s*,\s*255\s*(,\s*1(\.0*)?\s*)?\))$/i;

  function themed(fig) {
    var t = THEMES[dark() ? "dark" : "light"];
    var layout = Object.assign({}, fig.layout || {});
    layout.font = Object.assign({}, layout.font || {}, { color: t.font });
    layout.hoverlabel = Object.assign({ bgcolor: t.hover, font: { color: t.font } }, layout.hoverlabel || {});
    layout.legend = Object.assign({}, layout.legend || {}, { font: { color: t.font } });
    Object.keys(layout).concat(["xaxis", "yaxis"]).forEach(function (key) {
      if (!/^[xy]axis\d*$/.test(key)) return;
      layout[key] = Object.assign({}, layout[key] || {}, { gridcolor: t.grid, zerolinecolor: t.zero, linecolor: t.line });
    });
    var data = (fig.data || []).map(function (trace) {
      var copy = Object.assign({}, trace);
      if (copy.colorscale === "Blues") copy.colorscale = [[0, t.cell], [1, "#2f6fde"]];
      if (Array.isArray(copy.colorscale)) {
        copy.colorscale = copy.colorscale.map(function (stop) {
          return WHITE.test(String(stop[1])) ? [stop[0], t.cell] : stop;
        });
      }
      if (copy.colorbar || copy.type === "heatmap") {
        copy.colorbar = Object.assign({}, copy.colorbar || {}, { tickfont: { color: t.font }, outlinecolor: t.line });
      }
      return copy;
    });
    return { data: data, layout: layout };
  }

  var plotly = null; // a promise of window.Plotly, made once the first chart needs it
  function loadPlotly() {
    if (window.Plotly) return Promise.resolve(window.Plotly);
    if (!plotly) {
      plotly = new Promise(function (resolve, reject) {
        var s = document.createElement("script");
        s.src = "/static/vendor/plotly.min.js";
        s.onload = function () { resolve(window.Plotly); };
        s.onerror = function () { plotly = null; reject(new Error("plotly did not load")); };
        document.head.appendChild(s);
      });
    }
    return plotly;
  }

  function drawOne(box) {
    var block = box.querySelector(":scope > script[type='application/json']");
    if (!block) return;
    var fig = themed(JSON.parse(block.textContent));
    box.dataset.drawn = "1";
    Plotly.newPlot(box, fig.data, fig.layout, { responsive: true, displaylogo: false }).then(function () {
      if (box.dataset.clicks) return;
      box.dataset.clicks = "1";
      // a point whose customdata is a path of this site (a graph's feature node) opens it
      box.on("plotly_click", function (ev) {
        var url = ev.points && ev.points[0] && ev.points[0].customdata;
        if (typeof url === "string" && url.charAt(0) === "/" && url.charAt(1) !== "/") window.location.href = url;
      });
    });
  }

  function draw(root) {
    var boxes = [];
    (root.querySelectorAll ? root : document).querySelectorAll(".plot").forEach(function (box) {
      if (!box.dataset.drawn && box.querySelector(":scope > script[type='application/json']")) boxes.push(box);
    });
    if (root.classList && root.classList.contains("plot") && !root.dataset.drawn) boxes.push(root);
    if (!boxes.length) return;
    boxes.forEach(function (box) { box.dataset.drawn = "queued"; }); // htmx.onLoad also hands us the whole body
    loadPlotly().then(function () { boxes.forEach(drawOne); }, function () {});
  }

  function redrawAll() { // the reader switched theme: every drawn chart again, in the new colours
    document.querySelectorAll(".plot[data-drawn]").forEach(function (box) {
      if (window.Plotly) { Plotly.purge(box); drawOne(box); }
    });
  }

  // --- copy link / embed code --------------------------------------------------------------------------------------
  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(text);
    return new Promise(function (resolve, reject) { // plain-HTTP sites: the old way, through a hidden field
      var field = document.createElement("textarea");
      field.value = text;
      field.setAttribute("readonly", "");
      field.style.position = "fixed";
      field.style.opacity = "0";
      document.body.appendChild(field);
      field.select();
      var ok = false;
      try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
      document.body.removeChild(field);
      if (ok) { resolve(); } else { reject(new Error("copy refused")); }
    });
  }

  document.addEventListener("click", function (ev) {
    var button = ev.target.closest && ev.target.closest("[data-copy], [data-copy-embed]");
    if (!button) return;
    var path = button.getAttribute("data-copy") || button.getAttribute("data-copy-embed");
    var url = window.location.origin + path;
    var text = button.hasAttribute("data-copy-embed")
      ? '<iframe src="' + url + '" width="100%" height="520" style="border:0" loading="lazy" title="SAE Explorer feature"></iframe>'
      : url;
    var status = button.parentElement.querySelector(".copied");
    copyText(text).then(function () {
      if (status) status.textContent = button.hasAttribute("data-copy-embed") ? "Embed code copied" : "Link copied: " + url;
    }, function () {
      if (status) status.textContent = text; // copying refused: show it to copy by hand
    });
  });

  document.addEventListener("DOMContentLoaded", function () {
    draw(document);
    if (window.htmx) htmx.onLoad(draw);
    if (darkQuery && darkQuery.addEventListener) darkQuery.addEventListener("change", redrawAll);
  });
})();
