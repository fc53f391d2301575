// A word's attention over the K frames of its card (the report's page and `vidcap app`): hovering or focusing a
// `.w[data-a]` word gives every `.cell` of its `.card` --w = weight / row maximum and outlines the maximum.
function vidcapAttention(root) {
  "use strict";
  function show(word, on) {
    const card = word.closest(".card");
    const cells = card.querySelectorAll(".cell");
    card.classList.toggle("attending", on);
    word.classList.toggle("on", on);
    if (!on) {
      cells.forEach((cell) => {
        cell.classList.remove("top");
        cell.style.removeProperty("--w");
      });
      return;
    }
    const weights = word.dataset.a.split(" ").map(Number);
    const max = Math.max(...weights);
    const top = weights.indexOf(max);
    cells.forEach((cell, k) => {
      cell.style.setProperty("--w", max > 0 ? (weights[k] / max).toFixed(3) : "0");
      cell.classList.toggle("top", k === top && max > 0);
    });
  }

  // Delegated from `root`, so that cards added later (the app replaces them after each caption) respond too.
  const word = (event) => event.target.closest && event.target.closest(".w[data-a]");
  for (const [type, on] of [["mouseover", true], ["focusin", true], ["mouseout", false], ["focusout", false]]) {
    root.addEventListener(type, (event) => {
      const target = word(event);
      if (target) show(target, on);
    });
  }
}
