/* busi-web case report: the Print button (the page's print stylesheet makes it one A4 page). */
(function () {
  "use strict";
  const button = document.getElementById("print-report");
  if (button) button.addEventListener("click", () => window.print());
})();
