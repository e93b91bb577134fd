// Progressive enhancement only: every page works without this script.
// "Run again" takes a second or two: say so while the form's POST is under way.
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (!form.matches("form.run")) return;
  const button = form.querySelector("button");
  button.disabled = true;
  button.textContent = "Running…";
  form.setAttribute("aria-busy", "true");
  document.querySelectorAll(".evidence").forEach((box) => box.classList.add("busy"));
});
// A page restored from the back/forward cache must not stay busy.
window.addEventListener("pageshow", () => {
  document.querySelectorAll("form.run[aria-busy]").forEach((form) => {
    form.removeAttribute("aria-busy");
    const button = form.querySelector("button");
    button.disabled = false;
    button.textContent = "Run again";
  });
  document.querySelectorAll(".evidence.busy").forEach((box) => box.classList.remove("busy"));
});
