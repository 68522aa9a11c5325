// The steering form's strength control (loaded by steer.html only): a slider in multiples of a feature's max
// activation that writes the value field, and the value field that moves the slider; the value field is what is sent.
(function () {
  if (window.saexSteer) return;
  window.saexSteer = true;
  function parts(el) {
    var cell = el.closest("td");
    return cell && { value: cell.querySelector("input[name=value]"), range: cell.querySelector(".strength input[type=range]"),
                     out: cell.querySelector(".strength output") };
  }
  document.addEventListener("input", function (e) {
    var p = parts(e.target);
    if (!p || !p.value || !p.range) return;
    var max = parseFloat(p.value.dataset.maxAct);
    if (!(max > 0)) return;
    if (e.target === p.range) {
      var m = parseFloat(p.range.value);
      p.value.value = (Math.round(m * max * 1000) / 1000).toString();
      p.out.textContent = "× " + m.toFixed(2);
    } else if (e.target === p.value) {
      var v = parseFloat(p.value.value);
      if (isNaN(v)) return;
      p.range.value = (v / max).toString();
      p.out.textContent = "× " + (v / max).toFixed(2);
    }
  });
})();
