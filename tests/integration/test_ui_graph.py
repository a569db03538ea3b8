"""The dashboard's Graph page in a real browser: the layered drawing, and every node's value and
gradient equal to what ``POST /v1/graphs/{id}/explain`` returns for the same example and parameters.

Set ``CHAINRULE_UI_SHOTS=<dir>`` to also write screenshots (1280 and 390 px, light and dark).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import EXAMPLES, wait_for, wait_for_state
from .ui_support import assert_clean, dashboard, open_dashboard, screenshots, ui_url  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration



def _load(path: Path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def sigmoid_id(api) -> str:
    response = api.post("/v1/graphs", content=(EXAMPLES / "sigmoid_primitives.json").read_bytes(),
                        headers={"Content-Type": "application/json"})
    assert response.status_code == 201, response.text
    return response.json()["id"]


@pytest.fixture(scope="module")
def trained_job(api, store, sigmoid_id) -> str:
    body = {"graph_id": sigmoid_id, "data": _load(EXAMPLES / "data" / "seed_data.json"),
            "optimizer": {"name": "sgd", "lr": 0.5}, "steps": 300, "batch_size": 16, "report_every": 50}
    response = api.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    job, _ = wait_for_state(store, job_id, "succeeded", timeout=60)
    return job_id


def _explained(page) -> None:
    page.wait_for_selector(".page-graph[data-explained='yes']")


def _drawn(page) -> dict[str, dict]:
    """Every node box on the drawing: rank, centre, value and gradient as the page holds them."""
    return page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('svg.gv [data-node]')].map(g => [
        g.dataset.node, {kind: g.dataset.kind, rank: Number(g.dataset.rank), x: Number(g.dataset.x),
                         y: Number(g.dataset.y), value: g.dataset.value, grad: g.dataset.grad,
                         focusable: g.getAttribute('tabindex') === '0'}]))""")


def _assert_matches_explain(page, explanation: dict) -> None:
    drawn = _drawn(page)
    assert set(drawn) == {n["name"] for n in explanation["nodes"]}
    for node in explanation["nodes"]:
        shown = drawn[node["name"]]
        assert json.loads(shown["value"]) == node["value"], node["name"]
        assert json.loads(shown["grad"]) == node["grad"], node["name"]


def _scale(transform: str) -> float:
    return float(transform.split("scale(")[1].rstrip(")"))


def test_graph_page_draws_layers_inputs_and_parameters_first_loss_last(dashboard, offline_page, sigmoid_id):
    page = open_dashboard(offline_page, dashboard, f"#/graphs/{sigmoid_id}", wait_for=".page-graph svg.gv [data-node]")
    _explained(page)
    drawn = _drawn(page)
    doc = _load(EXAMPLES / "sigmoid_primitives.json")
    assert set(drawn) == set(doc["inputs"]) | set(doc["parameters"]) | {n["id"] for n in doc["nodes"]}
    assert all(d["focusable"] for d in drawn.values())
    # left to right at 1280 px: the first layer is the leftmost, the loss alone in the last
    sources = [name for name, d in drawn.items() if d["kind"] in ("input", "parameter")]
    first = min(d["x"] for d in drawn.values())
    assert all(drawn[name]["x"] == first for name in sources)
    assert all(drawn[name]["rank"] == 0 for name in sources)
    assert drawn["L"]["x"] == max(d["x"] for d in drawn.values())
    assert drawn["L"]["rank"] == max(d["rank"] for d in drawn.values())
    # wheel zoom and drag pan move the drawing; Fit brings the whole graph back
    fitted = page.get_attribute("svg.gv .gv-viewport", "transform")
    box = page.locator("svg.gv").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, -400)
    zoomed = page.get_attribute("svg.gv .gv-viewport", "transform")
    assert zoomed != fitted and _scale(zoomed) > _scale(fitted)
    page.mouse.move(box["x"] + 20, box["y"] + 20)
    page.mouse.down()
    page.mouse.move(box["x"] + 120, box["y"] + 80, steps=4)
    page.mouse.up()
    assert page.get_attribute("svg.gv .gv-viewport", "transform") != zoomed
    page.click("#gp-fit")
    assert page.get_attribute("svg.gv .gv-viewport", "transform") == fitted
    # every node shows its op and inferred type
    assert "div" in page.text_content("[data-node='a']") and "float64" in page.text_content("[data-node='a']")
    # top to bottom: the first layer is the topmost
    page.click("#gp-direction")
    drawn = _drawn(page)
    top = min(d["y"] for d in drawn.values())
    assert all(drawn[name]["y"] == top for name in sources)
    assert drawn["L"]["y"] == max(d["y"] for d in drawn.values())
    assert_clean(offline_page)


