// The graph page: not built yet (issue #13). See app.js for the page contract.
import { h } from "../dom.js";

export async function mount(root, ctx) {
  ctx.setTitle("graph");
  root.append(h("h1", {}, "graph"), h("p", { class: "muted" }, "This page is being built."));
}
