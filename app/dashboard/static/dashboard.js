/* Journeys dashboard: draws the charts described in the page's JSON data block
   (<script type="application/json" id="charts">, never executed) with the vendored Chart.js,
   submits pickers on change, and reloads wall-screen pages every few minutes.
   Labels are drawn on canvas as text, never inserted as HTML. */
(function () {
  "use strict";

  var INK = "#334155";
  var GRID = "#eef2f7";

  function ready(fn) {
    if (document.readyState !== "loading") fn();
    else document.addEventListener("DOMContentLoaded", fn);
  }

  function number(value) {
    return typeof value === "number" ? value.toLocaleString("en-US", { maximumFractionDigits: 1 }) : value;
  }

  function barConfig(spec) {
    var horizontal = !!spec.horizontal;
    var stacked = !!spec.stacked;
    var valueAxis = horizontal ? "x" : "y";
    var scales = {
      x: { stacked: stacked, grid: { display: horizontal, color: GRID }, ticks: { color: INK } },
      y: { stacked: stacked, grid: { display: !horizontal, color: GRID }, ticks: { color: INK }, beginAtZero: true }
    };
    var title = spec[valueAxis + "Title"];
    if (title) scales[valueAxis].title = { display: true, text: title, color: "#64748b" };
    scales[valueAxis].ticks.precision = 0;
    return {
      type: "bar",
      data: {
        labels: spec.labels,
        datasets: spec.datasets.map(function (d) {
          return {
            label: d.label,
            data: d.data,
            backgroundColor: d.colours || d.colour,
            borderRadius: stacked ? 0 : 5,
            maxBarThickness: 56
          };
        })
      },
      options: {
        indexAxis: horizontal ? "y" : "x",
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        interaction: { mode: stacked ? "index" : "nearest", intersect: false },
        plugins: {
          legend: {
            display: spec.datasets.length > 1,
            position: "bottom",
            labels: { usePointStyle: true, pointStyle: "rectRounded", color: INK, boxWidth: 10 }
          },
          tooltip: {
            callbacks: {
              label: function (ctx) {
                return " " + ctx.dataset.label + ": " + number(ctx.parsed[valueAxis]);
              }
            }
          }
        },
        scales: scales
      }
    };
  }

  function doughnutConfig(spec) {
    var d = spec.datasets[0] || { data: [], colours: [] };
    return {
      type: "doughnut",
      data: {
        labels: spec.labels,
        datasets: [{ label: d.label, data: d.data, backgroundColor: d.colours, borderColor: "#fff", borderWidth: 2 }]
      },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        cutout: "62%",
        plugins: {
          legend: { position: "right", labels: { usePointStyle: true, color: INK, boxWidth: 10 } }
        }
      }
    };
  }

  function drawCharts() {
    var block = document.getElementById("charts");
    if (!block || typeof window.Chart === "undefined") return;
    var specs = JSON.parse(block.textContent || "{}");
    window.Chart.defaults.font.family = window.getComputedStyle(document.body).fontFamily;
    window.Chart.defaults.color = INK;
    var canvases = document.querySelectorAll("canvas[data-chart]");
    Array.prototype.forEach.call(canvases, function (canvas) {
      var spec = specs[canvas.getAttribute("data-chart")];
      if (!spec) return;
      var config = spec.kind === "doughnut" ? doughnutConfig(spec) : barConfig(spec);
      canvas.chart = new window.Chart(canvas, config);
      canvas.setAttribute("data-drawn", "true");
    });
  }

  function autoSubmit() {
    var selects = document.querySelectorAll("select[data-autosubmit]");
    Array.prototype.forEach.call(selects, function (select) {
      select.addEventListener("change", function () {
        var form = select.form;
        if (select.name === "breakdown") {
          // A new breakdown has other values: start from its first group.
          var value = form.querySelector("input[name=value]");
          if (value) value.parentNode.removeChild(value);
        }
        form.submit();
      });
    });
  }

  function autoRefresh() {
    var seconds = parseInt(document.body.getAttribute("data-refresh") || "0", 10);
    if (seconds > 0) {
      window.setTimeout(function () { window.location.reload(); }, seconds * 1000);
    }
  }

  ready(function () {
    drawCharts();
    autoSubmit();
    autoRefresh();
  });
})();