def test_typed_example_and_params_show_the_explain_values_and_gradients(dashboard, offline_page, api, sigmoid_id):
    example = _load(EXAMPLES / "data" / "seed_one_example.json")
    params = _load(EXAMPLES / "data" / "seed_params.json")
    page = open_dashboard(offline_page, dashboard, f"#/graphs/{sigmoid_id}", wait_for=".page-graph svg.gv")
    _explained(page)
    for name, tensor in example.items():
        page.fill(f"[data-field='input:{name}']", json.dumps(tensor["data"]))
    page.select_option("#gp-param-mode", "typed")
    _explained(page)
    for name, tensor in params.items():
        page.fill(f"[data-field='param:{name}']", json.dumps(tensor["data"]))
    page.click("#gp-explain")
    _explained(page)
    response = api.post(f"/v1/graphs/{sigmoid_id}/explain", json={"inputs": example, "params": params})
    assert response.status_code == 200, response.text
    explanation = response.json()
    _assert_matches_explain(page, explanation)
    assert json.loads(page.get_attribute("#gp-loss [data-loss]", "data-loss")) == explanation["loss"]
    # the textbook figure: z = 0, so a = 1/(1 + exp(-z)) = 0.5 and d(loss)/d(a) = -1/a = -2 (bce with y = 1)
    text = page.text_content("[data-node='a']")
    assert "= 0.5" in text and "∂ −2" in text
    # a node's full value and gradient in the side panel, by keyboard
    page.focus("[data-node='exp_neg_z']")
    page.keyboard.press("Enter")
    page.wait_for_selector("#gp-panel:not([hidden]) .gp-panel-grad")
    assert "exp" in page.inner_text("#gp-panel")
    page.keyboard.press("Escape")  # closes the panel, focus back on the node
    page.wait_for_selector("#gp-panel", state="hidden")
    assert page.evaluate("document.activeElement.dataset.node") == "exp_neg_z"
    screenshots(page, "graph")
    assert_clean(offline_page)


def test_with_a_job_a_row_of_its_data_and_the_trained_params_are_used(dashboard, offline_page, api, sigmoid_id,
                                                                     trained_job):
    page = open_dashboard(offline_page, dashboard, f"#/graphs/{sigmoid_id}?job={trained_job}&node=a",
                          wait_for=".page-graph svg.gv")
    _explained(page)
    assert page.input_value("#gp-example-mode") == "row"
    assert page.input_value("#gp-param-mode") == "trained"
    seed_x1 = _load(EXAMPLES / "data" / "seed_data.json")["x1"]["data"]
    page.fill("#gp-row", "3")
    page.dispatch_event("#gp-row", "change")
    wait_for(lambda: page.input_value("[data-field='input:x1']") == json.dumps(seed_x1[3:4]), timeout=10,
             message="row 3 in the x1 field")
    _explained(page)
    rows = api.get(f"/v1/jobs/{trained_job}/data?offset=3&limit=1").json()
    params = api.get(f"/v1/jobs/{trained_job}/result").json()["params"]
    response = api.post(f"/v1/graphs/{sigmoid_id}/explain", json={"inputs": rows["data"], "params": params})
    assert response.status_code == 200, response.text
    _assert_matches_explain(page, response.json())
    # &node= highlights the node and opens its panel
    assert "gv-highlight" in page.get_attribute("[data-node='a']", "class")
    assert page.is_visible("#gp-panel")
    screenshots(page, "graph-job")
    assert_clean(offline_page)


@pytest.mark.parametrize("example", ["logistic_regression", "small_mlp"])
def test_every_example_graph_draws_and_explains_with_its_initial_parameters(dashboard, offline_page, api, example):
    doc = _load(EXAMPLES / f"{example}.json")
    response = api.post("/v1/graphs", json=doc)
    assert response.status_code == 201, response.text
    graph_id = response.json()["id"]
    page = open_dashboard(offline_page, dashboard, f"#/graphs/{graph_id}", wait_for=".page-graph svg.gv")
    _explained(page)  # typed-in zeros for every input, the initial parameters (seed 0)
    drawn = _drawn(page)
    assert set(drawn) == set(doc["inputs"]) | set(doc["parameters"]) | {n["id"] for n in doc["nodes"]}
    assert all(d["value"] is not None for d in drawn.values())
    # a big tensor is summarised on its box (first values and min/max/mean); the panel has it all
    if example == "small_mlp":
        assert "min" in page.text_content("[data-node='w1']")
        page.click("[data-node='w1']")
        numbers = json.loads(page.inner_text("#gp-panel .gp-panel-value .gp-numbers"))
        assert len(numbers) == 4 and len(numbers[0]) == 16
        screenshots(page, "graph-mlp")
    assert_clean(offline_page)


def test_non_finite_values_and_gradients_are_shown_as_the_api_spells_them(dashboard, offline_page, api, sigmoid_id):
    example = {"x1": {"dtype": "float64", "shape": [1], "data": [-1000.0]},
               "x2": {"dtype": "float64", "shape": [1], "data": [0.0]},
               "y": {"dtype": "float64", "shape": [1], "data": [1.0]}}
    params = {"w1": {"dtype": "float64", "shape": [], "data": 1.0},
              "w2": {"dtype": "float64", "shape": [], "data": 0.0},
              "b": {"dtype": "float64", "shape": [], "data": 0.0}}
    page = open_dashboard(offline_page, dashboard, f"#/graphs/{sigmoid_id}", wait_for=".page-graph svg.gv")
    _explained(page)
    page.click(".gp-paste summary")
    page.fill("#gp-paste", json.dumps({"inputs": example, "params": params}))  # an explain body fills both
    assert page.input_value("#gp-param-mode") == "typed"
    page.click("#gp-explain")
    _explained(page)
    explanation = api.post(f"/v1/graphs/{sigmoid_id}/explain", json={"inputs": example, "params": params}).json()
    _assert_matches_explain(page, explanation)
    assert "Infinity" in page.get_attribute("[data-node='exp_neg_z']", "data-value")
    assert "= ∞" in page.text_content("[data-node='exp_neg_z']")
    assert "∂ NaN" in page.text_content("[data-node='w1']")
    page.click("[data-node='w1']")
    assert "1 non-finite" in page.inner_text("#gp-panel .gp-panel-grad")
    assert_clean(offline_page)
