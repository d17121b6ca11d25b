// The dashboard's behaviour, in a static file (the Content-Security-Policy forbids
// inline script): live-stream state and polling fallback, morphing that keeps
// selections, action feedback, bulk selection, filter controls on Back, and "/".
(function () {
  "use strict";
  var open = false;
  var POLL_MS = 5000;
  var FLASH_MS = 6000;

  // -- live stream: widgets poll only while it is down ---------------------------
  window.keyflowLive = function () { return open; };
  function show(state) {
    var badge = document.getElementById("live-state");
    if (badge) { badge.dataset.state = state; badge.textContent = state === "open" ? "live" : "polling"; }
  }
  document.addEventListener("htmx:sseOpen", function () { open = true; show("open"); });
  document.addEventListener("htmx:sseError", function () { open = false; show("down"); });
  document.addEventListener("htmx:sseClose", function () { open = false; show("down"); });
  setInterval(function () {
    if (open || !window.htmx) { return; }
    document.querySelectorAll("[data-poll]").forEach(function (el) { htmx.trigger(el, "keyflow:poll"); });
  }, POLL_MS);

  // -- morphing: a live update never unticks what the user selected --------------
  function configureMorph() {
    if (!window.Idiomorph) { return; }
    Idiomorph.defaults.ignoreActiveValue = true;
    Idiomorph.defaults.callbacks.beforeAttributeUpdated = function (attr, el) {
      if (attr === "checked" && el.classList && (el.classList.contains("pick") || el.classList.contains("pick-page"))) {
        return false;
      }
      return true;
    };
  }
  configureMorph();

  // -- action feedback: errors always shown, successes fade, a new submit clears ----
  function flashArea() { return document.getElementById("flash"); }
  function showError(text) {
    var area = flashArea();
    if (!area) { return; }
    area.textContent = "";
    var box = document.createElement("div");
    box.className = "flash error";
    box.setAttribute("role", "alert");
    var label = document.createElement("b");
    label.textContent = "Not done: ";
    box.appendChild(label);
    box.appendChild(document.createTextNode(text));
    area.appendChild(box);
  }
  document.addEventListener("htmx:beforeRequest", function (evt) {
    var area = flashArea();
    if (area && evt.detail.requestConfig && evt.detail.requestConfig.verb === "post") { area.textContent = ""; }
  });
  document.addEventListener("htmx:sendError", function () {
    showError("the dashboard did not answer (is it still running?)");
  });
  document.addEventListener("htmx:responseError", function (evt) {
    var xhr = evt.detail.xhr;
    var type = (xhr && xhr.getResponseHeader("content-type")) || "";
    if (type.indexOf("text/html") !== 0 || (xhr.status >= 500)) {
      showError((xhr && xhr.status ? xhr.status + ": " : "") + ((xhr && xhr.responseText) || "request failed").slice(0, 300));
    }
  });
  document.addEventListener("htmx:afterSwap", function (evt) {
    var area = flashArea();
    if (!area || evt.detail.target !== area) { return; }
    var ok = area.querySelector(".flash.ok");
    if (ok) {
      setTimeout(function () { if (ok.parentNode) { ok.parentNode.removeChild(ok); } }, FLASH_MS);
    }
  });

  // -- bulk actions: count what is selected, confirm with the count -----------------
  function bulkForm() { return document.querySelector("form[data-bulk]"); }
  function picked() { return document.querySelectorAll("#w-runs input.pick:checked"); }
  function matchingTotal() {
    var el = document.querySelector("#w-runs [data-total]");
    return el ? parseInt(el.dataset.total, 10) : 0;
  }
  function allMatching() {
    var box = document.querySelector("form[data-bulk] [data-all-matching]");
    return !!(box && box.checked);
  }
  function selectionCount() { return allMatching() ? matchingTotal() : picked().length; }
  function selectionLabel() {
    var el = document.querySelector("#w-runs [data-total]");
    return allMatching() && el ? el.dataset.label : selectionCount().toLocaleString();
  }
  function refreshSelection() {
    var form = bulkForm();
    if (!form) { return; }
    var n = selectionCount();
    form.querySelector("[data-scope]").value = allMatching() ? "matching" : "selected";
    form.querySelector("[data-selected-count]").textContent = n ? selectionLabel() + " selected" : "none selected";
    form.classList.toggle("active", n > 0);
  }
  document.addEventListener("change", function (evt) {
    var target = evt.target;
    if (!target || !target.classList) { return; }
    if (target.classList.contains("pick-page")) {
      document.querySelectorAll("#w-runs input.pick").forEach(function (box) { box.checked = target.checked; });
    }
    if (target.classList.contains("pick") || target.classList.contains("pick-page") || target.hasAttribute("data-all-matching")) {
      refreshSelection();
    }
  });
  document.addEventListener("htmx:afterSettle", refreshSelection);
  document.addEventListener("htmx:confirm", function (evt) {
    var form = evt.detail.elt;
    if (!form || !form.hasAttribute || !form.hasAttribute("data-bulk")) { return; }
    evt.preventDefault();
    var n = selectionCount();
    var submitter = evt.detail.triggerEvent && evt.detail.triggerEvent.submitter;
    var action = submitter ? submitter.value : "cancel";
    if (!n) { showError("select runs first (tick them, or every run matching the filters)"); return; }
    var verb = action === "retrigger" ? "Retrigger" : "Cancel";
    if (window.confirm(verb + " " + selectionLabel() + " run" + (n === 1 ? "" : "s") + "?")) {
      evt.detail.issueRequest(true);
    }
  });
  document.addEventListener("htmx:afterRequest", function (evt) {
    var form = evt.detail.elt;
    if (form && form.hasAttribute && form.hasAttribute("data-bulk") && evt.detail.successful) {
      document.querySelectorAll("#w-runs input.pick:checked, #w-runs input.pick-page").forEach(function (box) { box.checked = false; });
      var all = form.querySelector("[data-all-matching]");
      if (all) { all.checked = false; }
      refreshSelection();
    }
  });

  // -- Back and Forward: the filter controls show the filters of the URL -------------
  function syncFilters() {
    var form = document.getElementById("filters");
    if (!form) { return; }
    var query = new URLSearchParams(window.location.search);
    Array.prototype.forEach.call(form.elements, function (el) {
      if (!el.name) { return; }
      el.value = query.get(el.name) || (el.tagName === "SELECT" && el.name === "sort" ? "key" : "");
    });
  }
  document.addEventListener("htmx:historyRestore", syncFilters);
  // Shareable URLs: a filter left empty (or at its default) is left out.
  document.addEventListener("htmx:configRequest", function (evt) {
    var elt = evt.detail.elt;
    var data = evt.detail.formData;
    if (!elt || elt.id !== "filters" || evt.detail.verb !== "get" || !data) { return; }
    var unset = [];
    data.forEach(function (value, name) {
      if (value === "" || (name === "sort" && value === "key")) { unset.push(name); }
    });
    unset.forEach(function (name) { data.delete(name); });
    // A search box applies as you type, then fires "change" when you leave it: the
    // same filters again would push a second history entry (Back would seem stuck).
    var query = new URLSearchParams(Array.from(data.entries())).toString();
    if (query === new URLSearchParams(window.location.search).toString()) { evt.preventDefault(); }
  });
  window.addEventListener("pageshow", syncFilters);

  // -- keyboard: "/" focuses the page's search box ------------------------------------
  document.addEventListener("keydown", function (evt) {
    if (evt.key !== "/" || evt.ctrlKey || evt.metaKey || evt.altKey) { return; }
    var active = document.activeElement;
    var typing = active && (active.tagName === "INPUT" || active.tagName === "TEXTAREA" || active.tagName === "SELECT" || active.isContentEditable);
    if (typing) { return; }
    var search = document.querySelector("[data-search]");
    if (search) { evt.preventDefault(); search.focus(); search.select(); }
  });
})();
