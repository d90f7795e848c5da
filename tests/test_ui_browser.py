"""The two web UIs in a real (headless) browser: Dagster's and MLflow's.

* ``dagster-webserver`` on the project's ``workspace.yaml`` with a fresh DAGSTER_HOME: every
  asset is on the asset graph; selecting the three census assets, Materialize, partition 2022,
  Launch runs them on the real 2022 workbooks; ``naics_codes``' page then shows its row count.
* ``mlflow ui`` on a tmp store holding three stage runs logged through ``MlflowTracker``: the
  run comparison page lists the three runs and their metrics.

Playwright drives the system Chromium (``tests/browser.py``); the tests skip, saying why, only
when no Chromium is installed. Screenshots go to pytest's tmp folder and, when
``NAICS_SCREENSHOT_DIR`` is set, to that folder too (``docs/images`` for the docs).
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from naics_ml.stage_table import STAGE_NAMES

from .browser import chromium_executable, free_port, running_server, save_screenshot, venv_script
from .pipeline import ASSET_NAMES

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ASSET_NAMES
CENSUS_ASSETS = ASSETS[:3]
REVISION = "2022"
RUN_TIMEOUT_S = 240
QUIET = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
QUIET |= {"DAGSTER_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = chromium_executable()
    if executable is None:
        pytest.skip(
            "no Chromium found (apt-get install chromium, or NAICS_CHROMIUM=/path/to/chromium)"
        )
    expect.set_options(timeout=30_000)  # a 2-core machine building pages while a run works
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, headless=True)
        yield chromium
        chromium.close()


LOCAL = re.compile(r"^(https?|wss?)://127\.0\.0\.1[:/]")


@pytest.fixture
def new_page(browser: Browser) -> Iterator[Callable[[int, int], Page]]:
    """Pages of a given viewport, each in a fresh context (empty local storage) that only
    talks to 127.0.0.1; all closed after the test."""
    contexts: list[BrowserContext] = []

    def make(width: int, height: int) -> Page:
        context = browser.new_context(viewport={"width": width, "height": height})
        context.route(lambda url: not LOCAL.match(url), lambda route: route.abort())
        context.set_default_timeout(30_000)
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()


# -- Dagster ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DagsterUI:
    url: str
    artifacts: Path


def write_instance(home: Path) -> None:
    """The project's dagster.yaml with every ``base_dir`` under ``home``, and runs launched
    straight from the webserver (no daemon runs here to dequeue them)."""

    def relocate(node: object) -> object:
        if isinstance(node, dict):
            return {k: str(home / v) if k == "base_dir" else relocate(v) for k, v in node.items()}
        return node

    config = relocate(yaml.safe_load((ROOT / "dagster.yaml").read_text()))
    config["telemetry"] = {"enabled": False}
    config["run_coordinator"] = {
        "module": "dagster._core.run_coordinator",
        "class": "DefaultRunCoordinator",
    }
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))


def add_revision(home: Path, revision: str) -> None:
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("naics_revision", [revision])


@pytest.fixture
def dagster_ui(tmp_path: Path, census_root: Path) -> Iterator[DagsterUI]:
    home, artifacts = tmp_path / "dagster_home", tmp_path / "artifacts"
    write_instance(home)
    add_revision(home, REVISION)
    env = os.environ | QUIET
    env |= {
        "DAGSTER_HOME": str(home),
        "NAICS_CENSUS_DIR": str(census_root),
        "NAICS_ARTIFACTS_DIR": str(artifacts),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [venv_script("dagster-webserver"), "-h", "127.0.0.1", "-p", str(port)]
    command += ["-w", "workspace.yaml"]
    log = tmp_path / "dagster-webserver.log"
    with running_server(command, f"{url}/server_info", log, cwd=ROOT, env=env):
        yield DagsterUI(url, artifacts)


def open_asset_graph(page: Page, url: str) -> None:
    """The global asset lineage alone on a fresh page, every group expanded."""
    page.add_locator_handler(  # shown on the first visit of a DAGSTER_HOME
        page.get_by_text("Join the Dagster community"),
        lambda: page.get_by_role("button", name="Skip").click(),
    )
    page.goto(f"{url}/asset-groups")
    page.get_by_role("button", name="Hide navigation").click()
    page.get_by_role("button", name="panel_show_right").click()  # the asset tree beside it
    settings = page.locator("#zoom-slider-container").get_by_role("button", name="settings")
    expand = page.get_by_role("menuitem", name="Expand all groups")
    for attempt in range(3):  # the community dialog may pop up late and close the menu
        settings.click()
        try:
            expand.click(timeout=10_000)
            break
        except PlaywrightTimeoutError:
            if attempt == 2:
                raise
    page.keyboard.press("Escape")


def graph_node(page: Page, asset: str):
    return page.locator("svg foreignObject").get_by_text(asset, exact=True)


def launch_partition(page: Page, assets: tuple[str, ...], partition: str) -> str:
    """Select ``assets`` on the graph, Materialize, pick ``partition``, launch; the run id."""
    graph_node(page, assets[0]).click()
    for asset in assets[1:]:
        graph_node(page, asset).click(modifiers=["Shift"])
    page.get_by_role("button", name=f"Materialize selected ({len(assets)})").click()
    dialog = page.get_by_role("dialog").filter(has_text=f"materialize {len(assets)} assets")
    dialog.get_by_text("Select a partition or create one").click()
    page.get_by_role("menuitem").filter(has=page.get_by_text(partition, exact=True)).click()
    dialog.get_by_text(f"Launch runs to materialize {len(assets)} assets").click()  # close list
    dialog.get_by_role("button", name="Launch 1 run").click()
    page.get_by_role("link", name="View").click()  # the "Launched run" toast
    page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}"))
    return page.url.rsplit("/runs/", 1)[1].split("?")[0]


def run_status(url: str, run_id: str) -> str:
    query = "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"
    body = json.dumps({"query": query, "variables": {"id": run_id}}).encode()
    request = urllib.request.Request(f"{url}/graphql", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)["data"]["runOrError"].get("status", "NOT_FOUND")


def wait_for_run(page: Page, url: str, run_id: str, timeout_s: float) -> str:
    """The run's final status (GraphQL, polled while the run page stays open)."""
    waited = 0.0
    while (status := run_status(url, run_id)) not in {"SUCCESS", "FAILURE", "CANCELED"}:
        assert waited < timeout_s, f"run {run_id} still {status} after {timeout_s} s"
        page.wait_for_timeout(2000)
        waited += 2.0
    return status


