// Search for the static export (python -m kb build): the live service searches on the server.
// Loads ../search-index.js (it sets window.KB_SEARCH_INDEX; a script, so it works from file://)
// and ranks answers by the question's words found in title, aliases, tags and summary.
(function () {
  "use strict";
  var STOP = new Set("a an and are as at be by can do does for from how i in is it of on or so that the this to we what when where which why with you your".split(" "));
  var root = new URL("../", document.currentScript.src);
  var query = new URLSearchParams(window.location.search).get("q") || "";

  function words(text) {
    return (text.toLowerCase().match(/[a-z0-9]+/g) || []).filter(function (w) { return !STOP.has(w); });
  }
  function stem(word) { return word.length > 5 ? word.slice(0, 5) : word; }
  function score(entry, terms) {
    var fields = [[entry.title, 4], [entry.aliases.join(" "), 3], [entry.tags.join(" "), 2], [entry.summary, 1]];
    return terms.reduce(function (total, term) {
      return total + fields.reduce(function (sum, field) {
        return sum + (words(field[0]).map(stem).indexOf(term) >= 0 ? field[1] : 0);
      }, 0);
    }, 0);
  }
  function show(index) {
    var terms = words(query).map(stem);
    var list = document.getElementById("search-results");
    var ranked = index.map(function (e) { return [score(e, terms), e]; })
      .filter(function (pair) { return terms.length === 0 || pair[0] > 0; })
      .sort(function (a, b) { return b[0] - a[0]; });
    document.querySelector("header.site input[name=q]").value = query;
    document.getElementById("search-title").textContent = query ? "Answers for \u201c" + query + "\u201d" : "Every question";
    document.getElementById("search-hint").textContent = ranked.length ? "" : "No answer matches; try other words.";
    ranked.forEach(function (pair) {
      var item = document.createElement("li");
      var link = document.createElement("a");
      link.className = "question";
      link.href = new URL(pair[1].url, root).href;
      link.textContent = pair[1].title;
      var summary = document.createElement("p");
      summary.className = "summary";
      summary.textContent = pair[1].summary;
      item.append(link, summary);
      list.append(item);
    });
  }
  var script = document.createElement("script");
  script.src = new URL("search-index.js", root).href;
  script.onload = function () { show(window.KB_SEARCH_INDEX); };
  document.head.append(script);
})();
