// The pilot monitor's only script: refresh parts of the page in place, and apply filters,
// log searches and the pilot list's search, sort and pages without a reload. Plain DOM, no library. Every fragment comes from the server
// already rendered and escaped; a 401 means the session ended, so go back to the login form.
"use strict";

(function () {
  function fragmentQuery(form) {
    var params = new URLSearchParams();
    new FormData(form).forEach(function (value, key) {
      if (value !== "") params.set(key, value);
    });
    return params;
  }

  // The newest request for a region wins: starting one aborts the one in flight, and an
  // answer that still arrives late is dropped (counted in body[data-discarded]), so a slow
  // answer for an old filter can never replace the matrix of the filter now in the URL.
  var latest = new WeakMap();

  function discard() {
    document.body.dataset.discarded = String(Number(document.body.dataset.discarded || 0) + 1);
  }

  function load(region, query) {
    var url = region.dataset.fragment + (query ? "?" + query : "");
    var previous = latest.get(region);
    if (previous) previous.abort();
    var mine = new AbortController();
    latest.set(region, mine);
    return fetch(url, {
      credentials: "same-origin",
      headers: { Accept: "text/html" },
      signal: mine.signal
    })
      .then(function (response) {
        if (response.status === 401) {
          window.location.assign("/monitor/login");
          return null;
        }
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.text();
      })
      .then(function (html) {
        if (html === null) return;
        if (latest.get(region) !== mine) {
          discard();
          return;
        }
        region.innerHTML = html;
        region.removeAttribute("aria-busy");
        var stamp = document.getElementById("last-refreshed");
        if (stamp) stamp.textContent = new Date().toISOString().replace(/\.\d+Z$/, "Z");
        document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
      })
      .catch(function (error) {
        if (error && error.name === "AbortError") {
          discard(); // superseded by a newer request
          return;
        }
        region.setAttribute("aria-busy", "true"); // kept as it was; the next refresh retries
      });
  }

  function currentQuery() {
    return window.location.search.replace(/^\?/, "");
  }

  function every(region, seconds) {
    if (!seconds) return;
    window.setInterval(function () {
      // a selection in progress (the pilot list's checkboxes) is not swapped away
      if (!document.hidden && !region.querySelector("input[type=checkbox]:checked")) {
        load(region, currentQuery());
      }
    }, seconds * 1000);
  }

  function setQuery(params, path) {
    var query = params.toString();
    window.history.replaceState(null, "", (path || window.location.pathname) + (query ? "?" + query : ""));
    return query;
  }

  function preserveRefresh(params) {
    var refresh = new URLSearchParams(window.location.search).get("refresh");
    if (refresh !== null) params.set("refresh", refresh);
    return params;
  }

  function overview() {
    var region = document.getElementById("overview");
    var form = document.getElementById("filters");
    if (!region || !form) return;
    every(region, Number(region.dataset.refresh || 0));
    function apply(event) {
      if (event) event.preventDefault();
      load(region, setQuery(preserveRefresh(fragmentQuery(form)), "/monitor"));
    }
    form.addEventListener("submit", apply);
    form.addEventListener("change", function () { apply(null); });
    region.addEventListener("click", function (event) {
      var link = event.target.closest("a[data-range]");
      if (!link) return;
      event.preventDefault();
      var params = new URLSearchParams(window.location.search);
      params.set("range", link.dataset.range);
      var hidden = form.querySelector("input[name=range]");
      if (hidden) hidden.value = link.dataset.range;
      load(region, setQuery(params));
    });
  }

  // A region with a search form and links inside it (pages, sort headers): the log of a
  // pilot, the pilot list. Each swaps the region in place and keeps the URL in step.
  function searchable(regionId, formId, links, onChange) {
    var region = document.getElementById(regionId);
    var form = document.getElementById(formId);
    if (!region || !form) return;
    every(region, Number(region.dataset.refresh || 0));
    function apply(event) {
      if (event) event.preventDefault();
      load(region, setQuery(preserveRefresh(fragmentQuery(form))));
    }
    form.addEventListener("submit", apply);
    if (onChange) {
      form.addEventListener("change", function (event) {
        if (event.target.tagName === "SELECT") apply(null);
      });
    }
    region.addEventListener("click", function (event) {
      var link = event.target.closest(links);
      if (!link) return;
      event.preventDefault();
      var params = preserveRefresh(new URLSearchParams(link.getAttribute("href").replace(/^\?/, "")));
      ["sort", "dir"].forEach(function (name) {
        var hidden = form.querySelector("input[type=hidden][name=" + name + "]");
        if (hidden) hidden.value = params.get(name) || "";
      });
      load(region, setQuery(params));
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    overview();
    searchable("logs", "log-search", "#logs-prev, #logs-next", false);
    searchable("pilot-list", "pilot-search", "a[data-nav]", true);
  });
})();
