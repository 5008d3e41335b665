// Live routing: the server pushes each change (Server-Sent Events); the page updates the prompt's
// "serving" cell in place. Reading works without JavaScript; this only saves a reload.
(function () {
  if (!window.EventSource) return;
  var live = document.getElementById("live");
  var source = new EventSource("/ui/stream");
  source.addEventListener("routing", function (event) {
    var state = JSON.parse(event.data);
    var text = state.split
      ? Object.keys(state.split).map(function (v) { return v + " " + state.split[v] + "%"; }).join(", ")
      : (state.active_version || "—");
    document.querySelectorAll('[data-prompt="' + CSS.escape(state.prompt) + '"] .serving').forEach(function (cell) {
      if (cell.textContent !== text) {
        cell.textContent = text;
        cell.setAttribute("data-revision", state.revision);
        if (live) live.textContent = state.prompt + " now serves " + text + ".";
      }
    });
  });
})();
