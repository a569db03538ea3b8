"""The dashboard's Submit page in a real browser: the form follows the API's OpenAPI schema, the
seed graph trains from a .json, .npz or .msgpack data file (and from a msgpack graph), and a broken
graph or a bad option shows its problem at its JSON-pointer location before anything is submitted.

Set ``CHAINRULE_UI_SHOTS=<dir>`` to also write screenshots (1280 and 390 px, light and dark).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import graphspec
import runtime

from .conftest import EXAMPLES, wait_for_state
from .ui_support import assert_clean, dashboard, open_dashboard, screenshots, ui_url  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

FILLED_BY_DROP_ZONES = {"graph", "graph_id", "data", "eval_data"}
SEED_GRAPH = EXAMPLES / "logistic_regression.json"
SEED_DATA = EXAMPLES / "data" / "seed_data.json"


def _seed_arrays() -> dict[str, np.ndarray]:
    return runtime.load_tensors(SEED_DATA)


def _open(offline_page, dashboard):
    return open_dashboard(offline_page, dashboard, "#/submit", wait_for="#sp-options [data-pointer='/steps']")


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
    # the API's own example (its OpenAPI document's JobRequest example) fills graph and data; the dry run accepts it
    page.click("#sp-example")
    page.fill("[name='steps']", "20")
    page.wait_for_selector("#sp-form[data-checked='ok']")
    assert "20 steps" in page.inner_text("#sp-check")
    assert "x1 float64 [4]" in page.inner_text("#sp-zone-data")
    assert_clean(offline_page)


def _fill_and_submit(page, graph_path, data_path) -> str:
    # data first: with a graph and no data yet, the dry run's answer is a 422 (no data), a console error
    page.set_input_files("#sp-file-data", str(data_path))
    page.wait_for_selector("#sp-zone-data.sp-filled")
    if graph_path is not None:
        page.set_input_files("#sp-file-graph", str(graph_path))
        page.wait_for_selector("#sp-zone-graph.sp-filled")
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
    # located at the hyperparameter itself, so shown at its field
    lr_error = page.wait_for_selector("[data-pointer='/optimizer/lr'] .sp-errors li[data-location='/optimizer/lr']")
    assert "lr must be" in lr_error.inner_text()
    assert page.get_attribute("[name='optimizer.lr']", "aria-invalid") == "true"
    page.fill("[name='optimizer.lr']", "0.1")
    page.click("#sp-zone-data details summary")
    data = json.loads(SEED_DATA.read_text())
    del data["x2"]
    page.fill("#sp-paste-data", json.dumps(data))
    page.wait_for_selector("#sp-zone-data .sp-errors li[data-location='/data/x2']")
    assert page.locator("[data-pointer='/steps'] .sp-errors li, [data-pointer='/optimizer'] .sp-errors li").count() == 0
    assert page.evaluate("location.hash") == "#/submit"
    screenshots(page, "submit")
    assert [j["id"] for j in api.get("/v1/jobs?limit=1000").json()["jobs"]] == [j["id"] for j in jobs_before]
    assert_clean(offline_page, allowed_console=("422",))


def test_the_train_this_graph_link_submits_a_stored_graph_by_id(dashboard, offline_page, api, store):
    response = api.post("/v1/graphs", content=SEED_GRAPH.read_bytes(), headers={"Content-Type": "application/json"})
    graph_id = response.json()["id"]
    page = open_dashboard(offline_page, dashboard, f"#/graphs/{graph_id}", wait_for="#gp-train")
    page.click("#gp-train")
    page.wait_for_selector("#sp-zone-graph.sp-filled")
    assert graph_id in page.inner_text("#sp-zone-graph")
    job_id = _fill_and_submit(page, None, SEED_DATA)
    wait_for_state(store, job_id, "succeeded", timeout=60)
    assert api.get(f"/v1/jobs/{job_id}").json()["graph_id"] == graph_id
    assert_clean(offline_page)


def test_a_graph_file_dropped_on_its_zone_is_taken(dashboard, offline_page):
    page = _open(offline_page, dashboard)
    page.evaluate("""([name, text]) => {
        const transfer = new DataTransfer();
        transfer.items.add(new File([text], name, { type: "application/json" }));
        const zone = document.querySelector("#sp-zone-graph .sp-drop");
        zone.dispatchEvent(new DragEvent("dragover", { dataTransfer: transfer, bubbles: true, cancelable: true }));
        zone.dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
    }""", [SEED_GRAPH.name, SEED_GRAPH.read_text()])
    page.wait_for_selector("#sp-zone-graph.sp-filled")
    assert "logistic_regression: 6 nodes" in page.inner_text("#sp-zone-graph")
    # the graph is checked at once; the dry run's 422 (no data yet) is not shown as a problem
    page.wait_for_selector("#sp-check:has-text('Give the training data')")
    assert page.locator(".sp-errors li").count() == 0
    assert_clean(offline_page, allowed_console=("422",))


# -- the page's own readers and writers, run in the browser -------------------------------------
def _module(page, name: str) -> str:
    return f"await import(new URL('../static/ui/js/{name}', location.href).href)"


def test_the_msgpack_encoder_writes_what_msgpack_reads(dashboard, offline_page):
    import msgpack

    spliced = msgpack.packb({"x": [1, 2.5, "three"]})
    page = _open(offline_page, dashboard)
    encoded = page.evaluate(f"""async (spliced) => {{
        const {{ encode, Raw, Ext }} = {_module(page, 'msgpack.js')};
        const many = Object.fromEntries(Array.from({{length: 20}}, (_, i) => ['k' + i, i]));
        return Array.from(encode({{
            small: 1, byte: 200, short: 60000, word: 4000000000, big: 2 ** 40, neg: -5, neg8: -100, negbig: -(2 ** 40),
            float: 0.1, tiny: 1e-300, t: true, f: false, n: null, text: 'é'.repeat(40), long: 'x'.repeat(300),
            list: Array.from({{length: 20}}, (_, i) => i), many, bytes: new Uint8Array(300).fill(7),
            ext8: new Ext(1, new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8])), ext3: new Ext(1, new Uint8Array([9, 9, 9])),
            raw: new Raw(new Uint8Array(spliced)), skipped: undefined }}));
    }}""", list(spliced))
    tree = msgpack.unpackb(bytes(encoded), raw=False, strict_map_key=True,
                           ext_hook=lambda code, data: ("ext", code, data))
    assert tree == {
        "small": 1, "byte": 200, "short": 60000, "word": 4000000000, "big": 2**40, "neg": -5, "neg8": -100,
        "negbig": -(2**40), "float": 0.1, "tiny": 1e-300, "t": True, "f": False, "n": None, "text": "é" * 40,
        "long": "x" * 300, "list": list(range(20)), "many": {f"k{i}": i for i in range(20)}, "bytes": b"\x07" * 300,
        "ext8": ("ext", 1, bytes(range(1, 9))), "ext3": ("ext", 1, b"\x09\x09\x09"), "raw": {"x": [1, 2.5, "three"]}}
    assert_clean(offline_page)


@pytest.mark.parametrize("compressed", [False, True])
def test_the_npz_reader_gives_each_array_in_the_api_dtypes(dashboard, offline_page, tmp_path, compressed):
    import base64

    arrays = {
        "f8": np.arange(12, dtype="<f8").reshape(3, 4) / 7, "f4": np.linspace(-1, 1, 5, dtype=np.float32),
        "i8": np.array([-(2**40), 0, 2**40], dtype=np.int64), "flags": np.array([True, False, True]),
        "i4": np.array([[-3, 4]], dtype=np.int32), "u1": np.array([0, 255], dtype=np.uint8),
        "f2": np.array([0.5, -2.0, 65504.0], dtype=np.float16), "big_endian": np.array([1.5, -2.25], dtype=">f8"),
        "scalar": np.float64(3.25), "empty": np.zeros((0, 3)),
    }
    expected = {
        "f8": arrays["f8"], "f4": arrays["f4"], "i8": arrays["i8"], "flags": arrays["flags"],
        "i4": arrays["i4"].astype(np.int64), "u1": arrays["u1"].astype(np.int64), "f2": arrays["f2"].astype(np.float32),
        "big_endian": arrays["big_endian"].astype("<f8"), "scalar": np.array(3.25), "empty": arrays["empty"],
    }
    path = tmp_path / "arrays.npz"
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    fortran = tmp_path / "fortran.npz"
    np.savez(fortran, m=np.asfortranarray(np.ones((2, 3))))
    page = _open(offline_page, dashboard)
    script = f"""async ([b64, fortranB64]) => {{
        const {{ readNpz }} = {_module(page, 'npz.js')};
        const {{ bytesToBase64, base64ToBytes }} = {_module(page, 'tensor.js')};
        const read = (text) => readNpz(base64ToBytes(text).buffer);
        const out = {{}};
        for (const [name, t] of Object.entries(await read(b64))) {{
            out[name] = {{ dtype: t.dtype, shape: t.shape, base64: bytesToBase64(t.bytes) }};
        }}
        let refused = null;
        try {{ await read(fortranB64); }} catch (error) {{ refused = error.message; }}
        return {{ out, refused }};
    }}"""
    result = page.evaluate(script, [base64.b64encode(path.read_bytes()).decode(),
                                    base64.b64encode(fortran.read_bytes()).decode()])
    assert set(result["out"]) == set(expected)
    for name, want in expected.items():
        got = result["out"][name]
        assert got["dtype"] == want.dtype.name and got["shape"] == list(want.shape), name
        array = np.frombuffer(base64.b64decode(got["base64"]), dtype=np.dtype(got["dtype"]).newbyteorder("<"))
        assert np.array_equal(array.reshape(want.shape), want), name
    assert "Fortran" in result["refused"]
    assert_clean(offline_page)
