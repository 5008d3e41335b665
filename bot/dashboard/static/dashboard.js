// Live updates over Server-Sent Events: each routing change updates the "serving" cells in
// place; on the overview, the rows whose figures, verdict, incident or rollout changed arrive
// every few seconds. Reading works without JavaScript; this only saves a reload.
(function () {
  if (!window.EventSource) return;
  var live = document.getElementById("live");
  var overview = document.getElementById("prompts");
  var source = new EventSource("/ui/stream" + (overview ? "?overview=1" : ""));

  function say(text) {
    if (live) live.textContent = text;
  }

  function cells(prompt, selector) {
    return document.querySelectorAll('[data-prompt="' + CSS.escape(prompt) + '"] ' + selector);
  }

  function setText(prompt, selector, text) {
    cells(prompt, selector).forEach(function (cell) {
      if (cell.textContent !== text) cell.textContent = text;
    });
  }

  source.addEventListener("routing", function (event) {
    var state = JSON.parse(event.data);
    var text = state.split
      ? Object.keys(state.split).map(function (v) { return v + " " + state.split[v] + "%"; }).join(", ")
      : (state.active_version || "—");
    cells(state.prompt, ".serving").forEach(function (cell) {
      if (cell.textContent !== text) {
        cell.textContent = text;
        cell.setAttribute("data-revision", state.revision);
        say(state.prompt + " now serves " + text + ".");
      }
    });
  });

  source.addEventListener("rows", function (event) {
    JSON.parse(event.data).forEach(function (row) {
      var tr = overview && overview.querySelector('tr[data-prompt="' + CSS.escape(row.prompt) + '"]');
      if (!tr) return;
      setText(row.prompt, ".serving", row.serving);
      setText(row.prompt, ".requests", row.requests);
      setText(row.prompt, ".error-rate", row.error_rate);
      var verdict = tr.querySelector(".verdict");
      var before = verdict.textContent;
      verdict.textContent = "";
      if (row.incident_id) {
        var link = document.createElement("a");
        link.href = "/ui/incidents/" + row.incident_id;
        link.className = "badge " + (row.severity || "");
        link.textContent = row.verdict;
        verdict.appendChild(link);
      } else {
        verdict.textContent = row.verdict;
      }
      tr.className = row.severity ? "alert" : "";
      var rollout = tr.querySelector(".rollout");
      rollout.textContent = "";
      if (row.rollout) {
        rollout.appendChild(document.createElement("br"));
        rollout.appendChild(document.createTextNode(row.rollout));
      }
      if (row.incident_id && before !== row.verdict) say(row.prompt + ": " + row.verdict + ".");
    });
  });
})();
