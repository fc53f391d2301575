// The evaluation report's script (vidcap/report/page.py), after attention.js: sorting, filtering, and the
// attention of a word.
(() => {
  "use strict";
  const list = document.getElementById("cards");
  const cards = Array.from(list.children);
  const input = cards.slice();
  const sortBy = document.getElementById("sort");
  const direction = document.getElementById("direction");
  const filter = document.getElementById("filter");
  const count = document.getElementById("count");
  const scores = new Map(cards.map((c) => [c, JSON.parse(c.dataset.scores)]));
  const texts = new Map(cards.map((c) => [c, c.textContent.toLowerCase()]));
  const byId = (a, b) => a.dataset.id.localeCompare(b.dataset.id, undefined, { numeric: true });

  function sort() {
    const key = sortBy.value;
    const sign = direction.dataset.ascending === "1" ? 1 : -1;
    let order = input;
    if (key === "id") {
      order = input.slice().sort((a, b) => sign * byId(a, b));
    } else if (key) {
      order = input.slice().sort((a, b) => {
        const x = scores.get(a)[key];
        const y = scores.get(b)[key];
        if (x === undefined || y === undefined) return (x === undefined) - (y === undefined); // missing: last
        return sign * (x - y) || byId(a, b);
      });
    }
    list.append(...order);
  }

  function applyFilter() {
    const query = filter.value.trim().toLowerCase();
    let shown = 0;
    for (const card of cards) {
      card.hidden = query !== "" && !texts.get(card).includes(query);
      shown += !card.hidden;
    }
    count.textContent = `${shown} of ${cards.length} videos`;
  }

  vidcapAttention(list);  // attention.js, loaded before this script
  sortBy.addEventListener("change", sort);
  direction.addEventListener("click", () => {
    const ascending = direction.dataset.ascending !== "1";
    direction.dataset.ascending = ascending ? "1" : "0";
    direction.textContent = ascending ? "worst first" : "best first";
    sort();
  });
  filter.addEventListener("input", applyFilter);
  sort();
  applyFilter();
})();
