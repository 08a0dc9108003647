// diffex report: lazy thumbnails, strip paging, tree filter. No network, works from file://.
(function () {
  "use strict";
  var uris = JSON.parse(document.getElementById("thumbs").textContent);
  var dirs = document.querySelectorAll(".tree .row")[0];
  if (dirs) document.documentElement.style.setProperty("--dirs", String(document.querySelectorAll(".tree .row")[0].querySelectorAll(".bar-cell").length || 1));

  function load(img) {
    if (!img.getAttribute("src")) img.src = uris[img.dataset.k];
  }
  // thumbnails are set only when they come near the viewport (or their page is shown)
  var observer = "IntersectionObserver" in window ? new IntersectionObserver(function (entries) {
    entries.forEach(function (e) { if (e.isIntersecting) { load(e.target); observer.unobserve(e.target); } });
  }, { rootMargin: "300px" }) : null;
  document.querySelectorAll("img[data-k]").forEach(function (img) {
    if (observer) observer.observe(img); else load(img);
  });

  // strips: "show more" reveals the next page of images
  document.querySelectorAll("button.more").forEach(function (btn) {
    btn.addEventListener("click", function () {
      var shown = Number(btn.dataset.shown);
      var rows = btn.parentNode.querySelectorAll("tr.strip-row");
      var left = 0;
      rows.forEach(function (tr) {
        var page = Number(tr.dataset.page);
        if (page === shown) tr.hidden = false;
        if (page > shown) left += 1;
      });
      btn.dataset.shown = String(shown + 1);
      if (!left) btn.remove(); else btn.textContent = "Show more (" + left + " left)";
    });
  });

  // tree: expand/collapse all, filter by label (matches stay visible with their ancestors)
  var nodes = Array.prototype.slice.call(document.querySelectorAll(".tree .node"));
  document.getElementById("expand-all").addEventListener("click", function () {
    document.querySelectorAll(".tree details").forEach(function (d) { d.open = true; });
  });
  document.getElementById("collapse-all").addEventListener("click", function () {
    document.querySelectorAll(".tree details").forEach(function (d) { d.open = false; });
  });
  document.getElementById("filter").addEventListener("input", function (ev) {
    var q = ev.target.value.trim().toLowerCase();
    nodes.forEach(function (n) { n.classList.toggle("hidden-by-filter", !!q); });
    if (!q) return;
    nodes.forEach(function (n) {
      if (n.dataset.label.toLowerCase().indexOf(q) < 0) return;
      for (var p = n; p && p.classList && p.classList.contains("node"); p = p.parentNode.closest(".node")) {
        p.classList.remove("hidden-by-filter");
        if (p !== n && p.tagName === "DETAILS") p.open = true;
      }
    });
  });

  window.diffexReport = {
    thumbnails: Object.keys(uris).length,
    loadAll: function () { document.querySelectorAll("img[data-k]").forEach(load); }
  };
})();
