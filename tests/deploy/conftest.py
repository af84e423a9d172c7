"""The deployment files, rendered once per session: the Helm chart through the real Helm
library (helm-python-sdk bundles Helm's Go SDK; no helm binary, no cluster)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "granite-speech-server"
DEPLOY = ROOT / "deploy"
RELEASE = "granite-speech-server"
NAMESPACE = "speech"
VALUES_FILES = sorted((CHART / "ci").glob("*-values.yaml"))


@dataclass
class Rendered:
    """One `helm template`: the manifests by template path, and every object in them."""

    values: dict | None
    manifests: dict[str, str]
    objects: list[dict]

    def kinds(self) -> list[str]:
        return sorted(obj["kind"] for obj in self.objects)

    def one(self, kind: str) -> dict:
        found = [obj for obj in self.objects if obj["kind"] == kind]
        assert len(found) == 1, f"{len(found)} objects of kind {kind}"
        return found[0]

    def maybe(self, kind: str) -> dict | None:
        found = [obj for obj in self.objects if obj["kind"] == kind]
        return found[0] if found else None


def load_values(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def render(values: dict | None = None, *, name: str = RELEASE,
           namespace: str = NAMESPACE) -> Rendered:
    import helm_python as helm

    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name=name, namespace=namespace, is_install=True)
    objects = []
    for path, text in sorted(manifests.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        for document in yaml.safe_load_all(text):
            if document:
                objects.append(document)
    return Rendered(values, manifests, objects)


@pytest.fixture(scope="session")
def default_render() -> Rendered:
    return render()


@pytest.fixture(scope="session")
def all_on_values() -> dict:
    return load_values(CHART / "ci" / "all-on-values.yaml")


@pytest.fixture(scope="session")
def all_on_render(all_on_values: dict) -> Rendered:
    return render(all_on_values)


@pytest.fixture(scope="session", params=[None, *VALUES_FILES],
                ids=["default", *(path.stem for path in VALUES_FILES)])
def each_render(request: pytest.FixtureRequest) -> Rendered:
    return render(None if request.param is None else load_values(request.param))
