// evalkit report site: draws the plotly figures embedded as JSON and makes tables sortable.
(function () {
  "use strict";
  document.querySelectorAll("script.fig").forEach(function (s) {
    var spec = JSON.parse(s.textContent);
    var div = document.getElementById(s.dataset.target);
    Plotly.newPlot(div, spec.data, spec.layout, {responsive: true, displaylogo: false}).then(function () {
      div.dataset.ready = "1";
    });
  });

  function key(td) { return td.getAttribute("data-v"); }

  function sortBy(th) {
    var table = th.closest("table"), tbody = table.tBodies[0];
    var idx = Array.prototype.indexOf.call(th.parentNode.children, th);
    var asc = th.getAttribute("aria-sort") !== "ascending";
    var rows = Array.prototype.slice.call(tbody.rows);
    var numeric = rows.every(function (r) { var v = key(r.cells[idx]); return v === "" || !isNaN(Number(v)); });
    rows.sort(function (a, b) {
      var x = key(a.cells[idx]), y = key(b.cells[idx]);
      if (x === "" || y === "") { return (x === "") - (y === ""); }  // missing values always last
      var c = numeric ? Number(x) - Number(y) : x.localeCompare(y, undefined, {numeric: true});
      return asc ? c : -c;
    });
    rows.forEach(function (r) { tbody.appendChild(r); });
    th.parentNode.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
  }

  document.querySelectorAll("table.sortable th").forEach(function (th) {
    th.addEventListener("click", function () { sortBy(th); });
    th.addEventListener("keydown", function (e) { if (e.key === "Enter") { sortBy(th); } });
  });
})();
