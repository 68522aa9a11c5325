// SAE Explorer's own script: draws the Plotly figures that pages embed as JSON, on load and after every HTMX swap.
(function () {
  // Error answers of pages are HTML meant to be seen (a form's message, a 503 page): swap them in like any other
  if (window.htmx) {
    htmx.config.responseHandling = [
      { code: "204", swap: false },
      { code: "[23]..", swap: true },
      { code: "[45]..", swap: true, error: true },
    ];
  }
  function draw(root) {
    root.querySelectorAll(".plot > script[type='application/json']").forEach(function (block) {
      var box = block.parentElement;
      if (box.dataset.drawn) return;
      var fig = JSON.parse(block.textContent);
      var dark = window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
      fig.layout.font = Object.assign({}, fig.layout.font || {}, { color: dark ? "#e6e6e6" : "#222" });
      box.dataset.drawn = "1";
      if (window.Plotly) {
        Plotly.newPlot(box, fig.data, fig.layout, { responsive: true, displaylogo: false }).then(function () {
          // a point whose customdata is a path of this site (a graph's feature node) opens it
          box.on("plotly_click", function (ev) {
            var url = ev.points && ev.points[0] && ev.points[0].customdata;
            if (typeof url === "string" && url.charAt(0) === "/" && url.charAt(1) !== "/") window.location.href = url;
          });
        });
      }
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    draw(document);
    if (window.htmx) htmx.onLoad(draw);
  });
})();