def test_dagster_ui_materializes_census_assets(
    new_page: Callable[[int, int], Page], dagster_ui: DagsterUI, tmp_path: Path
) -> None:
    page = new_page(3000, 1300)  # wide enough for full asset nodes (four groups), names untruncated
    open_asset_graph(page, dagster_ui.url)
    for asset in ASSETS:
        expect(graph_node(page, asset)).to_be_visible()

    run_id = launch_partition(page, CENSUS_ASSETS, REVISION)
    status = wait_for_run(page, dagster_ui.url, run_id, RUN_TIMEOUT_S)
    assert status == "SUCCESS", f"run {run_id} ended {status}"
    expect(page.get_by_text("Success", exact=True).first).to_be_visible()
    expect(page.get_by_text(f"partition: {REVISION}")).to_be_visible()
    expect(page.get_by_text("RUN_SUCCESS", exact=True)).to_be_visible()  # the event log's end
    save_screenshot(page, tmp_path, "dagster_run.png")

    import polars as pl

    rows = pl.read_parquet(dagster_ui.artifacts / REVISION / "naics_codes.parquet").height
    page.goto(f"{dagster_ui.url}/assets/naics_codes")
    latest = page.locator("div", has=page.get_by_text("Latest materialization", exact=True))
    expect(latest.last).to_contain_text(REVISION)  # the partition materialized last
    row_count = page.locator("div", has=page.get_by_text("Row count", exact=True)).last
    expect(row_count).to_contain_text(f"{rows:,}")
    save_screenshot(page, tmp_path, "naics_codes_asset.png")

    page = new_page(3000, 1300)
    open_asset_graph(page, dagster_ui.url)  # now with the census group materialized
    for asset in CENSUS_ASSETS:
        expect(graph_node(page, asset)).to_be_visible()
    save_screenshot(page, tmp_path, "asset_graph.png")


# -- MLflow ----------------------------------------------------------------------------------

