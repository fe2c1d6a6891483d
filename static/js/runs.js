/* busi-web Runs page: filters (status / dataset / backbone reload the list; the name box filters shown rows) and
 * the selection of two or more runs to compare. */
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const filter = $("runs-filter");
  if (!filter) return;
  const table = $("runs-table");
  const compareButton = $("compare-selected");
  const hint = $("compare-hint");

  filter.querySelectorAll("select").forEach((s) => s.addEventListener("change", () => filter.submit()));

  $("filter-text").addEventListener("input", (e) => {
    const text = e.target.value.trim().toLowerCase();
    if (!table) return;
    table.querySelectorAll("tbody tr").forEach((tr) => {
      tr.hidden = !!text && !tr.dataset.name.includes(text) && tr.dataset.runId !== text;
    });
  });

  function selected() {
    return Array.from(document.querySelectorAll(".select-run:checked")).map((c) => c.value);
  }

  function update() {
    const ids = selected();
    compareButton.disabled = ids.length < 2;
    hint.textContent = ids.length < 2
      ? "Tick two or more runs to compare their curves and metrics."
      : `${ids.length} runs selected: ${ids.join(", ")}`;
  }

  document.addEventListener("change", (e) => {
    if (e.target.classList.contains("select-run")) update();
  });
  compareButton.addEventListener("click", () => {
    const ids = selected();
    if (ids.length >= 2) window.location.href = `/runs/compare?ids=${ids.join(",")}`;
  });
  update();
})();
