// The prompt explorer's keyboard and form behaviour (loaded by explorer.html only): arrow keys move along the
// tokens (one tab stop for the strip), Enter opens one; a feature row is picked by click, Enter or Space while its id
// stays a plain link; long prompts are posted (saved, a short permalink) instead of put in the URL.
(function () {
  if (window.saexExplorer) return;
  window.saexExplorer = true;
  var refocus = null; // what to focus once the page the keyboard asked for is in: a token's position or "row"

  function tokens() { return Array.prototype.slice.call(document.querySelectorAll(".tokens .tok")); }

  // one tab stop for the strip: the selected token, else the first
  function rove() {
    var all = tokens();
    if (!all.length) return;
    var current = document.querySelector(".tokens .tok.sel") || all[0];
    all.forEach(function (t) { t.tabIndex = t === current ? 0 : -1; });
  }

  function moveTo(tok) {
    if (!tok) return;
    tokens().forEach(function (t) { t.tabIndex = t === tok ? 0 : -1; });
    tok.focus();
  }

  // the token on the line above or below, nearest horizontally
  function vertical(from, dir) {
    var r = from.getBoundingClientRect(), best = null, bestScore = Infinity;
    tokens().forEach(function (t) {
      var q = t.getBoundingClientRect();
      var dy = dir > 0 ? q.top - r.top : r.top - q.top;
      if (dy < r.height * 0.5) return;
      var score = dy * 1000 + Math.abs(q.left - r.left);
      if (score < bestScore) { bestScore = score; best = t; }
    });
    return best;
  }

  document.addEventListener("keydown", function (e) {
    var t = e.target;
    if (t.classList && t.classList.contains("tok") && t.closest(".tokens")) {
      var all = tokens(), i = all.indexOf(t), next = null;
      if (e.key === "ArrowRight") next = all[i + 1];
      else if (e.key === "ArrowLeft") next = all[i - 1];
      else if (e.key === "ArrowDown") next = vertical(t, 1);
      else if (e.key === "ArrowUp") next = vertical(t, -1);
      else if (e.key === "Home") next = all[0];
      else if (e.key === "End") next = all[all.length - 1];
      else if (e.key === "Enter") { refocus = t.dataset.pos; return; }
      else return;
      e.preventDefault();
      moveTo(next);
      return;
    }
    if (t.matches && t.matches("tr.pick") && (e.key === "Enter" || e.key === " ")) {
      e.preventDefault();
      refocus = "row";
      t.click();
    }
  });

  // a click on a row's link opens the link and does not also pick the row
  document.addEventListener("click", function (e) {
    if (e.target.closest && e.target.closest("tr.pick a")) e.stopPropagation();
  }, true);

  function longPrompt(form) {
    var text = form.querySelector("textarea[name=text]");
    if (!text) return false;
    var limit = parseInt(form.dataset.long || "1500", 10);
    return text.value.length > limit || encodeURIComponent(text.value).length > 6000;
  }

  // a prompt too long for a URL is posted to /p: saved, answered with its short permalink
  document.addEventListener("htmx:configRequest", function (e) {
    var form = e.detail.elt;
    if (!form || form.id !== "prompt" || !longPrompt(form)) return;
    e.detail.verb = "post";
    e.detail.path = "/p";
    e.detail.useUrlParams = false;
    e.detail.headers["Content-Type"] = "application/x-www-form-urlencoded"; // htmx sets it for posts only
  });

  document.addEventListener("input", function (e) {
    var form = e.target.form;
    if (!form || form.id !== "prompt") return;
    var note = form.querySelector(".long-note");
    if (note) note.hidden = !longPrompt(form);
  });

  function settle() {
    rove();
    if (refocus === "row") {
      var row = document.querySelector("tr.pick.on");
      if (row) row.focus();
    } else if (refocus !== null) {
      moveTo(document.querySelector('.tokens .tok[data-pos="' + refocus + '"]'));
    }
    refocus = null;
  }
  document.addEventListener("htmx:afterSettle", settle);
  document.addEventListener("DOMContentLoaded", rove);
  if (document.readyState !== "loading") rove();
})();
