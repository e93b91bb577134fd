// Search for the static export (python -m kb build): the live service searches on the server.
// Loads ../search-index.js, a script (so that it works from file://) that sets
// window.KB_SEARCH_INDEX (the answers) and window.KB_LEXICAL, tables generated from kb/search/index.py
// (SearchIndex.static_tables): the same query rules, weights and per-answer term counts as the
// server's lexical stage, which this ranks as FTS5's bm25() does, with the Porter stemmer of
// FTS5's "porter" tokenizer. The browser has no embedding model: the export searches by words.
(function () {
  "use strict";
  var K1 = 1.2, B = 0.75;                    // FTS5's bm25() constants
  var WORD = /[\p{L}\p{N}]+/gu;

  // Porter (1980) as SQLite's FTS5 implements it: tokens of 3 to 64 bytes are stemmed; in a
  // step, the first rule whose suffix ends the word (leaving at least one letter) is the only
  // one tried. Conditions on the stem: m (the number of vowel-consonant runs) and *v*, *o.
  function vowel(word, i, previousIsConsonant) {
    var c = word[i];
    return "aeiou".indexOf(c) >= 0 || (c === "y" && previousIsConsonant);
  }
  function measure(stem) {                   // m, counted up to 2
    var m = 0, consonant = false, seenVowel = false;
    for (var i = 0; i < stem.length && m < 2; i++) {
      consonant = !vowel(stem, i, consonant);
      if (!consonant) seenVowel = true;
      else if (seenVowel) { m++; seenVowel = false; }
    }
    return m;
  }
  function hasVowel(stem) {                  // *v* (FTS5 counts y as a vowel after the first letter)
    for (var i = 0; i < stem.length; i++) if ("aeiou".indexOf(stem[i]) >= 0 || (stem[i] === "y" && i > 0)) return true;
    return false;
  }
  function endsCVC(stem) {                   // *o
    var last = stem[stem.length - 1], pattern = 0, consonant = false;
    if (last === "w" || last === "x" || last === "y") return false;
    for (var i = 0; i < stem.length; i++) {
      consonant = !vowel(stem, i, consonant);
      pattern = ((pattern << 1) | (consonant ? 1 : 0)) & 7;
    }
    return stem.length >= 3 && pattern === 5;
  }
  var ALWAYS = function () { return true; };
  var M0 = function (s) { return measure(s) > 0; }, M1 = function (s) { return measure(s) > 1; };
  var ST = function (s) { return /[st]$/.test(s) && M1(s); };
  var STEP2 = [["ational", "ate"], ["tional", "tion"], ["enci", "ence"], ["anci", "ance"], ["izer", "ize"],
    ["logi", "log"], ["bli", "ble"], ["alli", "al"], ["entli", "ent"], ["eli", "e"], ["ousli", "ous"],
    ["ization", "ize"], ["ation", "ate"], ["ator", "ate"], ["alism", "al"], ["iveness", "ive"], ["fulness", "ful"],
    ["ousness", "ous"], ["aliti", "al"], ["iviti", "ive"], ["biliti", "ble"]].map(function (r) { return [r[0], M0, r[1]]; });
  var STEP3 = [["icate", "ic"], ["ative", ""], ["alize", "al"], ["iciti", "ic"], ["ical", "ic"], ["ful", ""],
    ["ness", ""]].map(function (r) { return [r[0], M0, r[1]]; });
  var STEP4 = ["al", "ance", "ence", "er", "ic", "able", "ible", "ant", "ement", "ment", "ent", "ion", "ou", "ism",
    "ate", "iti", "ous", "ive", "ize"].map(function (x) { return [x, x === "ion" ? ST : M1, ""]; });
  function apply(word, rules) {              // [word after the step, whether a rule fired]
    for (var i = 0; i < rules.length; i++) {
      var suffix = rules[i][0];
      if (word.length > suffix.length && word.slice(-suffix.length) === suffix) {
        var stem = word.slice(0, -suffix.length);
        return rules[i][1](stem) ? [stem + rules[i][2], true] : [word, false];
      }
    }
    return [word, false];
  }
  function porter(word) {
    var bytes = new TextEncoder().encode(word).length;
    if (bytes < 3 || bytes > 64) return word;
    var w = word;
    if (w.slice(-1) === "s") {                                            // 1a
      if (w.slice(-2, -1) === "e") {
        w = (w.length > 4 && w.slice(-4, -2) === "ss") || (w.length > 3 && w.slice(-3, -2) === "i") ? w.slice(0, -2) : w.slice(0, -1);
      } else if (w.slice(-2, -1) !== "s") {
        w = w.slice(0, -1);
      }
    }
    var b = apply(w, [["eed", M0, "ee"], ["ed", hasVowel, ""], ["ing", hasVowel, ""]]);   // 1b
    if (b[1] && w.slice(-3) !== "eed") {     // -ed or -ing removed: tidy the stem's end
      w = b[0];
      var c = apply(w, [["at", ALWAYS, "ate"], ["bl", ALWAYS, "ble"], ["iz", ALWAYS, "ize"]]);
      if (c[1]) w = c[0];
      else {
        var last = w[w.length - 1];
        if ("aeiou".indexOf(last) < 0 && "lsz".indexOf(last) < 0 && last === w[w.length - 2]) w = w.slice(0, -1);
        else if (measure(w) === 1 && endsCVC(w)) w += "e";
      }
    } else {
      w = b[0];
    }
    if (w.slice(-1) === "y" && hasVowel(w.slice(0, -1))) w = w.slice(0, -1) + "i";   // 1c
    w = apply(w, STEP2)[0];
    w = apply(w, STEP3)[0];
    w = apply(w, STEP4)[0];
    if (w.slice(-1) === "e") {                                            // 5a
      var s = w.slice(0, -1), m = measure(s);
      if (m > 1 || (m === 1 && !endsCVC(s))) w = s;
    }
    if (w.length > 1 && w.slice(-2) === "ll" && M1(w.slice(0, -1))) w = w.slice(0, -1);   // 5b
    return w;
  }
  function fold(word) {                      // unicode61's remove_diacritics, then porter
    return porter(word.normalize("NFD").replace(/\p{M}/gu, ""));
  }
  var root = new URL("../", document.currentScript.src);
  var query = new URLSearchParams(window.location.search).get("q") || "";

  function queryTerms(text, t) {             // kb.search.index.query_terms
    var stop = new Set(t.stop_words), synonyms = new Map(t.synonyms.map(function (s) { return [s[0].join(" "), s[1]]; }));
    var words = text.slice(0, t.max_query_chars).toLowerCase().match(WORD) || [], terms = [];
    function add(word) {
      if (!stop.has(word) && word.length <= t.max_term_chars && terms.indexOf(word) < 0 && terms.length < t.max_terms) {
        terms.push(word);
      }
    }
    words.forEach(function (word, i) {
      add(word);
      [word, words.slice(i, i + 2).join(" ")].forEach(function (key) { (synonyms.get(key) || []).forEach(add); });
    });
    return terms;
  }
  function spellings(word, t, ize) {         // kb.search.index._spellings
    var out = [word], m = ize.exec(word);
    if (Object.prototype.hasOwnProperty.call(t.spellings, word)) out.push(t.spellings[word]);
    if (m) out.push(m[1] + m[2] + (m[3] === "z" ? "s" : "z") + m[4]);
    return out;
  }
  function phrases(text, t) {                // kb.search.index.SearchIndex.candidates' match expression
    var ize = new RegExp(t.ize.replace(/\\w/g, "[\\p{L}\\p{N}_]"), "u"), out = [];
    var terms = queryTerms(queryTerms(text, t).slice(0, t.max_lexical_terms).join(" "), t);
    terms.forEach(function (term) {
      spellings(term, t, ize).forEach(function (s) { if (out.indexOf(s) < 0) out.push(s); });
    });
    return out.map(fold);
  }
  function rank(text, t) {
    var stems = phrases(text, t), slugs = Object.keys(t.answers), total = 0, hits = stems.map(function () { return 0; });
    slugs.forEach(function (slug) {
      var a = t.answers[slug];
      total += a.lengths.reduce(function (x, y) { return x + y; }, 0);
      stems.forEach(function (s, i) { if (a.terms[s]) hits[i] += 1; });
    });
    var avgdl = total / t.rows;
    var idf = hits.map(function (n) { var v = Math.log((t.rows - n + 0.5) / (n + 0.5)); return v > 0 ? v : 1e-6; });
    function bm25(a, weights) {
      var d = a.lengths.reduce(function (x, y) { return x + y; }, 0), score = 0;
      stems.forEach(function (s, i) {
        var counts = a.terms[s] || [], f = 0;
        counts.forEach(function (c, col) { f += c * weights[col]; });
        score += idf[i] * (f * (K1 + 1)) / (f + K1 * (1 - B + B * d / avgdl));
      });
      return score;
    }
    return slugs.filter(function (slug) { return stems.some(function (s) { return t.answers[slug].terms[s]; }); })
      .map(function (slug) {
        var a = t.answers[slug];
        return [bm25(a, t.weights) + t.question_boost * bm25(a, t.question_weights), slug];
      })
      .sort(function (x, y) { return y[0] - x[0] || (x[1] < y[1] ? -1 : x[1] > y[1] ? 1 : 0); });
  }
  function show(index, tables) {
    var bySlug = new Map(index.map(function (e) { return [e.slug, e]; }));
    var ranked = query ? rank(query, tables) : index.map(function (e) { return [0, e.slug]; });
    var list = document.getElementById("search-results");
    document.querySelector("header.site input[name=q]").value = query;
    document.getElementById("search-title").textContent = query ? "Answers for \u201c" + query + "\u201d" : "Every question";
    document.getElementById("search-hint").textContent = ranked.length ? "" : "No answer matches; try other words.";
    ranked.forEach(function (pair) {
      var entry = bySlug.get(pair[1]);
      var item = document.createElement("li");
      var link = document.createElement("a");
      link.className = "question";
      link.href = new URL(entry.url, root).href;
      link.textContent = entry.title;
      var summary = document.createElement("p");
      summary.className = "summary";
      summary.textContent = entry.summary;
      item.append(link, summary);
      list.append(item);
    });
  }
  window.KB_RANK = rank;                     // for tests: the ranking and the stemmer alone
  window.KB_STEM = fold;
  var script = document.createElement("script");
  script.src = new URL("search-index.js", root).href;
  script.onload = function () { show(window.KB_SEARCH_INDEX, window.KB_LEXICAL); };
  document.head.append(script);
})();