STAGES = STAGE_NAMES
# the assistant panel MLflow opens on a first visit would cover half of the page
NO_ASSISTANT = """
localStorage.setItem("mlflow.assistant.fab.autoOpenedOnFirstLoad_v1", "true");
localStorage.setItem("mlflow.assistant.panelOpen_v1", "false");
"""


def stage_request(revision_dir: Path, stage: str):
    """The request a stage asset would build with its launchpad defaults."""
    from naics_assets.assets import stages
    from naics_ml.model.config import ModelConfig
    from naics_ml.revision_folder import RevisionFolder
    from naics_ml.stage import StagePaths, StageRequest, resolve_curriculum
    from naics_ml.stage_table import stage_spec

    spec = stage_spec(stage)
    config = stages.STAGE_CONFIGS[stage]()
    _, train_config = stages.stage_configs(config, spec)
    return StageRequest(
        name=f"{REVISION}/{stage}",
        paths=StagePaths.in_revision(RevisionFolder(revision_dir), spec),
        curriculum=resolve_curriculum(config.curriculum, spec),
        model_config=ModelConfig(),
        train_config=train_config,
        extra={"revision": REVISION, "stage": stage},
    )


def log_stage_runs(tracking_uri: str, revision_dir: Path) -> tuple[list[str], str]:
    """Three stage runs as the stage assets log them (tags, params, step and final metrics),
    with made-up numbers; their run ids and the experiment id."""
    from naics_assets.assets.stages import stage_params
    from naics_assets.tracking import MlflowTracker
    from naics_ml.evaluation.stage_report import HEADLINE

    tracker, run_ids, experiment = MlflowTracker(tracking_uri=tracking_uri), [], ""
    for number, stage in enumerate(STAGES, start=1):
        request = stage_request(revision_dir, stage)
        tags = {
            "dagster_run_id": f"browser-test-{number}",
            "dagster_asset_key": stage,
            "naics_revision": REVISION,
            "stage": stage,
            "init_from": str(request.paths.init_from or ""),
        }
        with tracker.start_run(request.name, tags) as run:
            run.log_params(stage_params(request))
            for step in range(0, 101, 20):
                run.log_metrics({"loss": 4.0 / number - step / 100, "lr": 1e-4}, step)
            run.log_metrics({name: 0.5 + 0.1 * number for name in HEADLINE}, 100)
            run_ids.append(run.run_id)
            experiment = run.experiment_id
    return run_ids, experiment


@pytest.fixture
def mlflow_ui(tmp_path: Path) -> Iterator[tuple[str, list[str], str]]:
    """``mlflow ui`` on a tmp sqlite store with three stage runs: its URL, run ids, experiment."""
    store = tmp_path / "mlflow"
    store.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    run_ids, experiment = log_stage_runs(uri, tmp_path / "artifacts" / REVISION)
    port = free_port()
    command = [venv_script("mlflow"), "ui", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", "1", "--backend-store-uri", uri]
    command += ["--default-artifact-root", str(store / "artifacts")]
    env = os.environ | QUIET | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "mlflow-ui.log"
    with running_server(command, f"{url}/health", log, cwd=tmp_path, env=env):
        yield url, run_ids, experiment


def test_mlflow_ui_compares_stage_runs(
    new_page: Callable[[int, int], Page], mlflow_ui: tuple[str, list[str], str], tmp_path: Path
) -> None:
    url, run_ids, experiment = mlflow_ui
    page = new_page(1600, 1200)
    page.add_init_script(NO_ASSISTANT)
    page.goto(f'{url}/#/compare-runs?runs={json.dumps(run_ids)}&experiments=["{experiment}"]')
    expect(page.get_by_text("Comparing 3 Runs from 1 Experiment")).to_be_visible()
    for stage in STAGES:
        expect(page.get_by_text(f"{REVISION}/{stage}", exact=True).first).to_be_visible()
    for metric in ("test_top1", "spearman", "loss"):
        expect(page.get_by_text(metric, exact=True).first).to_be_attached()
    expect(page.get_by_text("train.steps", exact=True)).to_be_attached()
    expect(page.locator(".js-plotly-plot").first).to_be_visible()  # the parallel coordinates
    save_screenshot(page, tmp_path, "mlflow_compare.png", settle=False)  # MLflow keeps polling
