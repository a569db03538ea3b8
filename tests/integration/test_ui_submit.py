"""The dashboard's Submit page in a real browser: the form follows the API's OpenAPI schema, the
seed graph trains from a .json, .npz or .msgpack data file (and from a msgpack graph), and a broken
graph or a bad option shows its problem at its JSON-pointer location before anything is submitted.

Set ``CHAINRULE_UI_SHOTS=<dir>`` to also write screenshots (1280 and 390 px, light and dark).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import graphspec
import runtime

from .conftest import EXAMPLES, wait_for_state
from .ui_support import assert_clean, dashboard, open_dashboard, ui_url  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

SHOTS = os.environ.get("CHAINRULE_UI_SHOTS")
FILLED_BY_DROP_ZONES = {"graph", "graph_id", "data", "eval_data"}
SEED_GRAPH = EXAMPLES / "logistic_regression.json"
SEED_DATA = EXAMPLES / "data" / "seed_data.json"


def _seed_arrays() -> dict[str, np.ndarray]:
    return runtime.load_tensors(SEED_DATA)


def _open(offline_page, dashboard):
    return open_dashboard(offline_page, dashboard, "#/submit", wait_for="#sp-options [data-pointer='/steps']")


def _shots(page, name: str) -> None:
    if not SHOTS:
        return
    for width in (1280, 390):
        for theme in ("light", "dark"):
            page.set_viewport_size({"width": width, "height": 900 if width > 400 else 844})
            page.evaluate(f"""() => {{ localStorage.setItem('chainrule.theme', '{theme}');
                document.documentElement.dataset.theme = '{theme}'; }}""")
            page.wait_for_timeout(100)
            page.screenshot(path=f"{SHOTS}/ui-{name}-{width}-{theme}.png", full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})


def test_every_job_option_in_the_openapi_schema_has_a_field(dashboard, offline_page, api):
    spec = api.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    page = _open(offline_page, dashboard)
    for name in schemas["JobRequest"]["properties"]:
        field = page.locator(f"[data-pointer='/{name}']")
        if name in FILLED_BY_DROP_ZONES - {"graph_id"}:
            assert field.count() == 1 and field.locator("input[type=file]").count() == 1, name
        elif name != "graph_id":
            assert field.count() == 1, name
            assert field.locator("input, select").count() >= 1, name
    for name in schemas["OptimizerSpec"]["properties"]:
        assert page.locator(f"[data-pointer='/optimizer/{name}'] :is(input, select)").count() == 1, name
    # the enum is a select with the API's values; the description is the help text
    assert page.eval_on_selector_all("[name='optimizer.name'] option", "os => os.map(o => o.textContent)") == \
        schemas["OptimizerSpec"]["properties"]["name"]["enum"]
    assert "examples per step" in page.inner_text("[data-pointer='/batch_size']")
    assert page.input_value("[name='report_every']") == "1" and page.is_checked("[name='shuffle']")
    assert_clean(offline_page)


def _fill_and_submit(page, graph_path, data_path) -> str:
    page.set_input_files("#sp-file-graph", str(graph_path))
    page.set_input_files("#sp-file-data", str(data_path))
    page.wait_for_selector("#sp-zone-data.sp-filled")
    page.fill("[name='steps']", "300")
    page.fill("[name='optimizer.lr']", "0.5")
    page.fill("[name='batch_size']", "16")
    page.wait_for_selector("#sp-form[data-checked='ok']")  # the dry run accepted it
    assert "300 steps" in page.inner_text("#sp-check")
    page.click("#sp-submit")
    page.wait_for_selector("main .page-job")  # the job's page (a page's CSP forbids wait_for_function's eval)
    assert page.evaluate("location.hash").startswith("#/jobs/job_")
    return page.evaluate("location.hash").split("/")[-1]


@pytest.mark.parametrize("graph_form,data_form", [("json", "json"), ("json", "npz"), ("json", "npz_compressed"),
                                                  ("json", "msgpack"), ("msgpack", "npz")])
def test_the_seed_graph_trains_from_each_data_file_form(dashboard, offline_page, api, store, tmp_path,
                                                        graph_form, data_form):
    arrays = _seed_arrays()
    graph_path = SEED_GRAPH
    if graph_form == "msgpack":
        graph_path = tmp_path / "seed.msgpack"
        graph_path.write_bytes(graphspec.dumps(graphspec.loads(SEED_GRAPH.read_bytes(), "json"), "msgpack"))
    if data_form == "json":
        data_path = SEED_DATA
    elif data_form == "npz":
        data_path = tmp_path / "seed.npz"
        np.savez(data_path, **arrays)
    elif data_form == "npz_compressed":
        data_path = tmp_path / "seed_c.npz"
        np.savez_compressed(data_path, **arrays)
    else:
        data_path = tmp_path / "seed.msgpack"
        runtime.save_tensors(data_path, arrays)
    page = _open(offline_page, dashboard)
    job_id = _fill_and_submit(page, graph_path, data_path)
    job, _ = wait_for_state(store, job_id, "succeeded", timeout=60)
    resource = api.get(f"/v1/jobs/{job_id}").json()
    assert resource["total_steps"] == 300
    settings = resource.get("settings") or {}
    if settings:
        assert settings["batch_size"] == 16 and settings["optimizer"]["lr"] == 0.5
    # the data arrived exactly (every row, bit for bit)
    rows = api.get(f"/v1/jobs/{job_id}/data?offset=0&limit=60").json()["data"]
    for name, array in arrays.items():
        got = runtime.data.tensors_from_tree({name: rows[name]})[name]
        assert got.dtype == array.dtype and np.array_equal(got, array), name
    assert_clean(offline_page)


def test_a_broken_graph_and_bad_options_show_problems_at_their_location_before_submitting(
        dashboard, offline_page, api):
    broken = json.loads(SEED_GRAPH.read_text())
    broken["nodes"][4]["op"] = "sigmoidd"
    page = _open(offline_page, dashboard)
    jobs_before = api.get("/v1/jobs?limit=1000").json()["jobs"]
    page.click("#sp-zone-graph details summary")
    page.fill("#sp-paste-graph", json.dumps(broken))
    page.set_input_files("#sp-file-data", str(SEED_DATA))
    page.fill("[name='steps']", "10")
    graph_error = page.wait_for_selector("#sp-zone-graph .sp-errors li[data-location='/graph/nodes/4/op']")
    assert "sigmoidd" in graph_error.inner_text() and "did you mean 'sigmoid'" in graph_error.inner_text()
    assert "sp-invalid" in page.get_attribute("#sp-zone-graph", "class")
    # the API checks in stages (request fields, graph, optimizer, data): fix one, see the next, each in its place
    page.fill("#sp-paste-graph", SEED_GRAPH.read_text())
    page.fill("[name='steps']", "0")
    page.wait_for_selector("[data-pointer='/steps'] .sp-errors li[data-location='/steps']")
    assert page.locator("#sp-zone-graph .sp-errors li").count() == 0
    assert page.get_attribute("[name='steps']", "aria-invalid") == "true"
    page.fill("[name='steps']", "10")
    page.fill("[name='optimizer.lr']", "-1")
    lr_error = page.wait_for_selector("[data-pointer='/optimizer'] > .sp-errors li[data-location^='/optimizer']")
    assert "lr must be" in lr_error.inner_text()
    page.fill("[name='optimizer.lr']", "0.1")
    page.click("#sp-zone-data details summary")
    data = json.loads(SEED_DATA.read_text())
    del data["x2"]
    page.fill("#sp-paste-data", json.dumps(data))
    page.wait_for_selector("#sp-zone-data .sp-errors li[data-location='/data/x2']")
    assert page.locator("[data-pointer='/steps'] .sp-errors li, [data-pointer='/optimizer'] .sp-errors li").count() == 0
    assert page.evaluate("location.hash") == "#/submit"
    _shots(page, "submit")
    assert [j["id"] for j in api.get("/v1/jobs?limit=1000").json()["jobs"]] == [j["id"] for j in jobs_before]
    assert_clean(offline_page, allowed_console=("422",))
