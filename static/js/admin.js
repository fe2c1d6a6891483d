/* busi-web Users page: add an account, change a role, disable or enable it, reset its password or require a new
 * one at the next login. A one-time password is shown once, on the page, after the action; everything else
 * reloads the page from the server. */
(function () {
  "use strict";
  const busi = window.busi;
  const root = document.getElementById("users-page");
  if (!root) return;
  const errorBox = document.getElementById("users-error");
  const oneTime = document.getElementById("one-time");

  function showPassword(name, password) {
    oneTime.replaceChildren(`One-time password of ${name}: `, busi.el("code", { id: "one-time-password" }, password),
      " — give it to them now; it is not shown again, and they must change it when they log in.");
    oneTime.hidden = false;
  }

  async function act(fn) {
    busi.showError(errorBox, "");
    oneTime.hidden = true;
    try {
      return await fn();
    } catch (err) {
      busi.showError(errorBox, err.message);
      return null;
    }
  }

  const reload = () => window.location.reload();

  document.getElementById("add-user").addEventListener("submit", async (e) => {
    e.preventDefault();
    const name = document.getElementById("new-name").value.trim();
    const role = document.getElementById("new-role").value;
    const answer = await act(() => busi.api("/api/users", { method: "POST", json: { name, role } }));
    if (answer) {
      const row = busi.el("tr", { dataset: { user: name, role, disabled: "0" } },
        busi.el("td", {}, name), busi.el("td", {}, role), busi.el("td", { class: "state" }, "one-time password"),
        busi.el("td", {}, answer.user.created_at), busi.el("td", {}));
      document.querySelector("#users-table tbody").append(row);
      showPassword(name, answer.one_time_password);
    }
  });

  root.addEventListener("change", async (e) => {
    if (!e.target.classList.contains("role")) return;
    const row = e.target.closest("tr[data-user]");
    const name = row.dataset.user;
    const answer = await act(() => busi.api(`/api/users/${encodeURIComponent(name)}`,
      { method: "PATCH", json: { role: e.target.value } }));
    if (answer) reload();
    else e.target.value = row.dataset.role;
  });

  root.addEventListener("click", async (e) => {
    const button = e.target.closest("button[data-act]");
    if (!button) return;
    const name = button.closest("tr[data-user]").dataset.user;
    const path = `/api/users/${encodeURIComponent(name)}`;
    if (button.dataset.act === "reset") {
      if (!window.confirm(`Give ${name} a new one-time password? Their current password stops working.`)) return;
      const answer = await act(() => busi.api(`${path}/reset-password`, { method: "POST" }));
      if (answer) {
        showPassword(name, answer.one_time_password);
        const state = button.closest("tr[data-user]").querySelector("td.state");
        if (state) state.textContent = "must choose a new password";  // the one-time password is all that opens it
      }
    } else if (button.dataset.act === "expire") {
      if (!window.confirm(`Make ${name} choose a new password at the next login? Their sessions end now.`)) return;
      if (await act(() => busi.api(path, { method: "PATCH", json: { must_change_password: true } }))) reload();
    } else {
      const disabled = button.dataset.act === "disable";
      if (disabled && !window.confirm(`Disable ${name}? Their sessions and API tokens stop working at once.`)) return;
      if (await act(() => busi.api(path, { method: "PATCH", json: { disabled } }))) reload();
    }
  });
})();
