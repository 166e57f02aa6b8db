/* Sortable tables: click a header to sort its column ascending, click again for descending.
   Cells sort by their data-sort attribute when present (raw numbers), else by their text.
   Missing values stay last either way; each tbody sorts on its own, so unranked rows stay below. */
(function () {
  "use strict";

  function keyOf(row, column) {
    var cell = row.cells[column];
    if (!cell) { return ""; }
    var key = cell.getAttribute("data-sort");
    return (key === null ? cell.textContent : key).trim();
  }

  function compareKeys(a, b) {
    var x = Number(a), y = Number(b);
    if (a !== "" && b !== "" && !isNaN(x) && !isNaN(y)) { return x - y; }
    return a.localeCompare(b, undefined, { numeric: true, sensitivity: "base" });
  }

  function sortBody(body, column, descending) {
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (r1, r2) {
      var a = keyOf(r1, column), b = keyOf(r2, column);
      if ((a === "") !== (b === "")) { return a === "" ? 1 : -1; }
      var order = compareKeys(a, b) * (descending ? -1 : 1);
      return order || (Number(r1.getAttribute("data-order")) || 0) - (Number(r2.getAttribute("data-order")) || 0);
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }

  function makeSortable(table) {
    var headers = table.tHead ? table.tHead.rows[0].cells : [];
    Array.prototype.forEach.call(headers, function (header, column) {
      var button = document.createElement("button");
      button.type = "button";
      while (header.firstChild) { button.appendChild(header.firstChild); }
      header.appendChild(button);
      button.addEventListener("click", function () {
        var descending = header.getAttribute("aria-sort") === "ascending";
        Array.prototype.forEach.call(headers, function (h) { h.removeAttribute("aria-sort"); });
        header.setAttribute("aria-sort", descending ? "descending" : "ascending");
        Array.prototype.forEach.call(table.tBodies, function (body) { sortBody(body, column, descending); });
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), makeSortable);
  });
})();
