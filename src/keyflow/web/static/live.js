// Live state of the page's SSE connection: widgets poll only while it is down.
(function () {
  var open = false;
  window.keyflowLive = function () { return open; };
  function show(state) {
    var badge = document.getElementById("live-state");
    if (badge) { badge.dataset.state = state; badge.textContent = state === "open" ? "live" : "polling"; }
  }
  document.addEventListener("htmx:sseOpen", function () { open = true; show("open"); });
  document.addEventListener("htmx:sseError", function () { open = false; show("down"); });
  document.addEventListener("htmx:sseClose", function () { open = false; show("down"); });
})();
