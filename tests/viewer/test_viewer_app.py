"""``mount_viewer`` without a browser: what it serves, with which headers, and what it refuses."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the server extra is not installed")
from fastapi import FastAPI
from starlette.testclient import TestClient

from voxlake.errors import MissingExtraError
from voxlake.server.viewer import OHIF_DIST_ENV, app_config, find_ohif_dist, mount_viewer

ISOLATED = {"cross-origin-opener-policy": "same-origin", "cross-origin-embedder-policy": "require-corp"}


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    """A stand-in for OHIF's dist folder, with a secret beside it that must never be served."""
    d = tmp_path / "dist"
    (d / "assets").mkdir(parents=True)
    (d / "index.html").write_text("<html>ohif</html>")
    (d / "app-config.js").write_text("window.config = {demo: true};")  # the shipped one: never served
    (d / "app.bundle.0f6159c501addfe9.js").write_text("console.log(1)")
    (d / "0ddf166f7a343eda.wasm").write_bytes(b"\0asm\1\0\0\0")
    (d / "assets" / "manifest.json").write_text("{}")
    (tmp_path / "secret.txt").write_text("secret")
    return d


@pytest.fixture
def client(dist: Path) -> TestClient:
    app = FastAPI()

    @app.get("/dicomweb/studies")
    def studies() -> list[dict[str, str]]:
        return []

    mount_viewer(app, dist=dist, dicomweb_root="/dicomweb")
    return TestClient(app)


@pytest.mark.parametrize(("path", "media"), [
    ("/app.bundle.0f6159c501addfe9.js", "text/javascript"),
    ("/0ddf166f7a343eda.wasm", "application/wasm"),
    ("/assets/manifest.json", "application/json"),
    ("/index.html", "text/html"),
])
def test_files_are_served_with_their_mime_type_and_the_isolation_headers(
    client: TestClient, path: str, media: str
) -> None:
    r = client.get(path)
    assert r.status_code == 200 and r.headers["content-type"].split(";")[0] == media
    assert ISOLATED.items() <= r.headers.items()


@pytest.mark.parametrize("path", ["/", "/viewer", "/segmentation", "/local/some/route"])
def test_client_side_routes_get_index_html(client: TestClient, path: str) -> None:
    r = client.get(path, params={"StudyInstanceUIDs": "1.2.3"})
    assert r.status_code == 200 and r.text == "<html>ohif</html>"
    assert ISOLATED.items() <= r.headers.items()


def test_missing_files_and_unknown_dicomweb_paths_are_404_not_the_app(client: TestClient) -> None:
    assert client.get("/nothere.bundle.js").status_code == 404
    assert client.get("/dicomweb/nothing/here").status_code == 404
    assert client.get("/dicomweb/studies").json() == []  # the API's own routes still answer


@pytest.mark.parametrize("path", ["/..%2fsecret.txt", "/%2e%2e/secret.txt", "/assets/..%2f..%2fsecret.txt",
                                  "/%2fetc%2fpasswd", "/..%2f..%2f..%2f..%2fetc/passwd", "/a%00b"])
def test_no_path_reaches_a_file_outside_dist(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert "secret" not in r.text and "root:" not in r.text
    assert r.status_code in (404, 200) and (r.status_code == 404 or r.text == "<html>ohif</html>")


def test_hashed_bundles_are_cached_forever_and_others_revalidate(client: TestClient) -> None:
    bundle = client.get("/app.bundle.0f6159c501addfe9.js")
    assert "immutable" in bundle.headers["cache-control"]
    index = client.get("/index.html")
    assert index.headers["cache-control"] == "no-cache"
    assert client.get("/index.html", headers={"if-none-match": index.headers["etag"]}).status_code == 304


def test_app_config_is_generated_for_the_same_origin_dicomweb_root(client: TestClient) -> None:
    r = client.get("/app-config.js")

    assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
    assert "demo" not in r.text and "window.location.origin" in r.text
    config = json.loads(re.search(r"const config = (\{.*?\n\});", r.text, re.S).group(1))
    source = config["dataSources"][0]
    assert source["namespace"] == "@ohif/extension-default.dataSourcesModule.dicomweb"
    assert config["defaultDataSourceName"] == source["sourceName"]
    assert {source["configuration"][k] for k in ("qidoRoot", "wadoRoot", "wadoUriRoot")} == {"/dicomweb"}
    assert config["investigationalUseDialog"] == {"option": "never"}
    assert config["customizationService"] == {"ohif.tours": {"$set": []}}


def test_app_config_has_what_ohif_needs_for_fast_wado_rs_loading() -> None:
    c = app_config(dicomweb_root="dicomweb/")["dataSources"][0]["configuration"]
    assert c["qidoRoot"] == "/dicomweb" and c["imageRendering"] == "wadors"
    assert c["bulkDataURI"]["enabled"] and c["enableStudyLazyLoad"] and c["qidoSupportsIncludeField"]
    assert c["supportsWildcard"] and c["supportsFuzzyMatching"] and c["thumbnailRendering"]


def test_find_ohif_dist_takes_the_environment_variable(dist: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OHIF_DIST_ENV, str(dist))
    assert find_ohif_dist() == dist.resolve()


def test_a_missing_viewer_says_to_run_make_viewer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OHIF_DIST_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(MissingExtraError, match="make viewer"):
        find_ohif_dist()
    with pytest.raises(MissingExtraError, match="make viewer"):
        mount_viewer(FastAPI(), dist=tmp_path / "nowhere")
