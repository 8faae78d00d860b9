"use strict";
// The login form: posts JSON (no cross-site form can), then opens the panel.
document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("login-form");
  const error = document.getElementById("login-error");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    const body = JSON.stringify({
      user: document.getElementById("user").value,
      password: document.getElementById("password").value,
    });
    let response;
    try {
      response = await fetch("/admin/api/login", {
        method: "POST", credentials: "same-origin", body,
        headers: { "Content-Type": "application/json" },
      });
    } catch (failure) {
      error.textContent = "The graph does not answer: " + failure;
      error.hidden = false;
      return;
    }
    if (response.ok) {
      window.location.assign("/admin/");
      return;
    }
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
    error.textContent = detail;
    error.dataset.status = String(response.status);
    error.hidden = false;
    document.getElementById("password").value = "";
  });
});
